"""Typed configuration: dataclasses <-> TOML, with ``a.b=value`` overrides checked against the types.

Unknown keys and wrong types fail with the dotted key named. Lists of tables (``[[stages]]``) are
addressed by their ``name`` in overrides: ``stages.student.epochs=[5]``. A stage's schedule and pair loss
take the options their registered class takes (``Registry.check_options``), no other.

(Over 300 lines on purpose: the schema, its parsing and its cross-field checks stay in one file, so that a
key and its check are read and changed together.)
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Union

from .checks import (NonNegFloat, NonNegInt, PosFloat, PosInt, Range, check_anneal_average, check_plan,
                     check_restart, check_value, has_range)
from .errors import FlowKDError
from .taps import teacher_keys

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["Config", "FastConfig", "DataConfig", "ModelConfig", "StageConfig", "EvalConfig",
           "load_config", "config_from_toml", "config_from_dict", "apply_overrides", "to_dict"]


@dataclass
class DataConfig:
    name: str = "digits"            # digits | cifar10 | cifar100 | stl10 | imagefolder | cifar10_jpg
    root: str = ""                  # dataset folder (not used by digits)
    cache_dir: str = ""             # decoded-image cache for image folders (default: <root>/.flowkd-cache)
    batch_size: PosInt = 128
    eval_batch_size: PosInt = 1024
    augment: bool = False           # random crop (4-px zero padding) + horizontal flip, on the device
    drop_last: bool = False         # drop each epoch's last, smaller batch (similarity losses see only full batches)
    test_fraction: Annotated[float, Range("(0, 1)")] = 0.25  # digits only: held-out share, stratified
    train_subset: NonNegInt = 0  # >0: keep this many training images (seeded, stratified)
    test_subset: NonNegInt = 0   # >0: likewise for the test split
    validation: Annotated[float, Range("[0, 1)")] = 0.0  # >0: evaluate on this stratified share of the training
                                    # split, held out from training, instead of the test split (to choose weights without the test set)
    download: bool = False          # cifar10 | cifar100 | stl10: fetch the official archive into root when missing


@dataclass
class ModelConfig:
    arch: str = ""                  # a registered name (`flowkd models`), timm:NAME, torchvision:NAME or py:MODULE:FUNCTION
    width: PosFloat = 1.0  # channel / hidden-unit multiplier
    auxiliary_of: str = ""          # build as the auxiliary teacher of that model: its arch, width x `width`
    weights: str = ""               # a state_dict to load (strict keys; .pt or .safetensors), e.g. a trained teacher
    representation: str = ""        # tap used for evaluation (default: the model's own)
    label: str = ""                 # display name in tables and plots
    options: dict[str, Union[bool, int, float, str]] = field(default_factory=dict)  # extra arguments of the model's factory
    features: str = ""              # a teacher given as precomputed per-sample features (.npy/.npz/.safetensors), no arch
    precompute: bool = False        # a frozen teacher: compute its taps once (augmentation-free) and keep them on the device
    views: int = 0                  # a frozen teacher: serve its outputs from a bank of this many augmented views of
                                    # every training image, computed once (flowkd.bank; 0: run it live every batch)
    bank: str = ""                  # views > 0: the folder of banks (default $FLOWKD_CACHE/banks or ~/.cache/flowkd/banks),
                                    # or one bank's own folder (it must match)
    bank_precision: str = "auto"    # the bank's teacher pass: fp32 | bf16 | auto (bf16 where the CPU/GPU supports it)
    view_seed: int = 0              # the seed the bank's views are drawn with, shared by every run seed (one bank for
                                    # all); -1: each run's own data seed (views = epochs then equals live training)
    sweep_of: str = ""              # set by a sweep: the model this one copies (its initialisation, too)
    paper: dict[str, float] = field(default_factory=dict)  # the paper's figures for this row: cos_map, euc_map, p100 (legacy)


@dataclass
class StageConfig:
    name: str = ""
    kind: str = "supervised"        # supervised | distill
    model: str = ""                 # which model trains
    teacher: str = ""               # distill: whose features it mimics
    epochs: list[int] = field(default_factory=lambda: [10])
    lr: list[float] = field(default_factory=lambda: [1e-3])   # one rate per phase of `epochs`
    optimizer: str = "adam"         # adam | sgd
    weight_decay: NonNegFloat = 0.0
    pairs: list[list[str]] = field(default_factory=list)  # [[teacher tap, student tap], ...] shallow -> deep; a pair
                                    # may name its own loss as a third item ([t, s, "kd"]: that loss, its defaults)
    pairs_from: str = "representation"  # when `pairs` is empty: representation | flow (the models' own taps)
    # the pairs' weights: { name = <schedule>, <its options> } (flowkd.schedules; an option the schedule
    # does not take is an error)
    schedule: dict[str, Union[int, float, str]] = field(default_factory=lambda: {"name": "constant"})
    loss: str = "pkt"               # per-pair loss: pkt | kd | fitnet | at | sp (see flowkd.losses.baselines)
    loss_options: dict[str, Union[int, float, str]] = field(default_factory=dict)  # e.g. { temperature = 4.0 }
    # options of loss "pkt" (unset: its defaults combined / jeffreys / 1e-6)
    kernel: str = ""                # combined | cosine | student_t | rbf | adaptive_rbf | gaussian | adaptive_gaussian
    divergence: str = ""            # jeffreys | kl
    log_eps: Union[NonNegFloat, None] = None  # epsilon inside the divergence's logs (0: plain logs, as the paper's code)
    ce_weight: NonNegFloat = 0.0  # distill: add this x cross-entropy on labels
    allow_unordered_pairs: bool = False  # pairs must go shallow -> deep on both sides, no tap twice, unless true
    restart_optimizer: str = "never"  # never | phase (a new optimiser per lr phase) | epoch (one per epoch)
    lr_anneal: str = "none"         # none | cosine: each phase's rate falls along a half cosine, epoch by epoch
    average_last: NonNegInt = 0  # end with the mean of the weights after each of the last N epochs (0: off)
    sweep_of: str = ""              # set by a sweep: the stage this one copies
    augment: Union[bool, str] = "auto"  # auto: data.augment, except off when the teacher's features are precomputed
    views: int = -1                 # distill from a banked teacher: this stage's number of views (-1: the teacher's views)


@dataclass
class EvalConfig:
    models: list[str] = field(default_factory=list)   # empty: every model
    metrics: list[str] = field(default_factory=lambda: ["cosine", "euclidean"])
    k: Annotated[list[int], Range(">= 1")] = field(default_factory=lambda: [10, 100])
    legacy: bool = True             # also report the reference evaluator's legacy mAP / P@k
    cost: str = "static"            # none | static (params, MACs, size) | full (+ 1-thread CPU latency, PyTorch and ONNX Runtime)
    cost_budget_s: PosFloat = 0.5  # full: seconds of repeated timing per model, input size and runtime


@dataclass
class FastConfig:
    amp: str = "none"               # none | bf16: autocast the networks' forward passes (PKT stays fp32)
    channels_last: Union[bool, str] = "auto"  # models and batches in channels_last memory format; auto: on a CPU
    compile: bool = False           # torch.compile every trained model (launch-bound small students)
    cuda_graph: bool = False        # capture each epoch's whole training step as one CUDA graph (CUDA only)
    student_workers: Union[int, str] = "auto"  # a cohort's students stepping side by side (CPU); auto: min(students, threads)
    threads: Union[int, str] = "auto"  # CPU training threads; auto: the cores other processes leave idle (flowkd.threads)
    inference_teacher: bool = True  # teachers run under torch.inference_mode


@dataclass
class AnalysisConfig:
    flow_log: bool = False          # log per-layer MI with the labels and per-pair divergences to flow.jsonl
    probe_size: Annotated[int, Range(">= 2")] = 500  # fixed, stratified training images (no augmentation), every epoch
    kernel: str = "gaussian"        # MI kernel: gaussian | cosine


@dataclass
class DistributedConfig:
    gather_features: bool = False   # all-gather features so PKT's similarity batch is the global batch


@dataclass
class Config:
    seed: NonNegInt = 0
    weights_format: str = "pt"      # pt | safetensors: the format of checkpoints/<stage>.* (safetensors: optional extra)
    mode: str = "default"           # default | paper: the reference code's optimiser restarts and plain logs
    device: str = "auto"            # auto | cpu | cuda | cuda:N
    progress: bool = True           # progress bars (on a terminal; otherwise one line per epoch)
    tensorboard: bool = False       # also write metrics.jsonl's records to <run>/tensorboard/ (optional extra)
    cohort: bool = True             # consecutive stages that read the same data train in one pass (flowkd.cohort)
    checkpoint_s: NonNegFloat = 30.0  # training seconds between a stage's checkpoints (0: every epoch)
    title: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    models: dict[str, ModelConfig] = field(default_factory=dict)
    stages: list[StageConfig] = field(default_factory=list)
    eval: EvalConfig = field(default_factory=EvalConfig)
    fast: FastConfig = field(default_factory=FastConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp, key: str):
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise FlowKDError(f"config key {key!r} must be a table, got {type(value).__name__}")
        return _from_dict(tp, value, key)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):  # e.g. an unset log_eps read back from config.json
            return None
        for arg in typing.get_args(tp):
            try:
                return _convert(value, arg, key)
            except FlowKDError:
                continue
        raise FlowKDError(f"config key {key!r} has the wrong type: {value!r}")
    if origin is list:
        (arg,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise FlowKDError(f"config key {key!r} must be a list, got {value!r}")
        # an entry of [[stages]] is named as --set names it: stages.<name>.key
        return [_convert(v, arg, f"{key}.{v['name']}" if isinstance(v, dict) and isinstance(v.get("name"), str)
                         else f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, arg = typing.get_args(tp)
        if not isinstance(value, dict):
            raise FlowKDError(f"config key {key!r} must be a table, got {value!r}")
        return {k: _convert(v, arg, f"{key}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
            return value
        raise FlowKDError(f"config key {key!r} must be {_type_name(tp)}, got {value!r}")
    raise FlowKDError(f"config key {key!r}: unsupported type {tp}")  # pragma: no cover


def _from_dict(cls, data: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else k
        if k not in names:
            raise FlowKDError(f"unknown config key {key!r}; valid keys here: {', '.join(sorted(names))}")
        kwargs[k] = _convert(v, hints[k], key)
    return cls(**kwargs)


STAGE_KINDS = ("supervised", "distill")


SWEEPABLE = ("ce_weight", "weight_decay")  # besides every option of `schedule` and `loss_options`


def expand_sweeps(data: dict) -> dict:
    """A stage that lists values for one of its options (``schedule = { ..., decay = [0.5, 0.7] }``, a
    ``loss_options`` value, ``ce_weight``, ``weight_decay``) becomes one stage per value, each training its own
    copy of the stage's model (``NAME[option=value]``, initialised as the model itself), in one pass as a cohort."""
    stages = data.get("stages")
    if not isinstance(stages, list):
        return data
    data = dict(data, stages=[], models=dict(data.get("models") or {}))
    for st in stages:
        if not isinstance(st, dict):
            data["stages"].append(st)
            continue
        where = f"stage {st.get('name', '?')!r}"
        found = [("schedule", k) for k, v in (st.get("schedule") or {}).items() if isinstance(v, list)] + \
                [("loss_options", k) for k, v in (st.get("loss_options") or {}).items() if isinstance(v, list)] + \
                [(None, k) for k in SWEEPABLE if isinstance(st.get(k), list)]
        if not found:
            data["stages"].append(st)
            continue
        if len(found) > 1:
            raise FlowKDError(f"{where}: a sweep lists values for one option per stage, got "
                              f"{', '.join(k for _, k in found)}")
        table, key = found[0]
        values = (st[table] if table else st)[key]
        if not values:
            raise FlowKDError(f"{where}: the sweep of {key!r} is an empty list")
        model = st.get("model", "")
        users = [o.get("name") for o in stages if o is not st and isinstance(o, dict)
                 and (model in (o.get("model"), o.get("teacher"))
                      or any(isinstance(q, list) and q and str(q[0]).startswith(f"{model}/") for q in o.get("pairs") or []))]
        if users or model not in data["models"]:
            raise FlowKDError(f"{where}: a sweep trains copies of its model, but model {model!r} is trained or read by "
                              f"other stages ({', '.join(map(str, users))}); give the swept stage a model of its own")
        referenced = any(isinstance(m, dict) and m.get("auxiliary_of") == model for m in data["models"].values())
        base = data["models"][model] if referenced else data["models"].pop(model)  # an auxiliary may be sized on it
        for v in values:
            tag = f"[{key}={v}]"
            copy = dict(st, name=f"{st['name']}{tag}", model=f"{model}{tag}", sweep_of=st["name"])
            if table:
                copy[table] = dict(st[table], **{key: v})
            else:
                copy[key] = v
            data["stages"].append(copy)
            data["models"][f"{model}{tag}"] = dict(base, label=f"{base.get('label') or model} ({key}={v})",
                                                   sweep_of=model)
        ev = dict(data.get("eval") or {})
        names = [f"{model}[{key}={v}]" for v in values]
        if ev.get("models"):
            data["eval"] = dict(ev, models=[n for m in ev["models"] for n in (names if m == model else [m])])
        elif referenced:  # every model is evaluated, but the kept base trains in no stage
            data["eval"] = dict(ev, models=[m for m in data["models"] if m != model])
    return data


