"""The ``flowkd`` command line: run, demo, eval, compare, flow, features, layers, data fetch, init, export, models.

(Over 300 lines on purpose: one argument parser for eleven subcommands, each handler a few lines that call the
library; splitting it would scatter the help texts a user reads together.)
"""

from __future__ import annotations

import argparse
import shlex
import errno
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

from .errors import FlowKDError, first_line

__all__ = ["main"]


def _config(args):
    """The config of `run` / `bank`: the file, its --set overrides, then --device and --no-progress."""
    from .config import load_config

    cfg = load_config(args.config, args.set)
    if args.device:
        cfg.device = args.device
    if args.no_progress:
        cfg.progress = False
    return cfg


def _run(args) -> int:
    from .pipeline import Pipeline, results_table

    cfg = _config(args)
    if args.tensorboard:
        cfg.tensorboard = True
    res = Pipeline(cfg, args.out, resume=args.resume).run()
    if res:  # rank 0 (the only rank when not distributed)
        print(results_table(res))
        print(f"wrote {Path(args.out) / 'results.json'}")
    return 0


def _bank(args) -> int:
    from .pipeline import build_banks

    for name, bank in build_banks(_config(args)).items():
        print(f"{name}: {bank.size() / 2**20:.0f} MiB in {bank.dir}")
    return 0


DEMO_ROWS = [
    ("teacher", "teacher (MLP 512-512, labels)"),
    ("aux", "auxiliary (CNN x2: labels, then PKT)"),
    ("student", "student: information flow via aux"),
    ("student_labels", "student: labels only"),
    ("student_pkt", "student: last-layer PKT from teacher"),
]


def _demo(args) -> int:
    from .config import config_from_toml
    from .pipeline import Pipeline

    t0 = time.perf_counter()
    text = resources.files("flowkd").joinpath("configs/digits_demo.toml").read_text()
    cfg = config_from_toml(text, [f"seed={args.seed}", f"device={args.device}", *args.set], "demo config")
    cfg.progress = not args.no_progress
    cfg.tensorboard = cfg.tensorboard or args.tensorboard
    if args.out and Path(args.out).is_dir() and any(Path(args.out).iterdir()):
        raise FlowKDError(f"--out {args.out} is not empty; the demo trains a new run: choose a new or empty folder")
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="flowkd-demo-"))
    res = Pipeline(cfg, out, log=(lambda *a: None) if args.quiet else print).run()
    wall = time.perf_counter() - t0
    print(f"\n{cfg.title}  (seed {cfg.seed}, {res['data']['train']} train / {res['data']['test']} test images)")
    from .report import COST_NOTE, compression_summary, cost_cells, cost_header

    with_cost = any(res["models"][key].get("cost") for key, _ in DEMO_ROWS)
    head = f"{'model':<40} {'params':>7} {'cos mAP':>8} {'euc mAP':>8} {'P@10':>6} {'NCM acc':>8} {'head acc':>8}"
    head += "".join(f" {c:>10}" for c in cost_header()) if with_cost else ""
    print(head)
    print("-" * len(head))
    for key, label in DEMO_ROWS:
        r = res["models"][key]
        acc = r.get("head_acc")
        print(f"{label:<40} {r['params']:>7,} {r['cosine']['map']:>8.2f} {r['euclidean']['map']:>8.2f} "
              f"{r['cosine']['precision_at'][10]:>6.2f} {r['ncm_acc']:>8.2f} {'—' if acc is None else f'{acc:.2f}':>8}"
              + ("".join(f" {c:>10}" for c in cost_cells(r.get("cost"))) if with_cost else ""))
    print("\nmAP and P@10 in %, test images as queries against the training set; NCM = nearest-class-mean probe.")
    if with_cost:
        print(COST_NOTE)
        print("\n".join(compression_summary(res)))
    print(f"total time: {wall:.1f} s   (run directory: {out})")
    return 0


