"""Export (ONNX / TorchScript / safetensors), checked with each runtime; the cost of a model; cost columns."""

import importlib
import json
import os
import sys

import numpy as np
import pytest
import torch
from torch import nn

import flowkd
from flowkd.cli import main
from flowkd.cost import count_macs, model_cost
from flowkd.data.arrays import ArrayDataset
from flowkd.errors import FlowKDError
from flowkd.export import export, load_exported
from flowkd.io import load_weights
from flowkd.models import create_model
from flowkd.report import compression_summary, results_table
from flowkd.taps import Taps, default_representation
from helpers import run_args

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytest.importorskip("safetensors")

FORMATS = ["onnx", "torchscript", "safetensors"]
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt", "safetensors": ".safetensors"}
# the demo's models (an MLP teacher, an auxiliary_of the student, CNN students), one short epoch per stage
FAST = ["stages.teacher.epochs=[1]", "stages.aux_labels.epochs=[1]", "stages.aux_labels.lr=[1e-3]",
        "stages.aux_pkt.epochs=[1]", "stages.aux_pkt.lr=[1e-3]", "stages.student.epochs=[1]", "stages.student.lr=[1e-2]",
        "stages.student_labels.epochs=[1]", "stages.student_labels.lr=[1e-2]", "stages.student_pkt.epochs=[0]",
        "stages.student_pkt.lr=[1e-2]", "data.train_subset=400", "eval.models=['student']", "eval.legacy=false"]
QUIET = dict(log=lambda *a: None)


def run_cli(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "run"
    assert main(run_args(out, FAST)) == 0
    return out


def _flowkd_path(model, tap, data, images):
    """flowkd's own path: the dataset's normalisation, the model, the tap's forward hook."""
    model.eval()
    with torch.no_grad(), Taps(model, [tap]) as taps:
        out, feats = taps(data.normalize(images))
    return feats[tap] if tap else out


# ---- run directories ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_run_export_matches_flowkd_on_raw_uint8_images(run_dir, tmp_path, capsys, fmt):
    """The aux (auxiliary_of the student: digits_cnn x2) with its last stage's weights: raw uint8 test images in
    the exported file give flowkd's embedding (dataset normalisation + model + tap), for any batch size."""
    path = tmp_path / f"aux{SUFFIX[fmt]}"
    code, out, err = run_cli(["export", str(run_dir), "--model", "aux", "--format", fmt, "--out", str(path)], capsys)
    assert code == 0, err
    assert "max abs difference" in out and "retrieval mAP" in out
    meta = json.loads((tmp_path / f"aux{SUFFIX[fmt]}.json").read_text())
    assert meta["model"]["arch"] == "digits_cnn" and meta["model"]["width"] == 2.0 and meta["model"]["stage"] == "aux_pkt"
    assert meta["normalization"]["baked_in"] and meta["output"] == {"kind": "representation", "tap": "fc1_relu", "dim": [64]}
    for m in ("cosine", "euclidean"):
        assert abs(meta["check"]["map"][m]["pytorch"] - meta["check"]["map"][m]["exported"]) <= 0.01
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, path.name + ".json"])  # no temp files

    # independently of export(): rebuild the aux as the pipeline does and run flowkd's own path
    train_set, test_set = flowkd.runmodels.load_data(flowkd.config.config_from_dict(json.loads((run_dir / "config.json").read_text())))
    model = create_model("digits_cnn", width=2.0, num_classes=10, in_channels=1, in_size=8)
    model.load_state_dict(load_weights(run_dir / "checkpoints" / "aux_pkt.pt"))
    assert meta["normalization"]["mean"] == pytest.approx(list(train_set.mean))
    run = load_exported(path, fresh=lambda: create_model("digits_cnn", width=2.0, num_classes=10, in_channels=1, in_size=8))
    for n in (1, 7, len(test_set)):  # dynamic batch dimension
        raw = test_set.images[:n]
        assert raw.dtype == torch.uint8
        ref = _flowkd_path(model, "fc1_relu", test_set, raw)
        got = run(raw)
        assert got.shape == (n, 64)
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    if fmt == "torchscript":  # the traced graph also takes float pixels in [0, 255]
        torch.testing.assert_close(run(test_set.images[:5].float()), _flowkd_path(model, "fc1_relu", test_set, test_set.images[:5]),
                                   atol=1e-5, rtol=1e-4)