def config_from_dict(data: dict) -> Config:
    cfg = _from_dict(Config, expand_sweeps(data))
    _validate(cfg)
    if cfg.mode == "paper":  # the reference code's habits, spelled out on each stage
        teachers = {t for s in cfg.stages for t in stage_teachers(s)}
        for s in cfg.stages:
            # the student (a distilled model no later stage learns from) gets a new Adam every epoch; the
            # auxiliary teacher's stages (and any other) one Adam per learning-rate phase
            s.restart_optimizer = "epoch" if s.kind == "distill" and s.model not in teachers else "phase"
            if s.kind == "distill" and s.loss == "pkt":
                s.log_eps = 0.0
    return cfg


def teacher_side(s: StageConfig, key: str) -> tuple[str, str]:
    """(model, tap) of a pair's teacher side: ``"model/tap"`` reads that model instead of the stage's ``teacher``
    (e.g. the intermediate pairs from an auxiliary, the last from the big teacher itself)."""
    return tuple(key.split("/", 1)) if "/" in key else (s.teacher, key)


def pair_teachers(s: StageConfig) -> list[tuple[str, str]]:
    """Each (model, tap) the listed pairs' teacher sides read (:func:`teacher_side`; a side ``"a+b"`` reads
    several, ``flowkd.taps.teacher_keys``)."""
    return [teacher_side(s, k) for p in s.pairs for k in teacher_keys(p[0])]