def _eval(args) -> int:
    from .config import DataConfig, Config
    from .evaluation import evaluate_representation
    from .io import atomic_write_json, check_output, load_into
    from .models import create_model
    from .pipeline import load_data, pick_device

    from .data.readers import dataset_names

    name, root = args.data, args.root or ""
    if not root and name != "digits" and name not in dataset_names() and Path(name).is_dir():
        name, root = "imagefolder", name  # an image folder, as `flowkd init --data` takes it
    cfg = Config(data=DataConfig(name=name, root=root, cache_dir=args.cache_dir,
                                 eval_batch_size=args.batch_size),
                 device=args.device or "auto")
    if args.json:
        check_output(args.json, "--json", force=args.force)
    train_set, test_set = load_data(cfg)
    dev = pick_device(cfg.device)
    c, h, _ = train_set.shape
    model = create_model(args.model, width=args.width, num_classes=train_set.num_classes, in_channels=c, in_size=h)
    head = True
    if args.weights:
        meta = load_into(model, args.weights, f"{args.model} x{args.width:g}", f"{c}x{h}x{train_set.shape[2]} images")
        head = meta.get("head_trained", "true") != "false"  # flowkd's checkpoints say whether the head learnt
    from .taps import default_representation

    tap = args.tap or default_representation(model)
    if not tap:
        raise FlowKDError(f"{args.model} declares no representation: name one with --tap (see `flowkd layers {args.model}`)")
    t0 = time.perf_counter()
    res = evaluate_representation(model.to(dev), tap, train_set.to(dev), test_set.to(dev), k=args.k,
                                  head=head, legacy=True, batch_size=args.batch_size)
    res["wall_s"] = round(time.perf_counter() - t0, 3)
    for m in ("cosine", "euclidean"):
        r = res[m]
        print(f"{m:<9} mAP {r['map']:.2f}  (legacy {r['legacy']['map']:.2f})  "
              + "  ".join(f"P@{k} {v:.2f}" for k, v in r["precision_at"].items()))
    print(f"NCM acc {res['ncm_acc']:.2f}" + (f"  head acc {res['head_acc']:.2f}" if "head_acc" in res else
                                             "  (no head acc: the checkpoint's classifier was never trained)" if not head else "")
          + f"  ({res['wall_s']:.1f} s on {dev})")
    if args.json:
        atomic_write_json(args.json, res)  # checked before the evaluation
    return 0


def _compare(args) -> int:
    from .compare import compare

    out = args.out or tempfile.mkdtemp(prefix="flowkd-compare-")
    if not args.out:
        print(f"the runs go to {out} (a temp folder, kept: remove it when done; --out DIR puts them elsewhere)")
    sets = list(args.set) + (["progress=false"] if args.no_progress else [])
    doc = compare(args.config, args.seeds, out, overrides=sets, results_dir=args.results_dir, name=args.name,
                  log=(lambda *a: None) if args.quiet else print, reuse=args.reuse, force=args.force)
    print(doc["table"])
    print(f"wrote {args.results_dir}/compare_{args.name or Path(args.config).stem.removeprefix('compare_')}.json|md"
          + (" and the bar chart" if doc["plot"] else " (no bar chart: pip install matplotlib)") + f"; runs in {out}")
    return 0


def _flow(args) -> int:
    from .analysis.plots import render_flow

    for path in render_flow(args.run_dir):
        print(f"wrote {path}")
    return 0


def _features(args) -> int:
    from .config import load_config
    from .runmodels import export_features

    cfg = load_config(args.config, args.set)
    if args.device:
        cfg.device = args.device
    t0 = time.perf_counter()
    bank = export_features(cfg, args.model, args.taps, args.out, force=args.force)
    print(f"wrote {args.out}: {len(bank)} rows; " + ", ".join(f"{k} {tuple(v)}" for k, v in bank.shapes().items())
          + f" (+ labels) in {time.perf_counter() - t0:.1f}s")
    return 0


