"""A run's data, device and models, resolved from its config once: networks (zoo names, external specs,
auxiliary teachers through ``make_auxiliary``), weights, and teachers given as features."""

from __future__ import annotations

import platform
import time
import zlib
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from .auxiliary import make_auxiliary
from .config import Config
from .bank import ViewBank, bank_precision
from .data.arrays import ArrayDataset, Loader
from .data.load import load_split, stratified_index, stratified_subset
from .errors import FlowKDError, warn
from .features import FeatureBank, compute_features, load_features
from .io import load_into
from .models import create_model
from .taps import default_representation, frozen_taps

__all__ = ["RunModels", "load_data", "pick_device", "machine_info", "seed_for", "export_features", "channels_last"]


def channels_last(cfg, device: torch.device) -> bool:
    """``fast.channels_last``; ``"auto"`` is on for a CPU, where it makes a small CNN's step ~1.6-2x faster
    (max-pooling and convolutions vectorise over channels; ``benchmarks/profile_student.py``)."""
    flag = cfg.fast.channels_last
    return device.type == "cpu" if flag == "auto" else bool(flag)


def seed_for(seed: int, name: str) -> int:
    """The run seed combined with a name (a model, a stage): independent, reproducible streams."""
    return (seed * 7919 + zlib.crc32(name.encode())) % (2**31)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FlowKDError(f"device {name!r} requested but CUDA is not available")
    return dev