def stage_teachers(s: StageConfig) -> list[str]:
    """Every model a stage learns from: its ``teacher``, then any other a pair names (none for supervised)."""
    if s.kind != "distill":
        return []
    return list(dict.fromkeys([s.teacher] + [m for m, _ in pair_teachers(s)]))


def pair_loss_names(s: StageConfig) -> list[str]:
    """Each pair's loss: the third item of a pair that names one, else the stage's ``loss`` (one entry when the
    pairs are not listed)."""
    return [p[2] if len(p) == 3 else s.loss for p in s.pairs] or [s.loss]


def pair_loss_options(s: StageConfig) -> dict:
    """The options of a stage's pair loss: ``loss_options``, plus ``kernel``/``divergence``/``log_eps`` for PKT."""
    top = {k: v for k, v in (("kernel", s.kernel), ("divergence", s.divergence), ("log_eps", s.log_eps))
           if v not in ("", None)}
    return {**top, **s.loss_options}


def check_ranges(obj, key: str = "") -> None:
    """Every field declared with a range (``PosInt``), at any depth, named by its dotted
    key as ``--set`` takes it: ``data.batch_size``, ``models.student.width``, ``stages.student.ce_weight``."""
    hints = typing.get_type_hints(type(obj), include_extras=True)
    for f in dataclasses.fields(obj):
        value, name = getattr(obj, f.name), f"{key}.{f.name}".lstrip(".")
        if dataclasses.is_dataclass(value):
            check_ranges(value, name)
        elif isinstance(value, dict) and value and all(dataclasses.is_dataclass(v) for v in value.values()):
            for k, v in value.items():
                check_ranges(v, f"{name}.{k}")
        elif isinstance(value, list) and value and all(dataclasses.is_dataclass(v) for v in value):
            for i, v in enumerate(value):
                check_ranges(v, f"{name}.{getattr(v, 'name', '') or i}")
        elif has_range(hints[f.name]):
            check_value(name, value, hints[f.name])


