"""One pipeline for every experiment: build data and models, run the stages in order, evaluate, report.

A run directory holds ``config.json``, ``metrics.jsonl`` (one line per epoch per stage),
``checkpoints/<stage>.pt`` (or ``.safetensors``: the trained model's weights after each stage), ``state.json`` (the stages
completed, for ``--resume``), ``results.json`` and ``results.md``. Every file is written atomically.
"""

from __future__ import annotations

import json
import platform
import time
import zlib
from pathlib import Path

import torch
from torch import nn

from .config import Config, StageConfig, to_dict
from .data.arrays import ArrayDataset, Loader
from .data.load import load_data
from .distributed import gather_rows, init_distributed
from .errors import FlowKDError
from .evaluation import evaluate_representation
from .features import FeatureBank, compute_features, load_features
from .flow import InformationFlowLoss
from .io import append_jsonl, atomic_torch_save, atomic_write_json, atomic_write_text, load_into, load_weights, save_weights
from .loop import train
from .models import create_model
from .report import results_table
from .schedules import SCHEDULES
from .stages import TeacherFeatures, distill_step, supervised_step
from .taps import Taps, default_representation

__all__ = ["Pipeline", "load_data", "pick_device", "machine_info", "results_table"]


def _seed_for(seed: int, name: str) -> int:
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


def _cpu_state(module: nn.Module) -> dict:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