def machine_info(device: torch.device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "cpu_threads": torch.get_num_threads(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def load_data(cfg: Config) -> tuple[ArrayDataset, ArrayDataset]:
    """The config's (train, test) datasets, as stratified subsets when ``data.train_subset``/``test_subset``."""
    d = cfg.data
    options = {k: v for k, v in asdict(d).items() if k not in ("batch_size", "eval_batch_size", "augment", "drop_last",
                                                                 "train_subset", "test_subset", "validation")}
    train_set, test_set = load_split(seed=cfg.seed, progress=cfg.progress, **options)
    if d.validation > 0:  # a held-out share of the training split stands in for the test split
        held = stratified_index(train_set, max(1, round(d.validation * len(train_set))), cfg.seed + 99)
        keep = sorted(set(range(len(train_set))) - set(held))
        train_set, test_set = train_set.subset(keep), train_set.subset(held)
        test_set.name = "validation"
    train_set, test_set = (stratified_subset(train_set, d.train_subset, cfg.seed),
                           stratified_subset(test_set, d.test_subset, cfg.seed + 1))
    for split, data in (("training", train_set), (test_set.name if test_set.name == "validation" else "test", test_set)):
        present = torch.unique(data.labels).tolist()
        if len(present) < 2:
            name = data.classes[present[0]] if present and present[0] < len(data.classes) else "?"
            raise FlowKDError(f"the {split} data ({cfg.data.name}{f' at {d.root}' if d.root else ''}) holds one class "
                              f"only ({name!r}): a classifier learns nothing from it (loss 0) and every retrieval "
                              "metric would read 100%; give it two classes or more (or a larger data.test_subset)")
    return train_set, test_set


BANK_BATCH = 256  # images per batch of a bank's teacher pass


class RunModels:
    """``models`` (networks, on the device), ``banks`` (teachers as per-sample features aligned with the
    training set) and ``archs`` (name -> (arch, width)) of a config's ``[models]``."""

    def __init__(self, cfg: Config, train_set: ArrayDataset, device: torch.device, only: list[str] | None = None):
        self.cfg, self.train_set, self.device = cfg, train_set, device
        self.models: dict[str, nn.Module] = {}
        self.banks: dict[str, FeatureBank] = {}
        self.archs: dict[str, tuple[str, float]] = {}
        self.view_banks: dict[str, ViewBank] = {}
        self.bank_wants: dict[str, dict] = {}  # teacher -> {Entry: (reduction, views)} the stages read
        c, h, _ = train_set.shape
        kw = dict(num_classes=train_set.num_classes, in_channels=c, in_size=h)
        for name, m in cfg.models.items():
            if only is not None and name not in only:
                continue
            if m.features:
                self.banks[name] = load_features(m.features, m.representation).align(train_set)
                self.archs[name] = ("features", 1.0)
                continue
            torch.manual_seed(seed_for(cfg.seed, m.sweep_of or name))  # a sweep's copies start alike
            if m.auxiliary_of:
                base, base_width = self._arch_of(m.auxiliary_of, (name,))
                model = make_auxiliary(base, m.width, base_width=base_width, options=m.options, **kw)
                self.archs[name] = (base, base_width * m.width)
            else:
                model = create_model(m.arch, width=m.width, options=m.options, **kw)
                self.archs[name] = (m.arch, m.width)
            if m.weights:
                arch, width = self.archs[name]
                load_into(model, m.weights, f"model {name!r} ({arch} x{width:g})", f"{c}x{h}x{train_set.shape[2]} images")
            model = model.to(device)
            if channels_last(cfg, device):
                model = model.to(memory_format=torch.channels_last)
            self.models[name] = model

    def _arch_of(self, name: str, seen: tuple) -> tuple[str, float]:
        if name in seen:
            raise FlowKDError(f"model {name!r}: auxiliary_of forms a cycle")
        m = self.cfg.models[name]
        if m.auxiliary_of:
            base, width = self._arch_of(m.auxiliary_of, (*seen, name))
            return base, width * m.width
        return m.arch, m.width

    def teacher(self, name: str):
        """What a stage distils from: the model's features when they are precomputed, else the network."""
        return self.banks[name] if name in self.banks else self.models[name]

    def view_bank(self, name: str, loader: Loader) -> ViewBank:
        """Model ``name``'s bank of views (``models.<name>.views``), for the batches ``loader`` draws."""
        bank = self.view_banks.get(name)
        if bank is None:
            m = self.cfg.models[name]
            bank = self.view_banks[name] = ViewBank(
                self.models[name], self.train_set, loader, m.bank or None, name=name,
                precision=bank_precision(m.bank_precision, self.device), batch_size=BANK_BATCH,
                progress=self.cfg.progress)
        return bank

    def want_views(self, name: str, entries: dict, count: int) -> None:
        """A stage reads ``entries`` ({Entry: reduction}) of views 0 .. count-1 of model ``name``'s bank."""
        wants = self.bank_wants.setdefault(name, {})
        for e, form in entries.items():
            wants[e] = (form, max(count, wants.get(e, (None, 0))[1]))

    def ensure_banks(self, log=print) -> None:
        """Compute what the stages read of every bank and is not on disk yet."""
        for name, wants in self.bank_wants.items():
            bank = self.view_banks[name]
            t0 = time.perf_counter()
            bank.ensure({e: f for e, (f, _) in wants.items()}, {e: c for e, (_, c) in wants.items()})
            log(f"[{name}] bank of views ready in {time.perf_counter() - t0:.1f}s: {bank.size() / 2**20:.0f} MiB "
                f"in {bank.dir}")

    def representation(self, name: str) -> str:
        if name in self.banks:
            tap = self.banks[name].representation
        else:
            tap = self.cfg.models[name].representation or default_representation(self.models[name])
        if not tap:
            raise FlowKDError(f"model {name!r} declares no representation tap: set models.{name}.representation")
        return tap

    def flow_taps(self, name: str) -> tuple:
        return tuple(getattr(self.teacher(name), "flow_taps", ()) or ())

    def tap_shapes(self, name: str, specs) -> dict[str, tuple]:
        """Per-sample shapes of a model's taps (for a network: a forward pass on two training images)."""
        if name in self.banks:
            self.banks[name].check_taps(specs)
            return {k: v for k, v in self.banks[name].shapes().items() if k in specs}
        with frozen_taps(self.models[name], specs) as taps:  # the dict is in the order the taps fired
            x = self.train_set.normalize(self.train_set.images[:2])
            return {k: tuple(v.shape[1:]) for k, v in taps(x).items()}

    def eval_models(self) -> list[str]:
        """The models evaluated: ``eval.models``, else every network (precomputed features have no test set)."""
        return self.cfg.eval.models or [n for n in self.cfg.models if n not in self.banks]

    def precompute(self, name: str, specs: list[str], log=print) -> None:
        """A ``precompute = true`` teacher's taps on the augmentation-free training images, computed once."""
        t0 = time.perf_counter()
        bank = compute_features(self.models[name], specs, self.train_set, self.cfg.data.eval_batch_size)
        self.banks[name] = bank
        mib = sum(v.numel() * v.element_size() for v in bank.features.values()) / 2**20
        log(f"[{name}] precomputed {', '.join(bank.features)} for {len(bank)} images "
            f"({mib:.1f} MiB on {self.device}) in {time.perf_counter() - t0:.1f}s")


def export_features(cfg: Config, name: str, taps: list[str], path, data=None, force: bool = False) -> FeatureBank:
    """Write model ``name``'s taps on the whole training split (augmentation-free) to ``path`` (.npz or
    .safetensors), with the labels, for use as precomputed teacher features (``models.X.features``). An
    existing ``path`` is replaced only with ``force``."""
    from .features import save_features
    from .io import check_output

    check_output(path, "--out", force=force)
    if Path(path).suffix not in (".npz", ".safetensors"):
        raise FlowKDError(f"--out {path}: features are written as .npz or .safetensors, not "
                          f"{Path(path).suffix or 'a file without a suffix'!r}")

    if name not in cfg.models:
        raise FlowKDError(f"unknown model {name!r}; models: {', '.join(cfg.models)}")
    if cfg.models[name].features:
        raise FlowKDError(f"model {name!r} already is precomputed features ({cfg.models[name].features})")
    if cfg.data.train_subset:
        raise FlowKDError("features are exported for the whole training split: unset data.train_subset")
    device = pick_device(cfg.device)
    train_set, _ = data if data is not None else load_data(cfg)
    train_set = train_set.to(device)
    run = RunModels(cfg, train_set, device, only=[name])
    taps = taps or [run.representation(name)]
    run.tap_shapes(name, taps)  # unknown names fail before any work
    m = cfg.models[name]
    if not m.weights and not m.options.get("pretrained") and any(True for _ in run.models[name].parameters()):
        warn(f"model {name!r} has parameters but no weights file: these are the features of its random "
             f"initialisation (set models.{name}.weights, e.g. a run's checkpoints/<stage>.pt)")
    bank = compute_features(run.models[name], taps, train_set, cfg.data.eval_batch_size)
    save_features(path, bank)
    return bank