def _validate(cfg: Config) -> None:
    check_ranges(cfg)
    if cfg.fast.amp not in ("none", "bf16"):
        raise FlowKDError(f"fast.amp must be 'none' or 'bf16', got {cfg.fast.amp!r}")
    if cfg.fast.channels_last not in (True, False, "auto"):
        raise FlowKDError(f"fast.channels_last must be true, false or 'auto', got {cfg.fast.channels_last!r}")
    t = cfg.fast.threads
    if t != "auto" and not (isinstance(t, int) and not isinstance(t, bool) and t >= 1):
        raise FlowKDError(f"fast.threads must be \"auto\" or a whole number >= 1, got {t!r}")
    if cfg.fast.cuda_graph and cfg.fast.compile:
        raise FlowKDError("fast.cuda_graph and fast.compile are alternatives for launch-bound steps; set one of them")
    if cfg.mode not in ("default", "paper"):
        raise FlowKDError(f"mode must be 'default' or 'paper', got {cfg.mode!r}")
    names = [s.name for s in cfg.stages]
    for s in cfg.stages:
        if not s.name:
            raise FlowKDError("every [[stages]] entry needs a name")
        if names.count(s.name) > 1:
            raise FlowKDError(f"stage name {s.name!r} is used twice")
        if s.kind not in STAGE_KINDS:
            raise FlowKDError(f"stage {s.name!r}: unknown kind {s.kind!r}; valid: {', '.join(STAGE_KINDS)}")
        if s.model not in cfg.models:
            raise FlowKDError(f"stage {s.name!r}: unknown model {s.model!r}; models: {', '.join(cfg.models)}")
        if s.kind == "distill" and not s.teacher:
            raise FlowKDError(f"stage {s.name!r} distils, and needs a teacher: add teacher = \"MODEL\" (one of "
                              f"{', '.join(m for m in cfg.models if m != s.model)}) or make it kind = \"supervised\"")
        if s.kind == "distill" and s.teacher not in cfg.models:
            raise FlowKDError(f"stage {s.name!r}: unknown teacher {s.teacher!r}; models: {', '.join(cfg.models)}")
        check_plan(s.epochs, s.lr, f"stage {s.name!r}")
        _validate_stage_options(s)
        if any(len(p) not in (2, 3) for p in s.pairs):
            raise FlowKDError(f"stage {s.name!r}: each of pairs must be [teacher tap, student tap] or [teacher tap, "
                              "student tap, loss]")
        if s.pairs_from not in ("representation", "flow"):
            raise FlowKDError(f"stage {s.name!r}: pairs_from must be 'representation' or 'flow'")
        if s.augment not in (True, False, "auto"):
            raise FlowKDError(f"stage {s.name!r}: augment must be true, false or 'auto', got {s.augment!r}")
        if isinstance(s.views, bool) or not isinstance(s.views, int) or s.views < -1:
            raise FlowKDError(f"stage {s.name!r}: views must be a whole number >= 1 (or -1: the teacher's), got {s.views!r}")
        if s.kind == "distill":
            averaged = [p for p, n in zip(s.pairs, pair_loss_names(s)) if "+" in p[0] and n != "pkt"]
            if averaged:
                raise FlowKDError(f"stage {s.name!r}: the pair {averaged[0][:2]} averages several teachers ('+'), "
                                  "which only the pkt loss can (their similarity distributions averaged)")
        named = [m for m, _ in pair_teachers(s) if m != s.teacher] if s.kind == "distill" else []
        for m in named:  # a pair reading another model than the stage's teacher ("model/tap")
            if m not in cfg.models:
                raise FlowKDError(f"stage {s.name!r}: a pair reads {m!r}/..., but there is no model {m!r}; models: "
                                  f"{', '.join(cfg.models)}")
            if m == s.model:
                raise FlowKDError(f"stage {s.name!r}: a pair reads {m!r}/..., the model this stage trains; a pair's "
                                  "teacher side must be another model")
        banked = [t for t in stage_teachers(s) if cfg.models[t].views]
        if s.views > 0 and s.kind == "distill" and not banked:
            raise FlowKDError(f"stage {s.name!r}: views = {s.views} reads a bank of the teacher's views, but "
                              f"models.{s.teacher}.views is 0 (set it to the number of views to compute)")
        served = {(s.views if s.views > 0 else cfg.models[t].views, cfg.models[t].view_seed) for t in banked}
        if len(served) > 1:  # the loader serves one view of each image per epoch, for every teacher alike
            raise FlowKDError(f"stage {s.name!r} reads the banks of {', '.join(banked)}, which serve different views "
                              f"({'; '.join(f'{t}: views {cfg.models[t].views}, view_seed {cfg.models[t].view_seed}' for t in banked)}); "
                              "a batch is one view of each image for every teacher: give them the same view_seed, "
                              "and the same views (or set the stage's views)")
        if s.views == 0:
            raise FlowKDError(f"stage {s.name!r}: views must be >= 1 (or -1: the teacher's), got 0")
        frozen = cfg.models[s.model].features or cfg.models[s.model].precompute
        if cfg.models[s.model].views and sum(s.epochs):
            raise FlowKDError(f"stage {s.name!r}: model {s.model!r} is served from a bank of its views "
                              f"(models.{s.model}.views) and so is frozen; it cannot be trained")
        if frozen and sum(s.epochs):  # a stage set to 0 epochs (switched off with --set) trains nothing
            raise FlowKDError(f"stage {s.name!r}: model {s.model!r} has precomputed features and cannot be trained")
        if s.kind == "distill" and s.teacher == s.model:
            raise FlowKDError(f"stage {s.name!r}: model {s.model!r} is its own teacher, so every pair compares a layer "
                              "with itself (the loss is 0 and nothing is learnt); name another model as teacher")
    _check_relational_batches(cfg)
    if cfg.weights_format not in ("pt", "safetensors"):
        raise FlowKDError(f"weights_format must be 'pt' or 'safetensors', got {cfg.weights_format!r}")
    for name, m in cfg.models.items():
        if isinstance(m.views, bool) or not isinstance(m.views, int) or not 0 <= m.views <= 100_000:
            raise FlowKDError(f"models.{name}.views must be a whole number from 0 (live) to 100000, got {m.views!r}")
        if isinstance(m.view_seed, bool) or not isinstance(m.view_seed, int) or m.view_seed < -1:
            raise FlowKDError(f"models.{name}.view_seed must be a whole number >= 0 (or -1: the run's data seed), "
                              f"got {m.view_seed!r}")
        if m.bank_precision not in ("auto", "fp32", "bf16"):
            raise FlowKDError(f"models.{name}.bank_precision must be auto, fp32 or bf16, got {m.bank_precision!r}")
        if m.views and (m.features or m.precompute):
            raise FlowKDError(f"model {name!r}: views (a bank of augmented views) excludes "
                              f"{'features' if m.features else 'precompute'}; choose one")
        if m.views and not cfg.data.augment:
            raise FlowKDError(f"model {name!r}: views = {m.views} needs data.augment = true (without augmentation "
                              "there is one view: use precompute = true)")
        if m.features:
            clash = [k for k in ("arch", "auxiliary_of", "weights") if getattr(m, k)] + (["precompute"] if m.precompute else [])
            if clash:
                raise FlowKDError(f"model {name!r}: features (a precomputed teacher) excludes {', '.join(clash)}")
            continue
        if not m.arch and not m.auxiliary_of:
            raise FlowKDError(f"model {name!r} needs an arch (or auxiliary_of, or features)")
        if m.auxiliary_of and m.auxiliary_of not in cfg.models:
            raise FlowKDError(f"model {name!r}: auxiliary_of names unknown model {m.auxiliary_of!r}")
        if m.auxiliary_of and cfg.models[m.auxiliary_of].features:
            raise FlowKDError(f"model {name!r}: auxiliary_of names {m.auxiliary_of!r}, which is precomputed features, not a network")
    for name in cfg.eval.models:
        if name not in cfg.models:
            raise FlowKDError(f"eval.models: unknown model {name!r}; models: {', '.join(cfg.models)}")
        if cfg.models[name].features:
            raise FlowKDError(f"eval.models: {name!r} is precomputed training features; it has no test-set features to evaluate")
    for name, m in cfg.models.items():
        bad = [k for k in m.paper if k not in ("cos_map", "euc_map", "p100")]
        if bad:
            raise FlowKDError(f"models.{name}.paper takes cos_map, euc_map, p100 (the paper's figures), not {bad[0]!r}")
    if not 0.0 <= cfg.data.validation < 1.0:
        raise FlowKDError(f"data.validation must be a share in [0, 1), got {cfg.data.validation}")
    if cfg.eval.cost not in ("none", "static", "full"):
        raise FlowKDError(f"eval.cost must be 'none', 'static' or 'full', got {cfg.eval.cost!r}")
    for m in cfg.eval.metrics:
        if m not in ("cosine", "euclidean"):
            raise FlowKDError(f"eval.metrics: unknown metric {m!r}; valid: cosine, euclidean")


