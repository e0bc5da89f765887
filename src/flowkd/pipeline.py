"""One pipeline for every experiment: resolve data and models, build every stage, run them in order,
evaluate, report. The pieces live below it: ``runmodels`` (data, device, models), ``stages`` (a stage as
a value), ``loop`` (training), ``rundir`` (files and resume), ``analysis.probe`` (per-epoch flow analysis).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import time

import torch
from torch import nn

from .analysis.probe import FlowProbe
from .compiled import compile_or_eager
from .config import Config, stage_teachers, to_dict
from .data.arrays import ArrayDataset
from .distributed import init_distributed
from .errors import FlowKDError, warn
from .cost import model_cost
from .evaluation import evaluate_representation
from .threads import apply_threads
from .cohort import cohorts, shared_teachers, train_cohort, worker_plan
from .trainer import Trainer
from .report import results_table
from .rundir import RunDir
from .runmodels import RunModels, load_data, machine_info, pick_device
from .stages import Context, Stage, build_stage, teacher_reads

__all__ = ["Pipeline", "load_data", "pick_device", "machine_info", "results_table"]


class Pipeline:
    def __init__(self, cfg: Config, out_dir, *, resume: bool = False, data=None, log=print):
        self.dist = init_distributed(cfg.device)
        self.main = self.dist.is_main  # rank 0 writes every file and evaluates
        self.cfg, self.resume, self._data = cfg, resume, data
        self.log = log if self.main else (lambda *a, **k: None)
        self.device = pick_device(cfg.device)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        if self.device.type == "cuda":  # fixed shapes: let cuDNN pick the fastest convolution once per shape
            torch.backends.cudnn.benchmark = True
        self.rundir = RunDir(out_dir, to_dict(cfg), resume=resume, weights_format=cfg.weights_format, writer=self.main)
        self._forward: dict[str, nn.Module] = {}

    # ---- building -------------------------------------------------------------------------------
    def load(self, only: list[str] | None = None) -> tuple[ArrayDataset, ArrayDataset]:
        """The data on the device and the models of the config (``self.run``)."""
        train_set, test_set = self._data if self._data is not None else load_data(self.cfg)
        train_set, test_set = train_set.to(self.device), test_set.to(self.device)
        self.run_models = RunModels(self.cfg, train_set, self.device, only)
        return train_set, test_set

    def _forward_module(self, name: str) -> nn.Module:
        """A model's forward module for training: itself, or its DDP / compiled wrapper (one per model)."""
        if name not in self._forward:
            model = self.run_models.models[name]
            if self.dist.enabled:
                from torch.nn.parallel import DistributedDataParallel

                model = DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if self.cfg.fast.compile:
                model = compile_or_eager(model, self.device, self.log)  # eager, with one line, without a C++ compiler
            self._forward[name] = model
        return self._forward[name]

    def build(self) -> list[Stage]:
        """Every stage, built once; fails before any training on what can be checked up front (pairs, taps,
        options, schedules). Precomputed teachers (``precompute = true``) are computed here."""
        cfg, run = self.cfg, self.run_models
        if cfg.fast.cuda_graph and self.device.type != "cuda":
            raise FlowKDError(f"fast.cuda_graph needs a CUDA device; this run's device is {self.device}")
        if cfg.fast.cuda_graph and self.dist.enabled:
            raise FlowKDError("fast.cuda_graph does not combine with distributed training; set fast.cuda_graph=false")
        worker_plan(cfg.fast.student_workers, 2, self.device)  # a bad value fails here, before any training
        for name in run.eval_models():
            run.tap_shapes(name, [run.representation(name)])
        n = len(run.train_set)
        if cfg.stages and cfg.data.batch_size > n:
            warn(f"data.batch_size {cfg.data.batch_size} is larger than the {n} training images: "
                 "every epoch is a single batch of all of them")
        self._warn_untrained_teachers()
        last = n % cfg.data.batch_size
        if not cfg.data.drop_last and 0 < last < cfg.data.batch_size / 4 and any(s.kind == "distill" for s in cfg.stages):
            warn(f"each epoch ends with a batch of only {last} images ({n} training images, batch_size "
                 f"{cfg.data.batch_size}): similarity losses over so few samples (PKT, SP) are noise that can ruin a "
                 "student; set data.drop_last = true (or another batch_size)")
        for name, m in cfg.models.items():
            specs = [t for s in cfg.stages if s.kind == "distill" for t in teacher_reads(s, run).get(name, [])]
            if m.precompute and specs:
                run.precompute(name, specs, self.log)
        ctx = Context(cfg, run, self._forward_module, rank=self.dist.rank, world=self.dist.world, log=self.log)
        stages = []
        try:
            for s in cfg.stages:
                if s.model in run.models:  # else: a precomputed teacher's own stage, switched off (0 epochs)
                    stages.append(build_stage(s, ctx))
        except BaseException:
            for st in stages:
                st.close()
            raise
        return stages

    def _warn_untrained_teachers(self) -> None:
        """A network that teaches a stage but has no weights and no training before it learns from noise."""
        cfg, run = self.cfg, self.run_models
        trained: set[str] = {n for n, m in cfg.models.items() if m.weights or m.options.get("pretrained")}
        for i, s in enumerate(cfg.stages):
            for t in stage_teachers(s):
                if t not in run.models or t in trained or not any(True for _ in run.models[t].parameters()):
                    continue
                before = [o.name for o in cfg.stages[:i] if o.model == t]
                later = [o.name for o in cfg.stages[i + 1:] if o.model == t and sum(o.epochs)]
                why = (f"its stage(s) {', '.join(before)} before this one train 0 epochs" if before else
                       f"it trains only later, in {', '.join(later)}" if later else "no stage trains it")
                warn(f"stage {s.name!r} learns from model {t!r}, which has no weights and no training before it "
                     f"({why}; no models.{t}.weights): a randomly initialised teacher")
            if sum(s.epochs):
                trained.add(s.model)

    # ---- running --------------------------------------------------------------------------------
    def _trainer(self, stage: Stage, partial: dict | None = None) -> Trainer:
        """The stage's trainer, resumed from ``partial`` (what ``<stage>.partial.pt`` holds, when a killed run
        left one: the trainer's state after an epoch, saved every ``checkpoint_s`` seconds of training), so that
        ``--resume`` continues exactly where the run stopped."""
        cfg, rundir, flow = self.cfg, self.rundir, stage.flow
        # the adaptive schedule follows the student's intermediate layers (every rank: same probe)
        adaptive = flow is not None and flow.follows == "flow_mi"
        a = cfg.analysis
        probe = (FlowProbe(stage, self.run_models.train_set, size=a.probe_size, seed=cfg.seed + 7, kernel=a.kernel)
                 if (a.flow_log and self.main) or adaptive else None)

        def on_epoch(rec):
            if probe is not None:
                info = probe(rec["epoch"])
                if adaptive:
                    rec["flow_mi"] = probe.intermediate_mi(info)
                if a.flow_log:
                    rundir.log_flow(info)
            rundir.log_metrics(rec)

        p, fast = stage.plan, cfg.fast
        tr = Trainer(stage.forward, stage.step, epochs=p.epochs, lr=p.lr, optimizer=p.optimizer,
                     weight_decay=p.weight_decay, restart=p.restart, params=stage.params, on_epoch=on_epoch,
                     checkpoint=lambda t: rundir.save_partial(stage.name, t.state_dict()), name=stage.name,
                     autocast=self._autocast(), cuda_graph=fast.cuda_graph,
                     anneal=p.anneal, average=p.average, loss=flow, checkpoint_s=cfg.checkpoint_s)
        if partial is not None:
            tr.load_state_dict(partial)
            self.log(f"[{stage.name}] resuming after epoch {partial['epoch']}")
        return tr

    def _autocast(self) -> torch.dtype | None:
        """The precision the training steps (and the cohort's shared teacher passes) run under: ``fast.amp``."""
        return torch.bfloat16 if self.cfg.fast.amp == "bf16" else None

    def train_group(self, group: list[Stage], partials: dict | None = None
                    ) -> tuple[list[Trainer], dict[str, FlowKDError], dict]:
        """Train a cohort (or a single stage) in one pass over the data, resuming the stages found in
        ``partials``: its trainers, the errors of the stages that failed (a failure of a single stage is
        raised) and how the pass ran (students side by side, threads each, the load average at its start)."""
        partials = partials or {}
        group[0].seed(self.cfg.seed)
        fast = self.cfg.fast
        share = len(group) > 1 and not fast.cuda_graph
        chosen = apply_threads(fast.threads, self.device, self.log)  # the cores other processes leave free
        # students side by side: not with collectives (each rank's students would meet them in any order)
        workers, threads = worker_plan(fast.student_workers if not self.dist.enabled else 1, len(group), self.device)
        # how this pass ran, for the stages' info: wall times are comparable only between like settings
        how = {"workers": workers, "threads_per_worker": threads, "threads_by": chosen["why"],
               "load_avg": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None}
        with (shared_teachers(group, fast.inference_teacher, self._autocast()) if share
              else contextlib.nullcontext([])) as shared:
            trainers = [self._trainer(st, partials.get(st.name)) for st in group]
            errors = train_cohort(group[0].loader, trainers, show_progress=self.cfg.progress, workers=workers,
                                  threads=threads, teachers=shared, log=self.log)
        if len(group) == 1 and errors:
            raise next(iter(errors.values()))
        return trainers, errors, how

    def run(self) -> dict:
        try:
            return self._run()
        finally:
            self.rundir.release()  # the run folder's lock (taken when it opens)

    def _run(self) -> dict:
        t_start = time.perf_counter()
        if not self.cfg.models:
            raise FlowKDError("the config defines no [models.NAME]: nothing to train or evaluate "
                              "(see `flowkd init` or the configs/ folder for complete examples)")
        rundir = self.rundir
        rundir.check()
        train_set, test_set = self.load()
        stages = self.build()
        failed: dict[str, FlowKDError] = {}
        try:
            if self.main:
                self.run_models.ensure_banks(self.log)  # the banked teachers' views: computed once, reused
            self.dist.barrier()
            state = rundir.open(self.dist.barrier)
            done = state["completed"]
            # keep the metrics of completed stages and of the completed epochs of a stage being resumed
            kept = [r for name in done for r in done[name]["records"]]
            partials = {st.name: p for st in stages if st.name not in done
                        and (p := rundir.load_partial(st.name, self.device)) is not None}
            kept += [r for p in partials.values() for r in p["records"]]
            rundir.reset_metrics(kept)
            infos, pending = {}, []
            for name in {s.name for s in self.cfg.stages} - {st.name for st in stages}:
                self.log(f"[{name}] skipped: its model is given as precomputed features")
            for st in stages:
                info = rundir.load_completed(st.name, st.model)
                if info is not None:
                    self.log(f"[{st.name}] resumed from {rundir.checkpoint_path(st.name)}")
                    infos[st.name] = info
                else:
                    pending.append(st)
            for group in cohorts(pending) if self.cfg.cohort else [[st] for st in pending]:
                broken = self._failed_models(stages, failed)
                if any(set(st.learns_from) & broken or st.model_name in broken for st in group):
                    raise next(iter(failed.values()))  # a later stage needs what the failed one trains
                infos.update(self._run_group(group, failed, partials))
        finally:
            for st in stages:
                st.close()
        self.dist.barrier()
        if not self.main:
            self.dist.close()  # its barrier waits while rank 0 evaluates
            return {}
        results = self.evaluate(train_set, test_set, infos, stages, skip=self._failed_models(stages, failed))
        results["total_wall_s"] = round(time.perf_counter() - t_start, 3)
        if self.dist.enabled:
            results["distributed"] = {"world": self.dist.world, "gather_features": self.cfg.distributed.gather_features}
        if failed:
            results["failed"] = {k: str(v) for k, v in failed.items()}
        rundir.write_results(results, results_table(results))
        self.dist.close()  # the other ranks wait in its barrier until the results are written
        if failed:  # the other students' results are written; the run still ends with the failure's one line
            raise next(iter(failed.values()))
        return results

    @staticmethod
    def _failed_models(stages: list[Stage], failed: dict) -> set[str]:
        return {st.model_name for st in stages if st.name in failed}

    def _run_group(self, group: list[Stage], failed: dict, partials: dict) -> dict:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        trainers, errors, how = self.train_group(group, partials)
        infos = {}
        for st, tr in zip(group, trainers):
            if st.name in errors:
                self.log(f"[{st.name}] failed: {errors[st.name]}")
                failed[st.name] = errors[st.name]
                continue
            checksum = float(sum(p.detach().double().sum() for p in st.model.parameters()))
            if not self.dist.same_everywhere(checksum, self.device):
                raise FlowKDError(f"stage {st.name!r}: the ranks' weights disagree after training")
            records = tr.records
            last = {k: v for k, v in records[-1].items() if k != "stage"} if records else {}
            self.log(f"[{st.name}] {sum(st.plan.epochs)} epochs in {tr.train_s:.1f}s"
                     + (f" (a cohort of {len(group)})" if len(group) > 1 else "") + "; last: "
                     + ", ".join(f"{k}={v:.4g}" for k, v in last.items() if k in ("loss", "ce")))
            info = {**st.info, "model": st.model_name, "teacher": st.teacher_name, "epochs": int(sum(st.plan.epochs)),
                    "wall_s": round(tr.train_s, 3), "last": last, "records": records,
                    "trained_on": {**how, "resumed": st.name in partials}}
            if len(group) > 1:
                info["cohort"] = [m.name for m in group]
            if self.device.type == "cuda":
                info["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
            # whether the classifier head learnt from labels here: `flowkd eval` reports its accuracy only then
            self.rundir.complete(st.name, st.model, info, {"head_trained": str(st.trains_head).lower()})
            infos[st.name] = info
        return infos

    def evaluate(self, train_set, test_set, stages: dict, built: list[Stage], skip=()) -> dict:
        ev, run = self.cfg.eval, self.run_models
        # a classifier head is scored only where it was trained: the model's last stage used labels, or its
        # weights were loaded and no stage trained it afterwards
        last_stage = {st.model_name: st for st in built}
        trained_on_labels = {n for n, st in last_stage.items() if st.trains_head}
        trained_on_labels |= {n for n, m in self.cfg.models.items() if m.weights and n not in last_stage}
        models = {}
        t0 = time.perf_counter()
        for name in [n for n in run.eval_models() if n not in skip]:  # a failed stage's model is not evaluated
            t1 = time.perf_counter()
            models[name] = evaluate_representation(
                run.models[name], run.representation(name), train_set, test_set, metrics=ev.metrics,
                k=ev.k, head=name in trained_on_labels, legacy=ev.legacy, batch_size=self.cfg.data.eval_batch_size)
            models[name]["arch"], models[name]["width"] = run.archs[name]
            models[name]["label"] = self.cfg.models[name].label or name
            if self.cfg.models[name].paper:  # the paper's figures, as the reference evaluator counts them
                models[name]["paper"] = dict(self.cfg.models[name].paper)
            models[name]["params"] = sum(p.numel() for p in run.models[name].parameters())
            if ev.cost != "none":  # what the model costs to run (flowkd.cost): params, MACs, size, CPU latency
                full = ev.cost == "full"
                models[name]["cost"] = model_cost(run.models[name], train_set.shape, latency=full, budget_s=ev.cost_budget_s,
                                                  onnx=full and importlib.util.find_spec("onnxruntime") is not None)
            models[name]["eval_wall_s"] = round(time.perf_counter() - t1, 3)
        return {
            "title": self.cfg.title,
            "machine": machine_info(self.device),
            "data": {"name": self.cfg.data.name, "train": len(train_set), "test": len(test_set)},
            "stages": {k: {kk: vv for kk, vv in v.items() if kk != "records"} for k, v in stages.items()},
            "models": models,
            "eval_wall_s": round(time.perf_counter() - t0, 3),
        }


def build_banks(cfg: Config, *, data=None, log=print) -> dict:
    """Compute every bank of teacher views the config's stages read (``models.<teacher>.views``) that is not on disk
    yet, without training (``flowkd bank``); returns the banks by teacher."""
    device = pick_device(cfg.device)
    train_set, _ = data if data is not None else load_data(cfg)
    run = RunModels(cfg, train_set.to(device), device)
    ctx = Context(cfg, run, lambda name: run.models[name], log=log)
    stages = []
    try:
        for s in cfg.stages:
            if any(cfg.models[t].views for t in stage_teachers(s)) and s.model in run.models and sum(s.epochs):
                stages.append(build_stage(s, ctx))
    finally:
        for st in stages:
            st.close()
    if not run.bank_wants:
        raise FlowKDError("no stage of this config reads a bank of views: give its teacher models.<name>.views = K")
    run.ensure_banks(log)
    return run.view_banks