class Pipeline:
    def __init__(self, cfg: Config, out_dir, *, resume: bool = False, data=None, log=print):
        self.dist = init_distributed(cfg.device)
        self.main = self.dist.is_main  # rank 0 writes every file and evaluates
        self.cfg, self.out, self.resume = cfg, Path(out_dir), resume
        self.log = log if self.main else (lambda *a, **k: None)
        self.device = pick_device(cfg.device)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        if self.device.type == "cuda":  # fixed shapes: let cuDNN pick the fastest convolution once per shape
            torch.backends.cudnn.benchmark = True
        self._data = data
        self.models: dict[str, nn.Module] = {}
        self.banks: dict[str, FeatureBank] = {}  # teachers as per-sample features, aligned with the training set

    # ---- building -------------------------------------------------------------------------------
    def _build_models(self, train_set: ArrayDataset, only: list[str] | None = None) -> None:
        c, h, _ = train_set.shape
        kw = dict(num_classes=train_set.num_classes, in_channels=c, in_size=h)
        resolved: dict[str, tuple[str, float]] = {}

        def arch_of(name, seen=()):
            if name in seen:
                raise FlowKDError(f"model {name!r}: auxiliary_of forms a cycle")
            m = self.cfg.models[name]
            if m.auxiliary_of:
                base, width = arch_of(m.auxiliary_of, (*seen, name))
                return base, width * m.width
            return m.arch, m.width

        for name, m in self.cfg.models.items():
            if only is not None and name not in only:
                continue
            if m.features:
                self.banks[name] = load_features(m.features, m.representation).align(train_set)
                resolved[name] = ("features", 1.0)
                continue
            resolved[name] = arch_of(name)
            torch.manual_seed(_seed_for(self.cfg.seed, name))
            model = create_model(resolved[name][0], width=resolved[name][1], options=m.options, **kw)
            if m.weights:
                load_into(model, m.weights, f"model {name!r} ({resolved[name][0]} x{resolved[name][1]:g})")
            model = model.to(self.device)
            if self.cfg.fast.channels_last:
                model = model.to(memory_format=torch.channels_last)
            self.models[name] = model
        self.archs = resolved

    def teacher(self, name: str):
        """What a stage distils from: the model's features when they are precomputed, else the network."""
        return self.banks[name] if name in self.banks else self.models[name]

    def representation(self, name: str) -> str:
        if name in self.banks:
            tap = self.banks[name].representation
        else:
            tap = self.cfg.models[name].representation or default_representation(self.models[name])
        if not tap:
            raise FlowKDError(f"model {name!r} declares no representation tap: set models.{name}.representation")
        return tap

    def _pairs(self, s: StageConfig) -> list[tuple[str, str]]:
        if s.pairs:
            return [tuple(p) for p in s.pairs]
        if s.pairs_from == "representation":
            return [(self.representation(s.teacher), self.representation(s.model))]
        t = getattr(self.teacher(s.teacher), "flow_taps", None)
        st = getattr(self.models[s.model], "flow_taps", None)
        if not t or not st or len(t) != len(st):
            raise FlowKDError(f"stage {s.name!r}: pairs_from='flow' needs both models to declare the same number of flow_taps; give pairs explicitly")
        return list(zip(t, st))

    def _schedule(self, s: StageConfig):
        sc = s.schedule
        cls = SCHEDULES.get(sc.name)
        if sc.name == "critical_period":
            return cls(init=sc.init, decay=sc.decay, final=sc.final)
        if sc.name == "adaptive":
            return cls(init=sc.init, decay=sc.decay, tol=sc.tol, patience=sc.patience, final=sc.final)
        return cls(weight=sc.weight, final=sc.final)

    # ---- running --------------------------------------------------------------------------------
    def _prepare_dir(self) -> dict:
        state_path = self.out / "state.json"
        if self.out.exists() and any(self.out.iterdir()):
            if not self.resume:
                if state_path.exists() or (self.out / "results.json").exists():
                    raise FlowKDError(f"{self.out} already holds a run; use --resume to continue it or choose another --out")
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.dist.barrier()
        state = {"completed": {}}
        if self.resume and state_path.exists():
            state = json.loads(state_path.read_text())
            if state.get("config") != to_dict(self.cfg):
                raise FlowKDError(f"{self.out}: the config differs from the one the run started with; cannot resume")
        state["config"] = to_dict(self.cfg)
        return state

    @torch.no_grad()
    def _tap_shapes(self, name: str, specs) -> dict[str, tuple]:
        """Per-sample shapes of a model's taps, from a forward pass on two training images."""
        if name in self.banks:
            self.banks[name].check_taps(specs)
            return {k: v for k, v in self.banks[name].shapes().items() if k in specs}
        model = self.models[name]
        was = model.training
        model.eval()
        try:
            with Taps(model, specs) as taps:
                x = self.train_set.normalize(self.train_set.images[:2])
                return {k: tuple(v.shape[1:]) for k, v in taps(x)[1].items()}
        finally:
            model.train(was)

    def _flow(self, s: StageConfig) -> InformationFlowLoss:
        pairs = self._pairs(s)
        log_eps = s.log_eps if s.log_eps > 0 else None
        if s.loss == "pkt" and not s.loss_options:
            return InformationFlowLoss(pairs, self._schedule(s), s.kernel, s.divergence, log_eps)
        from .losses.baselines import make_pair_loss

        t_shapes = self._tap_shapes(s.teacher, [t for t, _ in pairs])
        s_shapes = self._tap_shapes(s.model, [st for _, st in pairs])
        opts = dict(s.loss_options)
        if s.loss == "pkt":
            opts = {"kernel": s.kernel, "divergence": s.divergence, "log_eps": log_eps, **opts}
        losses = [make_pair_loss(s.loss, t_shapes[t], s_shapes[st], **opts) for t, st in pairs]
        return InformationFlowLoss(pairs, self._schedule(s), pair_losses=losses, term=s.loss).to(self.device)

    def eval_models(self) -> list[str]:
        """The models evaluated: ``eval.models``, else every network (precomputed features have no test set)."""
        return self.cfg.eval.models or [n for n in self.cfg.models if n not in self.banks]

    def check(self) -> None:
        """Fail before any training on what can be checked up front: pairs, taps, kernels, schedules."""
        if self.cfg.fast.cuda_graph and self.device.type != "cuda":
            raise FlowKDError(f"fast.cuda_graph needs a CUDA device; this run's device is {self.device}")
        if self.cfg.fast.cuda_graph and self.dist.enabled:
            raise FlowKDError("fast.cuda_graph does not combine with distributed training; set fast.cuda_graph=false")
        for s in self.cfg.stages:
            if s.model not in self.models:  # a precomputed teacher's own stage, switched off (0 epochs)
                continue
            if s.kind == "distill":
                flow = self._flow(s)
                teacher = self.teacher(s.teacher)
                if isinstance(teacher, FeatureBank):
                    teacher.check_taps(flow.teacher_taps)
                else:
                    Taps(teacher, flow.teacher_taps).remove()
                Taps(self.models[s.model], flow.student_taps).remove()
            if sum(s.epochs) and not any(p.requires_grad for p in self.models[s.model].parameters()):
                raise FlowKDError(f"stage {s.name!r}: model {s.model!r} has no trainable parameters")
        for name in self.eval_models():
            Taps(self.models[name], [self.representation(name)]).remove()

    def _precompute(self) -> None:
        """``precompute = true`` teachers: their taps on the augmentation-free training images, computed once."""
        for name, m in self.cfg.models.items():
            if not m.precompute:
                continue
            specs = [t for s in self.cfg.stages if s.kind == "distill" and s.teacher == name for t, _ in self._pairs(s)]
            if not specs:
                continue
            t0 = time.perf_counter()
            bank = compute_features(self.models[name], specs, self.train_set, self.cfg.data.eval_batch_size)
            self.banks[name] = bank
            mib = sum(v.numel() * v.element_size() for v in bank.features.values()) / 2**20
            self.log(f"[{name}] precomputed {', '.join(bank.features)} for {len(bank)} images "
                     f"({mib:.1f} MiB on {self.device}) in {time.perf_counter() - t0:.1f}s")

    def _flow_probe(self, s: StageConfig, flow):
        """A function epoch -> flow.jsonl record: the trained model's per-tap QMI with the labels on a fixed
        probe subset and, for distill stages, each pair's loss on it (see flowkd.analysis)."""
        from .analysis import quadratic_mi
        from .data.load import stratified_index

        a = self.cfg.analysis
        where = torch.tensor(stratified_index(self.train_set, a.probe_size, self.cfg.seed + 7), device=self.device)
        probe = self.train_set.subset(where)
        x, y = probe.normalize(probe.images), probe.labels
        model, teacher = self.models[s.model], self.teacher(s.teacher) if s.kind == "distill" else None
        taps = list(dict.fromkeys([*getattr(model, "flow_taps", ()), *(flow.student_taps if flow else [])]))
        t_feats = {}
        if isinstance(teacher, FeatureBank):
            t_feats = teacher.lookup(where, flow.teacher_taps)
        elif teacher is not None:  # the teacher is frozen: its probe features and their MI are computed once
            frozen = TeacherFeatures(teacher, flow.teacher_taps)
            t_feats = frozen(x)
            frozen.remove()
        t_mi = {k: quadratic_mi(v, y, a.kernel) for k, v in t_feats.items()}

        @torch.no_grad()
        def record(epoch: int) -> dict:
            t0 = time.perf_counter()
            was = model.training
            model.eval()
            try:
                with Taps(model, taps) as tp:
                    feats = tp(x)[1]
            finally:
                model.train(was)
            rec = {"stage": s.name, "epoch": epoch, "model": s.model,
                   "mi": {k: quadratic_mi(v, y, a.kernel) for k, v in feats.items()}}
            if flow is not None:
                rec["teacher"], rec["teacher_mi"] = s.teacher, t_mi
                rec["weights"] = dict(zip(flow.names, flow.weights(epoch)))
                rec["divergence"] = {name: float(loss(t_feats[tt], feats[st]))
                                     for (tt, st), name, loss in zip(flow.pairs, flow.names, flow.pair_losses)}
            rec["time_s"] = round(time.perf_counter() - t0, 4)
            return rec

        return record

    def _partial_path(self, s: StageConfig) -> Path:
        return self.out / "checkpoints" / f"{s.name}.partial.pt"

    def _load_partial(self, s: StageConfig) -> dict | None:
        path = self._partial_path(s)
        if not (self.resume and path.exists()):
            return None
        try:
            return torch.load(path, map_location=self.device, weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise FlowKDError(f"cannot resume from {path}: {str(e).splitlines()[0]}") from None

    def run_stage(self, s: StageConfig, train_set: ArrayDataset, index: int) -> tuple[list[dict], dict]:
        """Train one stage; after every epoch its full state goes to ``<stage>.partial.pt`` so that
        ``--resume`` continues exactly where a killed run stopped."""
        model = self.models[s.model]
        fast = self.cfg.fast
        indexed = s.kind == "distill" and s.teacher in self.banks
        augment = s.augment if isinstance(s.augment, bool) else self.cfg.data.augment and not indexed
        if indexed and self.cfg.data.augment and s.augment == "auto":
            self.log(f"[{s.name}] teacher {s.teacher!r} is precomputed on the augmentation-free images: "
                     "this stage trains without augmentation (set augment = true to override)")
        loader = Loader(train_set, self.cfg.data.batch_size, shuffle=True, augment=augment,
                        seed=_seed_for(self.cfg.seed, s.name), channels_last=fast.channels_last,
                        rank=self.dist.rank, world=self.dist.world, with_index=indexed)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            model = DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if fast.compile:
            model = torch.compile(model)
        extra, flow = [], None
        if s.kind == "supervised":
            step = supervised_step(model)
            info = {"kind": "supervised"}
        else:
            flow = self._flow(s)
            gather = gather_rows if self.dist.enabled and self.cfg.distributed.gather_features else None
            step = distill_step(model, self.teacher(s.teacher), flow, s.ce_weight, fast.inference_teacher, gather)
            info = {"kind": "distill", "loss": s.loss, "pairs": flow.pairs, "schedule": repr(flow.schedule),
                    "augment": augment, "teacher_precomputed": indexed}
            extra = list(flow.parameters())  # e.g. FitNets regressors train with the student
        metrics = self.out / "metrics.jsonl"
        partial = self._load_partial(s)
        records: list[dict] = []
        resume = None
        if partial is not None:
            self.models[s.model].load_state_dict(partial["model"])
            if flow is not None:
                flow.load_state_dict(partial["flow"])
            torch.set_rng_state(partial["rng"].cpu())
            records = list(partial["records"])
            resume = {"epoch": partial["epoch"], "optimizer": partial["optimizer"]}
            self.log(f"[{s.name}] resuming after epoch {partial['epoch']}")

        adaptive = flow is not None and hasattr(flow.schedule, "observe")
        probe = self._flow_probe(s, flow) if (self.cfg.analysis.flow_log and self.main) or adaptive else None
        if adaptive:  # replay what a resumed stage had observed
            for r in records:
                flow.schedule.observe(r["flow_mi"])

        def on_epoch(rec):
            if probe is not None:
                info = probe(rec["epoch"])
                if adaptive:  # the schedule follows the student's intermediate layers (every rank: same probe)
                    inner = [info["mi"][st] for _, st in flow.pairs[:-1]]
                    rec["flow_mi"] = sum(inner) / max(len(inner), 1)
                    flow.schedule.observe(rec["flow_mi"])
                if self.cfg.analysis.flow_log and self.main:
                    append_jsonl(self.out / "flow.jsonl", info)
            records.append(rec)
            if self.main:
                append_jsonl(metrics, rec)

        def checkpoint(epoch, opt):
            if self.main:
                atomic_torch_save({"epoch": epoch, "model": _cpu_state(self.models[s.model]),
                                   "flow": _cpu_state(flow) if flow is not None else {},
                                   "optimizer": opt.state_dict(), "rng": torch.get_rng_state(),
                                   "records": records}, self._partial_path(s))

        try:
            train(model, loader, step, epochs=s.epochs, lr=s.lr, optimizer=s.optimizer,
                  params=list(model.parameters()) + extra,
                  weight_decay=s.weight_decay, fresh_optimizer_each_epoch=s.fresh_optimizer_each_epoch,
                  on_epoch=on_epoch, checkpoint=checkpoint, resume=resume, name=s.name,
                  show_progress=self.cfg.progress, autocast=torch.bfloat16 if fast.amp == "bf16" else None,
                  cuda_graph=fast.cuda_graph)
            return records, info
        finally:
            if hasattr(step, "close"):
                step.close()

    def export_features(self, name: str, taps: list[str], path) -> FeatureBank:
        """Write model ``name``'s taps on the whole training split (augmentation-free) to ``path`` (.npz or
        .safetensors), with the labels, for use as precomputed teacher features (``models.X.features``)."""
        if name not in self.cfg.models:
            raise FlowKDError(f"unknown model {name!r}; models: {', '.join(self.cfg.models)}")
        if self.cfg.models[name].features:
            raise FlowKDError(f"model {name!r} already is precomputed features ({self.cfg.models[name].features})")
        if self.cfg.data.train_subset:
            raise FlowKDError("features are exported for the whole training split: unset data.train_subset")
        from .features import save_features

        train_set, _ = self._data if self._data is not None else load_data(self.cfg)
        self.train_set = train_set = train_set.to(self.device)
        self._build_models(train_set, only=[name])
        taps = taps or [self.representation(name)]
        Taps(self.models[name], taps).remove()  # unknown names fail before any work
        m = self.cfg.models[name]
        if not m.weights and not m.options.get("pretrained") and any(True for _ in self.models[name].parameters()):
            import sys
            print(f"flowkd: warning: model {name!r} has parameters but no weights file: these are the features of its "
                  f"random initialisation (set models.{name}.weights, e.g. a run's checkpoints/<stage>.pt)", file=sys.stderr)
        bank = compute_features(self.models[name], taps, train_set, self.cfg.data.eval_batch_size)
        save_features(path, bank)
        return bank

    def run(self) -> dict:
        t_start = time.perf_counter()
        state = self._prepare_dir()
        if self.main:
            atomic_write_json(self.out / "config.json", to_dict(self.cfg))
        train_set, test_set = self._data if self._data is not None else load_data(self.cfg)
        train_set, test_set = train_set.to(self.device), test_set.to(self.device)
        self.train_set = train_set
        self._build_models(train_set)
        self.check()
        self._precompute()
        done = state["completed"]
        # keep the metrics of completed stages and of the completed epochs of a stage being resumed
        kept = [json.dumps(r) for name in done for r in done[name]["records"]]
        for s in self.cfg.stages:
            partial = self._load_partial(s) if s.name not in done else None
            if partial is not None:
                kept += [json.dumps(r) for r in partial["records"]]
        if self.main:
            atomic_write_text(self.out / "metrics.jsonl", "".join(line + "\n" for line in kept))
        stages = {}
        for i, s in enumerate(self.cfg.stages):
            if s.model not in self.models:  # the config allows this only at 0 epochs: nothing to train
                self.log(f"[{s.name}] skipped: model {s.model!r} is given as precomputed features")
                continue
            ckpt = self.out / "checkpoints" / f"{s.name}.{self.cfg.weights_format}"
            if s.name in done and ckpt.exists():
                self.models[s.model].load_state_dict(load_weights(ckpt))
                stages[s.name] = done[s.name]
                self.log(f"[{s.name}] resumed from {ckpt}")
                continue
            torch.manual_seed(_seed_for(self.cfg.seed, "train/" + s.name))
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
            t0 = time.perf_counter()
            records, info = self.run_stage(s, train_set, i)
            wall = time.perf_counter() - t0
            if not self.dist.same_everywhere(float(sum(p.detach().double().sum() for p in self.models[s.model].parameters())), self.device):
                raise FlowKDError(f"stage {s.name!r}: the ranks' weights disagree after training")
            if self.main:
                save_weights(_cpu_state(self.models[s.model]), ckpt)
            last = {k: v for k, v in records[-1].items() if k not in ("stage",)} if records else {}
            self.log(f"[{s.name}] {sum(s.epochs)} epochs in {wall:.1f}s; last: "
                     + ", ".join(f"{k}={v:.4g}" for k, v in last.items() if k in ("loss", "ce")))
            stages[s.name] = {**info, "model": s.model, "teacher": s.teacher, "epochs": int(sum(s.epochs)),
                              "wall_s": round(wall, 3), "last": last, "records": records}
            if self.device.type == "cuda":
                stages[s.name]["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
            done[s.name] = stages[s.name]
            if self.main:
                atomic_write_json(self.out / "state.json", state)
                self._partial_path(s).unlink(missing_ok=True)
        self.dist.barrier()
        if not self.main:
            self.dist.barrier()  # wait while rank 0 evaluates
            return {}
        results = self.evaluate(train_set, test_set, stages)
        results["total_wall_s"] = round(time.perf_counter() - t_start, 3)
        atomic_write_json(self.out / "results.json", results)
        atomic_write_text(self.out / "results.md", results_table(results))
        if self.dist.enabled:
            results["distributed"] = {"world": self.dist.world, "gather_features": self.cfg.distributed.gather_features}
            atomic_write_json(self.out / "results.json", results)
        self.dist.barrier()
        return results

    def evaluate(self, train_set, test_set, stages) -> dict:
        ev = self.cfg.eval
        # a classifier head is scored only where it was trained: the model's last stage used labels, or its
        # weights were loaded and no stage trained it afterwards
        last_stage = {s.model: s for s in self.cfg.stages}
        trained_on_labels = {n for n, s in last_stage.items() if s.kind == "supervised" or s.ce_weight > 0}
        trained_on_labels |= {n for n, m in self.cfg.models.items() if m.weights and n not in last_stage}
        models = {}
        t0 = time.perf_counter()
        for name in self.eval_models():
            t1 = time.perf_counter()
            models[name] = evaluate_representation(
                self.models[name], self.representation(name), train_set, test_set, metrics=ev.metrics,
                k=ev.k, head=name in trained_on_labels, legacy=ev.legacy, batch_size=self.cfg.data.eval_batch_size)
            models[name]["arch"], models[name]["width"] = self.archs[name]
            models[name]["label"] = self.cfg.models[name].label or name
            models[name]["params"] = sum(p.numel() for p in self.models[name].parameters())
            models[name]["eval_wall_s"] = round(time.perf_counter() - t1, 3)
        return {
            "title": self.cfg.title,
            "machine": machine_info(self.device),
            "data": {"name": self.cfg.data.name, "train": len(train_set), "test": len(test_set)},
            "stages": {k: {kk: vv for kk, vv in v.items() if kk != "records"} for k, v in stages.items()},
            "models": models,
            "eval_wall_s": round(time.perf_counter() - t0, 3),
        }