def test_run_export_logits_and_the_last_stage_weights(run_dir, tmp_path, capsys):
    """--logits exports the classifier's output; the weights are those of the model's last stage."""
    path = tmp_path / "student_labels.onnx"
    assert run_cli(["export", str(run_dir), "--model", "student_labels", "--out", str(path), "--logits"], capsys)[0] == 0
    _, test_set = flowkd.runmodels.load_data(flowkd.config.config_from_dict(json.loads((run_dir / "config.json").read_text())))
    model = create_model("digits_cnn", num_classes=10, in_channels=1, in_size=8)
    model.load_state_dict(load_weights(run_dir / "checkpoints" / "student_labels.pt"))
    model.eval()
    with torch.no_grad():
        ref = model(test_set.normalize(test_set.images))
    got = load_exported(path)(test_set.images)
    assert got.shape == (len(test_set), 10)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    assert json.loads((tmp_path / "student_labels.onnx.json").read_text())["output"]["kind"] == "logits"


def test_run_export_of_a_model_given_by_its_weights_file(run_dir, tmp_path, capsys):
    """A model no stage trains (its weights file in the config) is exported with that file's weights."""
    cfg = json.loads((run_dir / "config.json").read_text())
    cfg["models"]["teacher"]["weights"] = str(run_dir / "checkpoints" / "teacher.pt")
    for st in cfg["stages"]:
        if st["model"] == "teacher":
            st["epochs"] = [0]
    other = tmp_path / "run"
    other.mkdir()
    (other / "config.json").write_text(json.dumps(cfg))
    path = tmp_path / "teacher.onnx"
    code, out, err = run_cli(["export", str(other), "--model", "teacher", "--out", str(path), "--logits"], capsys)
    assert code == 0, err
    _, test_set = flowkd.runmodels.load_data(flowkd.config.config_from_dict(cfg))
    model = create_model("mlp", width=2.0, num_classes=10, in_channels=1, in_size=8)
    model.load_state_dict(load_weights(run_dir / "checkpoints" / "teacher.pt"))
    model.eval()
    with torch.no_grad():
        ref = model(test_set.normalize(test_set.images))
    torch.testing.assert_close(load_exported(path)(test_set.images), ref, atol=1e-5, rtol=1e-4)
    meta = json.loads((tmp_path / "teacher.onnx.json").read_text())["model"]
    assert meta["stage"] is None and meta["weights"] == cfg["models"]["teacher"]["weights"]