def _check_relational_batches(cfg: Config) -> None:
    """A loss that compares the samples of a batch with each other (PKT, SP) has nothing to compare in a batch
    of one: every term is 0 and the student learns nothing."""
    from .losses.baselines import PAIR_LOSSES

    if cfg.data.batch_size >= 2:
        return
    for s in cfg.stages:
        relational = [n for n in pair_loss_names(s) if getattr(PAIR_LOSSES.typed(n), "relational", False)]
        if s.kind == "distill" and sum(s.epochs) and relational:
            raise FlowKDError(f"data.batch_size = {cfg.data.batch_size}: stage {s.name!r}'s loss {relational[0]!r} compares "
                              "the samples of a batch with each other, and a batch of one has no pairs (every term "
                              "would be 0 and the student would learn nothing); use data.batch_size >= 2 (the paper: 128)")


def _validate_stage_options(s: StageConfig) -> None:
    """Schedules and pair losses take the options their registered class takes, no other."""
    from .losses.baselines import PAIR_LOSSES
    from .schedules import SCHEDULES

    where = f"stage {s.name!r}"
    check_restart(s.restart_optimizer, where, "restart_optimizer")
    check_anneal_average(s.lr_anneal, s.average_last, s.epochs, where)
    name = s.schedule.get("name")
    if not isinstance(name, str):
        raise FlowKDError(f"{where}: schedule needs a name, e.g. {{ name = \"critical_period\" }}; valid: {', '.join(SCHEDULES.names())}")
    SCHEDULES.check_options(name, {k: v for k, v in s.schedule.items() if k != "name"}, f"stages.{s.name}.schedule")
    if s.kind != "distill":
        return
    sched = SCHEDULES.build(name, {k: v for k, v in s.schedule.items() if k != "name"}, f"stages.{s.name}.schedule")
    if sum(s.epochs) and not s.ce_weight and not any(w for e in range(sum(s.epochs)) for w in sched(e, 2)):
        raise FlowKDError(f"{where}: every pair weight of its schedule is 0 at every epoch and ce_weight is 0, so the "
                          "loss is 0 and nothing is learnt; give the schedule a weight (or final) above 0")
    PAIR_LOSSES.get(s.loss)
    for i, p in enumerate(s.pairs):
        if len(p) == 3 and p[2] not in PAIR_LOSSES:
            raise FlowKDError(f"{where}: pair {i + 1} names the loss {p[2]!r}; valid: {', '.join(PAIR_LOSSES.names())}")
    pkt_only = [k for k in ("kernel", "divergence", "log_eps") if getattr(s, k) not in ("", None)]
    if s.loss != "pkt" and pkt_only:
        raise FlowKDError(f"{where}: {', '.join(pkt_only)} apply to loss 'pkt' only; this stage's loss is {s.loss!r}")
    PAIR_LOSSES.check_options(s.loss, s.loss_options, f"stages.{s.name}.loss_options")
    PAIR_LOSSES.check_options(s.loss, pair_loss_options(s), f"stages.{s.name}")