def _layers(args) -> int:
    import torch

    from .features import FEATURE_SUFFIXES, load_features
    from .models import create_model
    from .taps import default_representation, layer_shapes

    if args.model.lower().endswith(FEATURE_SUFFIXES):
        bank = load_features(args.model)
        print(f"{len(bank)} rows" + (" with labels" if bank.labels is not None else " (no labels: row order unchecked)"))
        w = max(len(k) for k in bank.features)
        for k, v in bank.features.items():
            print(f"{k:<{w}}  {str(v.dtype).replace('torch.', ''):<18} {tuple(v.shape[1:])}")
        print(f"representation: {bank.representation or '(several taps: set models.X.representation)'}")
        return 0
    from .models import model_defaults

    defaults = model_defaults(args.model)
    c = args.in_channels if args.in_channels is not None else defaults.get("in_channels", 3)
    size = args.in_size if args.in_size is not None else defaults.get("in_size", 32)
    model = create_model(args.model, width=args.width, num_classes=args.num_classes, in_channels=c, in_size=size)
    rows = layer_shapes(model, torch.zeros(2, c, size, size))
    if not rows:
        raise FlowKDError(f"{args.model}: no submodule produced a tensor on a (2, {c}, {size}, {size}) batch")
    print(f"shapes per image for a {c}x{size}x{size} input (change with --in-channels / --in-size)")
    w = max(len(n) for n, _, _ in rows)
    for name, typ, shape in rows:
        print(f"{name:<{w}}  {typ:<20} {tuple(shape[1:])}")
    if hasattr(model, "flow_taps"):
        print(f"flow_taps: {model.flow_taps}")
    rep = default_representation(model)
    print(f"representation: {rep or '(none found: set models.X.representation)'}"
          + ("" if hasattr(model, "representation") or not rep else "  (default: the last linear layer's input)"))
    return 0


def _export(args) -> int:
    from .export_run import export_run

    fmt = args.format
    export_run(args.run_dir, args.model, args.out, format=fmt, output="logits" if args.logits else "representation",
                     tap=args.tap or None, input_dtype=args.input, queries=args.queries, database=args.database,
                     atol=args.atol, rtol=args.rtol, int8=args.int8, calibration=args.calibration, force=args.force)
    return 0


def _models(args) -> int:
    from .models import MODELS

    for name in MODELS.names():
        doc = (MODELS.get(name).__doc__ or "").strip().splitlines()
        print(f"{name:<18} {doc[0] if doc else ''}")
    return 0


def _data_fetch(args) -> int:
    from .data.fetch import fetch

    t0 = time.perf_counter()
    for name in args.names:
        path = fetch(name, args.root, mirror=args.mirror or None, timeout=args.timeout,
                     progress=not args.no_progress, log=print)
        print(f"{name}: {path}")
    print(f"done in {time.perf_counter() - t0:.1f} s; read with data.name = \"{args.names[-1]}\", "
          f"data.root = \"{args.root}\"")
    return 0


def _init(args) -> int:
    from .scaffold import write_config

    write_config(args.out, data=args.data, teacher=args.teacher, student=args.student, root=args.root,
                 epochs=args.epochs, force=args.force)
    run = shlex.join(["flowkd", "run", args.out, "--out", f"runs/{Path(args.out).stem}"])
    print(f"wrote {args.out}; run it with: {run}")
    return 0



WHERE_ERRNOS = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EACCES, errno.EPERM, errno.EROFS)
FORCE = "replace the output file if it exists (flowkd never writes over an existing file without it)"