def test_int8_onnx(run_dir, tmp_path, capsys):
    path = tmp_path / "teacher.onnx"
    code, out, err = run_cli(["export", str(run_dir), "--model", "teacher", "--out", str(path), "--int8",
                              "--calibration", "128"], capsys)
    assert code == 0, err
    q = tmp_path / "teacher.int8.onnx"
    meta = json.loads((tmp_path / "teacher.int8.onnx.json").read_text())["int8"]
    assert q.is_file() and meta["bytes"]["int8"] < meta["bytes"]["float"]  # int8 weights: a smaller file
    assert set(meta["map"]) == {"float", "int8"} and set(meta["latency_ms"]["int8"]) == {"1", "256"}
    import onnx

    ops = {n.op_type for n in onnx.load(str(q)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert "int8 retrieval mAP" in out
    code, _, err = run_cli(["export", str(run_dir), "--model", "teacher", "--out", str(tmp_path / "t.pt"), "--int8"], capsys)
    assert code == 2 and "--int8 needs --format onnx" in err


# ---- the zoo and a user model, through the Python API --------------------------------------------------

class UserNet(nn.Module):
    """A plain user network (no timm, no flowkd base class): conv -> GELU -> pool, then a head."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.GELU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.embed = nn.Linear(24, 16)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(torch.tanh(self.embed(self.body(x))))


def _synthetic(c, h, n, seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    base = torch.rand(10, c, h, h, generator=g) * 200  # one template per class, plus noise: retrievable
    images = (base[labels] + torch.rand(n, c, h, h, generator=g) * 55).to(torch.uint8)
    return images, labels


ZOO = [("verytiny", 1.0, (3, 32, 32)), ("tiny", 0.5, (3, 32, 32)), ("digits_cnn", 1.0, (1, 8, 8)),
       ("mlp", 0.25, (3, 16, 16)), ("preact_resnet18", 0.125, (3, 32, 32)), ("user", 1.0, (3, 16, 16))]


# the ResNet-18 (~10 s per format on 2 busy cores) through ONNX always, through the other formats with -m slow
ZOO_CASES = [pytest.param(*z, fmt, id=f"{z[0]}-{fmt}",
                          marks=[pytest.mark.slow] if z[0] == "preact_resnet18" and fmt != "onnx" else [])
             for z in ZOO for fmt in FORMATS]


@pytest.mark.parametrize("arch,width,shape,fmt", ZOO_CASES)
def test_zoo_and_user_models_export(tmp_path, arch, width, shape, fmt):
    c, h, _ = shape
    torch.manual_seed(0)
    model = UserNet() if arch == "user" else create_model(arch, width=width, in_channels=c, in_size=h)
    images, labels = _synthetic(c, h, 96, 1)
    train = ArrayDataset(images[:64], labels[:64], [str(i) for i in range(10)])
    test = ArrayDataset(images[64:], labels[64:], train.classes, train.mean, train.std)
    # BN running statistics that are not the identity, so that eval mode matters
    with torch.no_grad():
        model.train()
        for _ in range(2):
            model(train.normalize(images[:32]))
    model.eval()
    tap = default_representation(model)
    path = tmp_path / f"m{SUFFIX[fmt]}"
    rep = export(model, images[:2], path, normalize=(train.mean, train.std), check=(test, train), **QUIET)
    assert rep["check"]["max_abs_diff"] <= rep["check"]["tolerance"]
    for m, v in rep["check"]["map"].items():
        assert abs(v["pytorch"] - v["exported"]) <= 0.01
    assert rep["output"]["tap"] == tap
    ref = _flowkd_path(model, tap, test, test.images)
    fresh = (lambda: UserNet()) if arch == "user" else (lambda: create_model(arch, width=width, in_channels=c, in_size=h))
    got = load_exported(path, fresh=fresh)(test.images[:5])
    torch.testing.assert_close(got, ref[:5], atol=1e-4, rtol=1e-4)


def test_check_catches_a_wrong_file_and_leaves_nothing(tmp_path, monkeypatch):
    """The after-export check can fail: a runtime that is slightly off is refused, and no file is left."""
    ex = importlib.import_module("flowkd.export")  # the module (flowkd.export is also the function)

    model = create_model("digits_cnn", in_channels=1, in_size=8).eval()
    images, labels = _synthetic(1, 8, 80, 2)
    train = ArrayDataset(images[:60], labels[:60], [str(i) for i in range(10)])
    test = ArrayDataset(images[60:], labels[60:], train.classes, train.mean, train.std)
    real = ex.load_exported

    def off(path, fmt=None, **kw):
        run = real(path, fmt, **kw)
        return lambda x: run(x) + 1e-2
    monkeypatch.setattr(ex, "load_exported", off)
    with pytest.raises(FlowKDError, match="max abs difference .* exceeds the tolerance"):
        export(model, images[:2], tmp_path / "m.onnx", normalize=(train.mean, train.std), check=(test, train), **QUIET)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FlowKDError, match="max abs difference"):  # the folders it made go too
        export(model, images[:2], tmp_path / "a" / "b" / "m.onnx", normalize=(train.mean, train.std),
               check=(test, train), **QUIET)
    assert list(tmp_path.iterdir()) == []

    def shuffled(path, fmt=None, **kw):  # outputs within any tolerance but in the wrong order: mAP changes
        run = real(path, fmt, **kw)
        return lambda x: run(x)[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))]
    monkeypatch.setattr(ex, "load_exported", shuffled)
    with pytest.raises(FlowKDError, match="retrieval mAP"):
        export(model, images[:2], tmp_path / "m.pt", normalize=(train.mean, train.std), check=(test, train),
               atol=1e9, **QUIET)
    assert list(tmp_path.iterdir()) == []


# ---- bad input -------------------------------------------------------------------------------------------

class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(12, 4)

    def forward(self, x):
        x = x.flatten(1)
        if x.sum() > 0:
            x = x * 2
        return self.fc(x)


class ItemScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(12, 4)

    def forward(self, x):
        k = int(x.abs().max().item())
        return self.fc(x.flatten(1)) / k


class NumpyInside(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(12, 4)

    def forward(self, x):
        return self.fc(torch.from_numpy(np.tanh(x.flatten(1).detach().numpy())))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("cls,what,line", [
    (Branchy, "data-dependent Python control flow", "if x.sum() > 0:"),
    (ItemScale, "a tensor turned into a Python number", "k = int(x.abs().max().item())"),
    (NumpyInside, "converted to NumPy", "np.tanh(x.flatten(1).detach().numpy())"),
])
def test_untraceable_forward_is_named(tmp_path, fmt, cls, what, line):
    path = tmp_path / f"m{SUFFIX[fmt]}"
    with pytest.raises(FlowKDError) as e:
        export(cls(), torch.randint(0, 255, (2, 3, 2, 2), dtype=torch.uint8), path, output="logits", **QUIET)
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and f"cannot export {cls.__name__}" in msg
    assert what in msg and line in msg and "test_export.py:" in msg
    assert list(tmp_path.iterdir()) == []


def test_run_without_the_model_lists_its_models(run_dir, tmp_path, capsys):
    code, _, err = run_cli(["export", str(run_dir), "--model", "studnet", "--out", str(tmp_path / "s.onnx")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("flowkd: error: ") and "no model 'studnet'" in err
    assert "teacher, student, aux, student_labels, student_pkt" in err
    code, _, err = run_cli(["export", str(run_dir), "--model", "student_pkt", "--out", str(tmp_path / "s.onnx")], capsys)
    assert code == 2 and "'student_pkt' was not trained" in err  # its only stage ran 0 epochs
    code, _, err = run_cli(["export", str(tmp_path), "--model", "student", "--out", str(tmp_path / "s.onnx")], capsys)
    assert code == 2 and "not a run directory" in err
    assert list(tmp_path.iterdir()) == []


def test_missing_and_read_only_output_folders(run_dir, tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "s.pt"  # a missing folder is created, as for every command's output
    code, printed, _ = run_cli(["export", str(run_dir), "--model", "student", "--out", str(out)], capsys)
    assert code == 0 and out.is_file() and f"and {out}.json" in printed  # the .json named with its folder
    (tmp_path / "file").write_text("")
    code, _, err = run_cli(["export", str(run_dir), "--model", "student", "--out", str(tmp_path / "file" / "sub" / "s.pt")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "cannot create the folder of --out" in err and "is a file" in err
    if sys.platform.startswith("linux"):  # /proc takes no new files, even for root
        code, _, err = run_cli(["export", str(run_dir), "--model", "student", "--out", "/proc/flowkd-s.onnx"], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "cannot write in /proc" in err
        assert not os.path.exists("/proc/flowkd-s.onnx")
    if hasattr(os, "geteuid") and os.geteuid() != 0:  # permission bits do not stop root
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            code, _, err = run_cli(["export", str(run_dir), "--model", "student", "--out", str(ro / "s.onnx")], capsys)
            assert code == 2 and "permission denied" in err and list(ro.iterdir()) == []
        finally:
            ro.chmod(0o755)


def test_missing_extra_names_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(FlowKDError, match=r'pip install "flowkd\[export\]"'):
        export(UserNet(), torch.zeros(2, 3, 8, 8), tmp_path / "u.onnx", **QUIET)
    assert list(tmp_path.iterdir()) == []


# ---- cost --------------------------------------------------------------------------------------------------

def test_macs_match_the_layer_arithmetic():
    m = create_model("verytiny")  # conv 3->8 on 30x30, 8->16 on 13x13, 16->32 on 4x4, fc 128->64, fc 64->10
    expected = 8 * 27 * 30 * 30 + 16 * 72 * 13 * 13 + 32 * 144 * 4 * 4 + 128 * 64 + 64 * 10
    assert count_macs(m, (3, 32, 32)) == expected
    r = create_model("preact_resnet18")
    assert 550e6 < count_macs(r, (3, 32, 32)) < 560e6  # the well-known 0.56 GMACs of a CIFAR ResNet-18


def test_model_cost_fields_and_threads_restored():
    threads = torch.get_num_threads()
    m = create_model("tiny", width=0.5)
    c = model_cost(m, (3, 32, 32), batch=8, warmup=1, min_repeats=2, max_repeats=3, budget_s=0.0)
    assert torch.get_num_threads() == threads
    assert c["params"] == sum(p.numel() for p in m.parameters()) and c["macs"] == count_macs(m, (3, 32, 32))
    import io

    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    assert abs(c["state_dict_bytes"] - buf.tell()) < 512 and c["onnx_bytes"] > 4 * c["params"]
    for rt in ("pytorch", "onnxruntime"):
        assert set(c["latency_ms"][rt]) == {"1", "8"} and all(v > 0 for v in c["latency_ms"][rt].values())
        assert all(2 <= n <= 3 for n in c["repeats"][rt].values())
    assert model_cost(Branchy(), (3, 2, 2), latency=False)["onnx_error"].startswith("cannot export Branchy")


def test_model_cost_times_an_architecture_once_and_stops_when_the_median_is_known():
    from flowkd.cost import median_interval

    # the interval of the median: the order statistics around the middle, the whole range for few runs
    assert median_interval([3.0, 1.0, 2.0]) == (1.0, 3.0)
    lo, hi = median_interval(list(range(100)))
    assert 35 <= lo < 50 < hi <= 65
    a, b = create_model("tiny", width=0.25), create_model("tiny", width=0.25)
    torch.nn.init.constant_(b.fc1.weight, 0.5)  # other weights, same arithmetic
    opts = dict(batch=4, warmup=1, min_repeats=2, max_repeats=500, budget_s=5.0, onnx=False, precision=0.5)
    first = model_cost(a, (3, 32, 32), fresh=True, **opts)
    # a loose precision stops long before the budget or the cap; the interval lies around the median
    for n, ms in first["latency_ms"]["pytorch"].items():
        lo, hi = first["latency_ci_ms"]["pytorch"][n]
        assert first["repeats"]["pytorch"][n] < 500 and lo <= ms <= hi
    second = model_cost(b, (3, 32, 32), **opts)
    assert second["latency_shared"] and second["latency_ms"] == first["latency_ms"] and "latency_shared" not in first
    assert "latency_shared" not in model_cost(b, (3, 32, 32), fresh=True, **opts)
    assert "latency_shared" not in model_cost(create_model("tiny", width=0.5), (3, 32, 32), **opts)


def _fake_results():
    def model(arch, params, macs, ms, cos):
        return {"arch": arch, "width": 1.0, "params": params, "label": arch, "cosine": {"map": cos, "precision_at": {}},
                "euclidean": {"map": cos - 1}, "ncm_acc": 50.0,
                "cost": {"params": params, "macs": macs, "state_dict_bytes": params * 4 + 900, "batch": 256,
                         "latency_ms": {"pytorch": {"1": ms * 3, "256": ms * 100}, "onnxruntime": {"1": ms, "256": ms * 40}}}}
    return {"title": "t", "machine": {"device": "cpu"}, "data": {"name": "d", "train": 1, "test": 1}, "stages": {},
            "models": {"teacher": model("preact_resnet18", 11_000_000, 556_000_000, 20.0, 93.0),
                       "student": model("verytiny", 15_000, 472_000, 0.05, 52.5)}}


def test_cost_columns_and_compression_summary():
    res = _fake_results()
    lines = compression_summary(res)
    assert lines == ["verytiny: 1,178× fewer MACs, 733× fewer parameters, 400× faster (1 image, ONNX Runtime, "
                     "1 CPU thread), 40.50 cos mAP points below the preact_resnet18"]
    table = results_table(res)
    assert "| MMACs | size | ms/img pt | ms/256 pt | ms/img ORT | ms/256 ORT |" in table
    assert "| 556.00 | 42.0 MiB | 60.0 | 2000.0 | 20.0 | 800.0 |" in table and "| 0.47 | 59.5 KiB |" in table
    assert lines[0] in table
    plain = {**res, "models": {k: {kk: vv for kk, vv in v.items() if kk != "cost"} for k, v in res["models"].items()}}
    assert "MMACs" not in results_table(plain)


def test_compare_and_demo_tables_show_cost(monkeypatch, capsys):
    from flowkd.compare import aggregate, compare_table

    res = _fake_results()
    table = compare_table(aggregate([res, res]), "t", [0, 1], {"device": "cpu"}, 1.0)
    assert "| ms/256 ORT |" in table and "400× faster" in table
    demo = _fake_results()
    demo["title"] = "demo"
    demo["models"] = {k: {**demo["models"]["student" if k != "teacher" else "teacher"], "head_acc": None}
                      for k in ("teacher", "aux", "student", "student_labels", "student_pkt")}
    demo["models"]["teacher"]["cosine"]["precision_at"] = {10: 90.0}
    demo["models"]["student"]["cosine"]["precision_at"] = {10: 50.0}
    monkeypatch.setattr(flowkd.pipeline.Pipeline, "run", lambda self: demo)
    assert main(["demo", "--quiet", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "MMACs" in out and "ms/img ORT" in out and "fewer MACs" in out


@pytest.mark.parametrize("opset", [None, 17])
def test_to_onnx_makes_what_torch_onnx_export_makes(opset):
    """flowkd's export (torchlib's translation table built once per process) writes the graph torch.onnx.export's
    public function writes for the same program: the same nodes, the same weights, the same outputs in ONNX Runtime
    — also for an opset below torchlib's own, which both convert to."""
    import onnxruntime as ort
    from flowkd.onnx_io import ImageEncoder, to_onnx, trace_encoder

    torch.manual_seed(0)
    model = create_model("verytiny", num_classes=10).eval()
    example = torch.rand(2, 3, 32, 32)
    program = trace_encoder(ImageEncoder(model, None), example)
    ours = to_onnx(program, example, ["images"], ["output"], opset).model_proto
    ref = torch.onnx.export(program, (example,), dynamo=True, input_names=["images"], output_names=["output"],
                            opset_version=opset, verbose=False).model_proto
    assert [n.op_type for n in ours.graph.node] == [n.op_type for n in ref.graph.node]
    assert [o.version for o in ours.opset_import if o.domain == ""] == [o.version for o in ref.opset_import if o.domain == ""]
    weights = lambda m: {i.name: i.raw_data for i in m.graph.initializer}  # noqa: E731
    assert weights(ours) == weights(ref)
    x = np.random.default_rng(0).random((5, 3, 32, 32), dtype=np.float32)
    run = lambda m: ort.InferenceSession(m.SerializeToString()).run(None, {"images": x})[0]  # noqa: E731
    np.testing.assert_array_equal(run(ours), run(ref))