def _parse_value(text: str):
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` strings (TOML values; bare words are strings) to a raw config dict."""
    for item in overrides:
        if "=" not in item:
            raise FlowKDError(f"override {item!r} must look like key.path=value")
        path, text = item.split("=", 1)
        keys = path.strip().split(".")
        node = data
        for i, k in enumerate(keys[:-1]):
            if isinstance(node, list):
                match = [x for x in node if isinstance(x, dict) and x.get("name") == k]
                if not match:
                    raise FlowKDError(f"override {path!r}: no entry named {k!r} in {'.'.join(keys[:i])}")
                node = match[0]
            else:
                node = node.setdefault(k, {})
            if not isinstance(node, (dict, list)):
                raise FlowKDError(f"override {path!r}: {'.'.join(keys[:i + 1])!r} is a value, not a table")
        if isinstance(node, list):
            raise FlowKDError(f"override {path!r} must name a field of a list entry")
        node[keys[-1]] = _parse_value(text.strip())
    return data


def config_from_toml(text: str, overrides: list[str] = (), source: str = "config") -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise FlowKDError(f"{source}: invalid TOML: {e}") from None
    return config_from_dict(apply_overrides(data, list(overrides)))


def load_config(path, overrides: list[str] = ()) -> Config:
    path = Path(path)
    if not path.is_file():
        raise FlowKDError(f"config file not found: {path}")
    return config_from_toml(path.read_text(), overrides, str(path))


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def with_defaults(saved: dict) -> dict:
    """A config saved by an earlier flowkd (``to_dict``) with the options added since filled in at their
    defaults: a run made before an option existed trained as its default does (every new option's default keeps
    the old behaviour). Keys it has are kept as they are; anything not a dict is returned as is."""
    if not isinstance(saved, dict):
        return saved
    base = to_dict(Config())
    out = {**base, **saved}
    for k, v in base.items():
        if isinstance(v, dict) and k != "models" and isinstance(saved.get(k), dict):
            out[k] = {**v, **saved[k]}
    model, stage = to_dict(ModelConfig()), to_dict(StageConfig())
    if isinstance(saved.get("models"), dict):
        out["models"] = {n: {**model, **m} if isinstance(m, dict) else m for n, m in saved["models"].items()}
    if isinstance(saved.get("stages"), list):
        out["stages"] = [{**stage, **st} if isinstance(st, dict) else st for st in saved["stages"]]
    return out