class _Parser(argparse.ArgumentParser):
    """A command-line mistake is one ``flowkd: error:`` line and exit 2, like every other (not usage + error)."""

    def error(self, message):
        print(f"flowkd: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="flowkd", description="Heterogeneous knowledge distillation by information-flow modeling.")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="run a pipeline from a TOML config")
    r.add_argument("config")
    r.add_argument("--out", required=True, help="run directory (checkpoints, metrics.jsonl, results.json)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. stages.student.epochs=[5]")
    r.add_argument("--device", default="", help="override the config's device (cpu, cuda, cuda:1)")
    r.add_argument("--resume", action="store_true", help="continue a run from its last completed stage")
    r.add_argument("--no-progress", action="store_true", help="no progress bars (one line per stage instead)")
    r.add_argument("--tensorboard", action="store_true",
                   help="also write the metrics to DIR/tensorboard/ (the [tensorboard] extra; config key tensorboard)")
    r.set_defaults(fn=_run)

    b = sub.add_parser("bank", help="compute the banks of teacher views a config's stages read (models.X.views), "
                                    "without training; `run` computes what is missing itself")
    b.add_argument("config")
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    b.add_argument("--device", default="", help="override the config's device (cpu, cuda, cuda:1)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar (one line per view instead)")
    b.set_defaults(fn=_bank)

    d = sub.add_parser("demo", help="the embedded demo (8x8 digits, CPU, offline; time: results/bench_demo.md)")
    d.add_argument("--seed", type=int, default=0, help="seed of the data split, initialisations and batch order (default 0)")
    d.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    d.add_argument("--out", default="", help="run directory (default: a new temp folder)")
    d.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    d.add_argument("--quiet", action="store_true", help="print only the final table")
    d.add_argument("--no-progress", action="store_true")
    d.add_argument("--tensorboard", action="store_true", help="also write the metrics to OUT/tensorboard/")
    d.set_defaults(fn=_demo)

    e = sub.add_parser("eval", help="retrieval mAP / P@k and accuracy of a model's representation")
    e.add_argument("--model", required=True, help="model name (see `flowkd models`; or timm:NAME, torchvision:NAME, py:MODULE:FACTORY)")
    e.add_argument("--weights", default="", help="a state_dict file (.pt or .safetensors), e.g. a run's "
                                                 "checkpoints/<stage>.pt (default: the model as initialised)")
    e.add_argument("--width", type=float, default=1.0, help="the model's channel / unit multiplier (default 1)")
    e.add_argument("--tap", default="", help="representation tap (default: the model's own)")
    e.add_argument("--data", default="digits", help="an image folder (FOLDER/{train,test}/<class>/*.png|jpg) or a "
                                                   "dataset name: digits (default), cifar10, cifar100, stl10, "
                                                   "cifar10_jpg, imagefolder")
    e.add_argument("--root", default="", help="the dataset's folder, for a dataset name other than digits")
    e.add_argument("--cache-dir", default="", help="decoded-image cache for image folders")
    e.add_argument("--device", default="", help="cpu, cuda or cuda:N (default: cuda when available)")
    e.add_argument("--batch-size", type=int, default=1024, help="feature-extraction batch (default 1024)")
    e.add_argument("--k", type=int, nargs="+", default=[10, 100], help="precision at these ranks (default 10 100)")
    e.add_argument("--json", default="", help="also write the full results here")
    e.add_argument("--force", action="store_true", help=FORCE)
    e.set_defaults(fn=_eval)

    c = sub.add_parser("compare", help="train every method of a comparison config over seeds; one table")
    c.add_argument("config")
    c.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    c.add_argument("--out", default="", help="where the per-seed runs go (default: a temp folder)")
    c.add_argument("--results-dir", default="results")
    c.add_argument("--name", default="", help="results/compare_<name>.* (default: from the config file name)")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    c.add_argument("--quiet", action="store_true")
    c.add_argument("--no-progress", action="store_true")
    c.add_argument("--reuse", action="store_true", help="with --out: read the seeds already finished there, resume the others")
    c.add_argument("--force", action="store_true", help="replace results files of that name that are not a comparison's")
    c.set_defaults(fn=_compare)

    fl = sub.add_parser("flow", help="plot a run's flow.jsonl (per-layer MI over epochs) and an HTML report")
    fl.add_argument("run_dir")
    fl.set_defaults(fn=_flow)

    ft = sub.add_parser("features", help="write a model's taps on the training split to a file (precomputed teacher features)")
    ft.add_argument("config")
    ft.add_argument("--model", required=True, help="a model of the config (its weights are loaded)")
    ft.add_argument("--taps", nargs="*", default=[], help="tap specs (default: the model's representation)")
    ft.add_argument("--out", required=True, help="a .npz or .safetensors file")
    ft.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ft.add_argument("--device", default="", help="override the config's device (cpu, cuda, cuda:N)")
    ft.add_argument("--force", action="store_true", help=FORCE)
    ft.set_defaults(fn=_features)

    lay = sub.add_parser("layers", help="list a model's tap names and output shapes (or a features file's arrays)")
    lay.add_argument("model", help="a model name (see `flowkd models`; or timm:NAME, torchvision:NAME, py:MODULE:FACTORY, "
                                   "fn:MODULE:FUNCTION) or a .npy/.npz/.safetensors features file")
    lay.add_argument("--width", type=float, default=1.0)
    lay.add_argument("--in-channels", type=int, default=None, help="input channels (default: the model's own, else 3)")
    lay.add_argument("--in-size", type=int, default=None, help="input height = width (default: the model's own, else 32)")
    lay.add_argument("--num-classes", type=int, default=10)
    lay.set_defaults(fn=_layers)

    da = sub.add_parser("data", help="datasets: `data fetch NAME --root DIR` downloads an official release")
    dsub = da.add_subparsers(dest="data_cmd", required=True)
    df = dsub.add_parser("fetch", help="download, verify (MD5) and extract cifar10 / cifar100 / stl10 under --root")
    df.add_argument("names", nargs="+", choices=["cifar10", "cifar100", "stl10"], metavar="NAME",
                    help="cifar10, cifar100 or stl10")
    df.add_argument("--root", required=True, help="where the dataset folder goes (data.root of a config)")
    df.add_argument("--mirror", default="", help="a base address holding the same archive files "
                                                  "(default: $FLOWKD_DATA_MIRROR, else the official address)")
    df.add_argument("--timeout", type=float, default=60.0, help="seconds without data before giving up")
    df.add_argument("--no-progress", action="store_true")
    df.set_defaults(fn=_data_fetch)

    it = sub.add_parser("init", help="write a commented, runnable pipeline config for your data and models")
    it.add_argument("--data", required=True, help="an image folder (FOLDER/{train,test}/<class>/*.png|jpg) or a "
                                                   "dataset name: cifar10, cifar100, stl10 (fetched), digits")
    it.add_argument("--teacher", required=True, help="ARCH or ARCH@WEIGHTS: a zoo name, timm:NAME, torchvision:NAME, "
                                                      "py:MODULE:FACTORY, fn:MODULE:FUNCTION; @WEIGHTS = its trained "
                                                      "state_dict (without it a stage trains the teacher first)")
    it.add_argument("--student", required=True, help="ARCH (as for --teacher): the network to distil into")
    it.add_argument("--out", required=True, help="the config file to write (an existing one only with --force)")
    it.add_argument("--force", action="store_true", help=FORCE)
    it.add_argument("--root", default="data", help="data.root for a dataset name (default: data)")
    it.add_argument("--epochs", type=int, default=None, help="every stage one phase of this many epochs "
                                                          "(default: the paper's schedule)")
    it.set_defaults(fn=_init)

    ex = sub.add_parser("export", help="export a run's model (ONNX / TorchScript / safetensors), checked with its runtime")
    ex.add_argument("run_dir")
    ex.add_argument("--model", required=True, help="a model of the run's config (the weights of the last stage that trained it)")
    ex.add_argument("--format", choices=["onnx", "torchscript", "safetensors"], default=None,
                    help="default: from the --out suffix (.onnx, .pt, .safetensors)")
    ex.add_argument("--out", required=True, help="the file to write (its metadata goes to <out>.json)")
    ex.add_argument("--logits", action="store_true", help="output the model's logits instead of its representation")
    ex.add_argument("--tap", default="", help="representation tap (default: the config's / the model's own)")
    ex.add_argument("--input", choices=["uint8", "float32"], default="uint8",
                    help="input dtype of the exported graph: raw pixels in [0, 255] either way (normalisation is baked in)")
    ex.add_argument("--queries", type=int, default=500, help="held-out test images of the check (queries)")
    ex.add_argument("--database", type=int, default=2000, help="training images of the check (database)")
    ex.add_argument("--atol", type=float, default=1e-4)
    ex.add_argument("--rtol", type=float, default=1e-4, help="tolerance: atol + rtol x max |PyTorch output|")
    ex.add_argument("--int8", action="store_true", help="ONNX only: also write an int8 model (static quantisation, "
                                                        "calibrated on training images) next to it")
    ex.add_argument("--calibration", type=int, default=512, help="training images used to calibrate --int8")
    ex.add_argument("--force", action="store_true", help=FORCE)
    ex.set_defaults(fn=_export)

    m = sub.add_parser("models", help="list the registered models")
    m.set_defaults(fn=_models)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from . import errors

    errors._warned.clear()  # each command says its warnings once
    try:
        return args.fn(args)
    except FlowKDError as e:
        print(f"flowkd: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the machine's, not the code's: a full disk, a permission, a path that vanished
        if e.filename is None and e.errno not in WHERE_ERRNOS:
            raise
        from .io import write_error

        print(f"flowkd: error: {write_error(e, e.filename or 'a file') if e.errno in WHERE_ERRNOS else e}",
              file=sys.stderr)
        return 2
    except MemoryError as e:
        print(f"flowkd: error: out of memory ({first_line(e, 200)}); lower data.batch_size / data.eval_batch_size "
              "or use fast.amp=bf16", file=sys.stderr)
        return 2
    except RuntimeError as e:
        if "out of memory" not in str(e).lower():
            raise
        print(f"flowkd: error: out of GPU memory ({first_line(e, 200)}); lower data.batch_size / data.eval_batch_size "
              "or use fast.amp=bf16", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("flowkd: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
