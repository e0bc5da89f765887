"""``flowkd init``: a commented, runnable pipeline config for your data, your teacher and your student.

It reads the data's shape (an image folder's first image, its class folders) or takes a known dataset's,
builds each network on that shape, lists its tap candidates with their output shapes (what ``flowkd layers``
prints), proposes layer pairs by relative depth (shallow with shallow, the last pair the two representations),
sizes the auxiliary teacher (the student's family at twice its width) and writes the paper's stages:
[teacher from labels, when no weights are given] -> auxiliary from labels -> auxiliary by PKT from the
teacher's representation -> student by information flow from the auxiliary (critical period), plus the same
student from labels as a baseline. The file is parsed back before it is written, and never overwrites one.

A model SPEC is ``ARCH`` or ``ARCH@WEIGHTS``: ARCH is a zoo name (``flowkd models``), ``timm:NAME``,
``torchvision:NAME``, ``py:MODULE:FACTORY`` or ``fn:MODULE:FUNCTION``; WEIGHTS a state_dict file (``.pt`` /
``.safetensors``) that fits that network on this data.

(Over 300 lines on purpose: one generator of one commented file; its parts are the sections of that file.)
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .checks import check_number
from .errors import FlowKDError, first_line
from .registry import closest

__all__ = ["DataInfo", "ModelInfo", "parse_spec", "inspect_data", "describe_model", "pair_by_depth",
           "render_config", "write_config"]

#: Datasets known by name: (channels, image side, classes); the fetchable ones get ``download = true``.
KNOWN_DATA = {"cifar10": (3, 32, 10), "cifar100": (3, 32, 100), "stl10": (3, 96, 10), "digits": (1, 8, 10)}
_MODES = {"L": 1, "RGB": 3}
_MAX_DIM = 2048          # a proposed conv tap is pooled to a grid that keeps it at most this wide
_LISTED = 40             # rows of a network's listing in the config's comments


@dataclass
class DataInfo:
    name: str
    root: str
    channels: int
    height: int
    width: int
    classes: list[str]
    n_train: int = 0
    n_test: int = 0
    download: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass
class ModelInfo:
    role: str
    arch: str
    width: float
    weights: str
    params: int
    rows: list[tuple[str, str, tuple[int, ...]]]      # (module, type, output shape) in execution order
    taps: list[str]                                    # candidates shallow -> deep, the last the representation
    notes: list[str] = field(default_factory=list)

    @property
    def representation(self) -> str:
        return self.taps[-1]


def _module_of(tap: str) -> str:
    return tap.split("@")[0].split(":")[0]


def parse_spec(spec: str, what: str) -> tuple[str, str]:
    """``ARCH`` or ``ARCH@WEIGHTS`` -> (arch, weights); the arch must be known and the weights file present."""
    from .models import MODELS
    from .models.external import is_external

    arch, _, weights = spec.partition("@")
    if not arch:
        raise FlowKDError(f"--{what} {spec!r}: expected ARCH or ARCH@WEIGHTS, e.g. preact_resnet18@teacher.pt")
    if not is_external(arch) and arch not in MODELS:
        raise FlowKDError(f"--{what}: unknown model {arch!r}; closest: {', '.join(closest(arch, MODELS.names()))} "
                          "(or timm:NAME, torchvision:NAME, py:MODULE:FACTORY, fn:MODULE:FUNCTION)")
    if weights and not Path(weights).is_file():
        raise FlowKDError(f"--{what}: weights file not found: {weights}")
    return arch, weights


# ----------------------------------------------------------------------------------------------- data


def _image_files(d: Path) -> list[Path]:
    from .data.imagefolder import IMAGE_EXTENSIONS

    return sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_EXTENSIONS)


def inspect_data(data: str, root: str = "data") -> DataInfo:
    """An image folder ``DATA/{train,test}/<class>/*`` (shape from its first image) or a known dataset name."""
    path = Path(data)
    if path.is_dir():
        splits = {}
        for split in ("train", "test"):
            d = path / split
            if not d.is_dir():
                raise FlowKDError(f"--data {data}: no {d} folder; an image folder holds train/<class>/*.png|jpg "
                                  "and test/<class>/*.png|jpg")
            classes = sorted(e.name for e in d.iterdir() if e.is_dir() and not e.name.startswith("."))
            if len(classes) < 2:
                raise FlowKDError(f"--data {data}: {d} has {'no class folders' if not classes else 'one class folder only'}"
                                  f"; distillation and retrieval need two classes or more (train/<class>/*.png|jpg)")
            splits[split] = (classes, {c: _image_files(d / c) for c in classes})
        (classes, files), (test_classes, test_files) = splits["train"], splits["test"]
        if test_classes != classes:
            raise FlowKDError(f"--data {data}: test classes {test_classes} differ from train classes {classes}")
        empty = next((path / s / c for s, (_, fs) in splits.items() for c in fs if not fs[c]), None)
        if empty is not None:
            raise FlowKDError(f"--data {data}: empty class folder {empty}")
        first = files[classes[0]][0]
        try:
            from PIL import Image
        except ImportError:
            raise FlowKDError("reading image folders needs Pillow: pip install 'flowkd[images]'") from None
        try:
            with Image.open(first) as im:
                mode, (w, h) = im.mode, im.size
        except Exception as e:  # noqa: BLE001 - PIL raises OSError, UnidentifiedImageError, SyntaxError, ...
            raise FlowKDError(f"--data {data}: cannot decode image {first} ({first_line(e, 120)}); remove or "
                              "replace it") from None
        if mode not in _MODES:
            raise FlowKDError(f"--data {data}: image mode {mode!r} of {first} is not 'L' or 'RGB'")
        return DataInfo("imagefolder", str(path), _MODES[mode], h, w, classes,
                        sum(map(len, files.values())), sum(map(len, test_files.values())))
    if data in KNOWN_DATA:
        from .data.fetch import ARCHIVES

        c, side, k = KNOWN_DATA[data]
        return DataInfo(data, "" if data == "digits" else root, c, side, side, [str(i) for i in range(k)],
                        download=data in ARCHIVES)
    raise FlowKDError(f"--data {data!r} is neither a folder nor a known dataset ({', '.join(KNOWN_DATA)})")


# --------------------------------------------------------------------------------------------- models


def _build(arch: str, width: float, data: DataInfo) -> nn.Module:
    from .models import create_model

    return create_model(arch, width=width, num_classes=data.num_classes, in_channels=data.channels,
                        in_size=data.height)


def _example(data: DataInfo) -> torch.Tensor:
    return torch.zeros(2, data.channels, data.height, data.width)


def _grid_spec(name: str, shape: tuple[int, ...]) -> str:
    c, h, w = shape[1:]
    if c * h * w <= 2 * _MAX_DIM:
        return name
    g = 1
    while 2 * g <= min(h, w) and c * (2 * g) ** 2 <= _MAX_DIM:
        g *= 2
    return f"{name}@{g}"


def derive_taps(rows, representation: str, n_intermediate: int = 3) -> list[str]:
    """Tap candidates for a network that declares none: the end of each spatial stage (the last module at
    each resolution, top-level modules first), up to ``n_intermediate`` evenly spread, then the representation."""
    rep_mod = _module_of(representation)
    order = [n for n, _, _ in rows]
    stop = order.index(rep_mod) if rep_mod in order else len(order)
    body = [r for r in rows[:stop] if r[0] != rep_mod]
    maps = [r for r in body if len(r[2]) == 4]
    top = [r for r in maps if "." not in r[0]]
    pool = top if len(top) >= 2 else maps
    groups: dict[tuple[int, int], tuple] = {}
    for r in pool:  # the last module at each resolution; dicts keep the first resolution's position
        groups[tuple(r[2][2:])] = r
    stages = list(groups.values())
    if not stages:  # no conv maps: evenly spread vectors
        stages = [r for r in body if len(r[2]) == 2]
    if len(stages) > n_intermediate and len(stages[-1][2]) == 4 and stages[-1][2][2:] == (1, 1):
        stages = stages[:-1]  # a 1x1 map right before the pooled representation adds nothing
    if len(stages) > n_intermediate:
        stages = stages[1:]  # the stem
    if len(stages) > n_intermediate:
        idx = sorted({round(i * (len(stages) - 1) / (n_intermediate - 1)) for i in range(n_intermediate)})
        stages = [stages[i] for i in idx]
    taps = [_grid_spec(n, s) if len(s) == 4 else n for n, _, s in stages]
    return taps + [representation]


def describe_model(role: str, arch: str, width: float, weights: str, data: DataInfo) -> ModelInfo:
    from .io import load_into
    from .taps import Taps, default_representation, layer_shapes

    model = _build(arch, width, data)
    if weights:
        load_into(model, weights, f"--{role} {arch}")
    try:
        rows = layer_shapes(model, _example(data))
    except FlowKDError:
        raise
    except Exception as e:  # noqa: BLE001 - the network cannot take this data's images
        raise FlowKDError(f"--{role} {arch}: cannot run on the data's images ({data.channels}x{data.height}x"
                          f"{data.width}): {type(e).__name__}: {(str(e).splitlines() or [''])[0]}") from None
    rep = default_representation(model)
    if not rep:
        raise FlowKDError(f"--{role} {arch}: no representation found (no `representation` attribute and no linear "
                          "layer); give the model a `representation` tap")
    taps = list(getattr(model, "flow_taps", None) or derive_taps(rows, rep))
    if taps[-1] != rep:
        taps.append(rep)
    with Taps(model, taps) as t:  # every proposed tap fires on this data
        model.eval()
        with torch.no_grad():
            t(_example(data))
    info = ModelInfo(role, arch, width, weights, sum(p.numel() for p in model.parameters()), rows, taps)
    if arch.startswith(("py:", "fn:")):
        info.notes.append(f"`flowkd run` imports {arch.split(':')[1]}: keep its folder on PYTHONPATH")
    return info


def _depths(info: ModelInfo) -> dict[str, float]:
    order = [n for n, _, _ in info.rows]
    n = max(len(order) - 1, 1)
    return {t: (order.index(_module_of(t)) / n if _module_of(t) in order else 1.0) for t in info.taps}


def pair_by_depth(teacher: ModelInfo, student: ModelInfo) -> list[list[str]]:
    """Each intermediate student tap with the teacher tap at the nearest relative depth (position of its module
    in the forward pass / number of modules), never going back up; the last pair the two representations."""
    td, sd = _depths(teacher), _depths(student)
    t_mid, pairs, lo = teacher.taps[:-1], [], 0
    for s in student.taps[:-1]:
        if not t_mid:
            break
        cands = range(lo, len(t_mid))
        j = min(cands, key=lambda i: (abs(td[t_mid[i]] - sd[s]), i)) if cands else len(t_mid) - 1
        pairs.append([t_mid[j], s])
        lo = j
    # a teacher tap nearest to several student taps goes with the nearest of them only (no tap twice)
    best: dict[str, str] = {}
    for t, s in pairs:
        if t not in best or abs(td[t] - sd[s]) < abs(td[t] - sd[best[t]]):
            best[t] = s
    pairs = [[t, s] for t, s in pairs if best[t] == s]
    return pairs + [[teacher.representation, student.representation]]


# --------------------------------------------------------------------------------------------- config


def _q(s: str) -> str:
    return json.dumps(s)  # a JSON string is a TOML basic string


def _listing(info: ModelInfo, hint: str) -> list[str]:
    used = {_module_of(t) for t in info.taps}
    rows = [r for r in info.rows if r[0].count(".") <= 1 or r[0] in used]
    hidden = len(info.rows) - len(rows)
    if len(rows) > _LISTED:
        keep = {r[0] for r in rows[:_LISTED]} | used
        hidden += len(rows) - len([r for r in rows if r[0] in keep])
        rows = [r for r in rows if r[0] in keep]
    w = max([len(r[0]) for r in rows] + [8])
    out = [f"#   {n:<{w}}  {t:<18} {tuple(s[1:])}" for n, t, s in rows]
    if hidden:
        out.append(f"#   ... {hidden} more modules: {hint}")
    return out


def _layers_hint(arch: str, data: DataInfo, width: float = 1.0) -> str:
    w = f" --width {width:g}" if width != 1.0 else ""
    return (f"flowkd layers {arch}{w} --in-channels {data.channels} --in-size {data.height} "
            f"--num-classes {data.num_classes}")


def _phases(default: tuple[list[int], list[float]], epochs: int) -> str:
    e, lr = default if not epochs else ([epochs], [default[1][0]])
    return f"epochs = {json.dumps(e)}\nlr = {json.dumps(lr)}"


def render_config(data: DataInfo, teacher: ModelInfo, student: ModelInfo, aux: ModelInfo, aux_of: bool,
                  epochs: int = 0, source: str = "") -> str:
    train_teacher = not teacher.weights and teacher.params > 0
    L = [f"# Written by `flowkd init {source}`.".rstrip(),
         "# Run it with:  flowkd run THIS_FILE --out runs/NAME   (--set key=value overrides any key, e.g.",
         "# --set stages.student.epochs=[5]; --set data.train_subset=500 for a quick end-to-end check).",
         "#",
         "# Pipeline (Passalis et al., CVPR 2020): " + ("teacher from labels -> " if train_teacher else "")
         + "auxiliary teacher (the student x2) from labels -> auxiliary",
         "# by PKT from the teacher's representation -> student by information flow from the auxiliary's layers",
         "# (critical period: intermediate pairs weigh 100 x 0.7^epoch, the last 1), no labels; plus the same",
         "# student from labels as a baseline. Every model is evaluated by retrieval (test images as queries).",
         f"title = {_q(f'{teacher.arch} -> {student.arch} by information flow via the auxiliary teacher')}",
         "seed = 0", 'device = "auto"', ""]
    # ---- data
    L.append("[data]")
    if data.name == "imagefolder":
        L.append(f"# {data.root}: {data.n_train} training / {data.n_test} test images, {data.num_classes} classes "
                 f"({', '.join(data.classes[:10])}{', ...' if data.num_classes > 10 else ''}),")
        L.append(f"# {data.channels} channel(s), {data.height}x{data.width} pixels (every image must share that size"
                 " and mode); decoded once and cached in <root>/.flowkd-cache")
    else:
        L.append(f"# {data.name}: {data.num_classes} classes, {data.channels} channel(s), {data.height}x{data.width}"
                 " pixels" + (" (fetched into root when missing, MD5-checked)" if data.download else ""))
    L.append(f"name = {_q(data.name)}")
    if data.root:
        L.append(f"root = {_q(data.root)}")
    if data.download:
        L.append("download = true")
    batch = 128 if not data.n_train else max(2, min(128, data.n_train))
    L.append(f"batch_size = {batch}" + ("" if batch == 128 else "  # the training set is small"))
    if data.name != "digits":
        L.append("augment = true                   # random crop (4-px zero padding) + horizontal flip; false if a "
                 "flip changes what an image shows")
    L.append("")
    # ---- models
    def model_block(name: str, info: ModelInfo, extra: list[str]) -> None:
        L.append(f"[models.{name}]")
        L.extend(extra)
        if info.weights:
            L.append(f"weights = {_q(info.weights)}")
        L.append(f"representation = {_q(info.representation)}")
        L.append("")

    def header(name: str, info: ModelInfo, hint: str, full: bool = True) -> None:
        L.append(f"# {name}: {info.arch}" + (f" x{info.width:g}" if info.width != 1.0 else "")
                 + f", {info.params:,} parameters" + (f", weights {info.weights}" if info.weights else ""))
        if full:
            L.append("# tap candidates (module, type, output shape on one image); a tap is `name`, `name@G` (pool a "
                     "conv map to GxG) or `name:input`:")
            L.extend(_listing(info, hint))
        L.append(f"# proposed taps, shallow -> deep (last = representation): {', '.join(info.taps)}")
        L.extend(f"# note: {n}" for n in info.notes)

    header("teacher", teacher, _layers_hint(teacher.arch, data))
    model_block("teacher", teacher, [f"arch = {_q(teacher.arch)}"])
    header("student", student, _layers_hint(student.arch, data))
    model_block("student", student, [f"arch = {_q(student.arch)}"])
    header("aux", aux, _layers_hint(aux.arch, data, aux.width), full=False)
    if aux_of:
        model_block("aux", aux, ['auxiliary_of = "student"       # the student\'s family ...',
                                 "width = 2.0                      # ... twice as wide"])
    else:
        model_block("aux", aux, [f"arch = {_q(aux.arch)}", f"width = {aux.width:g}"])
    L.append("[models.baseline]                # the student's architecture, trained from labels only")
    L.append(f"arch = {_q(student.arch)}")
    L.append(f"representation = {_q(student.representation)}")
    L.append("")
    # ---- stages
    if train_teacher:
        L += ["[[stages]]                       # the teacher from labels (no weights were given: "
              "--teacher ARCH@WEIGHTS skips this)",
              'name = "teacher"', 'kind = "supervised"', 'model = "teacher"', _phases(([30, 10], [1e-3, 1e-4]), epochs), ""]
    elif not teacher.weights:
        L.append("# the teacher has no parameters: it is used as it is")
    L += ["[[stages]]                       # A: the auxiliary teacher from labels",
          'name = "aux_labels"', 'kind = "supervised"', 'model = "aux"', _phases(([50, 30], [1e-3, 1e-4]), epochs), "",
          "[[stages]]                       # B: the auxiliary teacher mimics the teacher's representation (PKT)",
          'name = "aux_pkt"', 'kind = "distill"', 'model = "aux"', 'teacher = "teacher"',
          f"pairs = [[{_q(teacher.representation)}, {_q(aux.representation)}]]",
          _phases(([30, 10], [1e-3, 1e-4]), epochs), ""]
    flow = pair_by_depth(aux, student)
    direct = pair_by_depth(teacher, student)
    L += ["[[stages]]                       # C: the student mimics the auxiliary's information flow, no labels",
          'name = "student"', 'kind = "distill"', 'model = "student"', 'teacher = "aux"',
          "# (aux tap, student tap) by relative depth, shallow -> deep, the last pair the representations",
          "pairs = [" + ", ".join(f"[{_q(a)}, {_q(s)}]" for a, s in flow) + "]",
          "# straight from the teacher instead (teacher = \"teacher\"), paired by relative depth:",
          "# pairs = [" + ", ".join(f"[{_q(a)}, {_q(s)}]" for a, s in direct) + "]",
          'schedule = { name = "critical_period", init = 100.0, decay = 0.7 }',
          _phases(([50], [1e-3]), epochs), "",
          "[[stages]]                       # baseline: the student from labels, same budget",
          'name = "baseline"', 'kind = "supervised"', 'model = "baseline"', _phases(([50], [1e-3]), epochs), "",
          "# On a GPU: [fast] amp = \"bf16\", channels_last = true, cuda_graph = true (see the README's fast path).",
          "[eval]", 'models = ["teacher", "aux", "student", "baseline"]',
          ('cost = "static"  # a quick trial: parameters, MACs, size; "full" adds 1-thread CPU latency (slow on a '
           'big teacher)' if epochs else
           'cost = "full"  # parameters, MACs, size, 1-thread CPU latency (PyTorch; ONNX Runtime when installed)'), ""]
    return "\n".join(L)


def write_config(out, *, data: str, teacher: str, student: str, root: str = "data", epochs: int | None = None,
                 force: bool = False) -> str:
    """Inspect ``data`` and the two networks, then write the config to ``out`` (an existing file only with
    ``force``). ``epochs``: every stage one phase of that many epochs (None: the paper's schedule)."""
    from .config import config_from_toml
    from .io import atomic_write_text, check_output

    out = check_output(out, "--out", force=force)
    if epochs is not None:
        check_number("--epochs", epochs, ">= 1", whole=True)
    if "@" in student:
        raise FlowKDError("--student takes no weights: the student is trained from scratch (give ARCH only)")
    t_arch, t_weights = parse_spec(teacher, "teacher")
    s_arch, _ = parse_spec(student, "student")
    info = inspect_data(data, root)
    t = describe_model("teacher", t_arch, 1.0, t_weights, info)
    s = describe_model("student", s_arch, 1.0, "", info)
    aux_of = True
    try:
        a = describe_model("student", s_arch, 2.0, "", info)
    except FlowKDError as e:  # timm/torchvision take their size from the name
        a = describe_model("student", s_arch, 1.0, "", info)
        a.notes.append(f"{s_arch} cannot be made wider ({e}); the auxiliary has the student's size: "
                       "pick a bigger sibling for models.aux.arch")
        aux_of = False
    a.role = "aux"
    if aux_of and a.params == s.params:
        a.notes.append(f"{s_arch} ignores `width`: the auxiliary is no bigger than the student; give your factory a "
                       "`width` argument or set models.aux.arch to a bigger network")
    if aux_of:  # the same family: the student's own taps (a wider map may have been pooled differently)
        a.taps = list(s.taps)
    src = shlex.join(["--data", data, "--teacher", teacher, "--student", student]
                     + (["--epochs", str(epochs)] if epochs else []))
    text = render_config(info, t, s, a, aux_of, epochs, src)
    config_from_toml(text, [], str(out))  # what is written parses and validates
    check_output(out, "--out", force=force)  # again: the inspection took a while
    atomic_write_text(out, text)
    return text
