"""The per-epoch information-flow probe of a training stage: on a fixed, stratified set of training images
(no augmentation), the trained model's per-tap quadratic MI with the labels, and for a distillation stage
each pair's loss (see ``flowkd.analysis.mi``). Feeds ``flow.jsonl`` and the adaptive critical period."""

from __future__ import annotations

import time

import torch

from ..data.load import stratified_index
from ..taps import frozen_taps
from ..teachers import Batch
from .mi import quadratic_mi

__all__ = ["FlowProbe"]


class FlowProbe:
    """``probe(epoch) -> record`` for the model trained by ``stage`` (a ``flowkd.stages.Stage``)."""

    def __init__(self, stage, train_set, *, size: int, seed: int, kernel: str = "gaussian"):
        self.stage, self.kernel = stage, kernel
        device = train_set.images.device
        self.where = torch.tensor(stratified_index(train_set, size, seed), device=device)
        probe = train_set.subset(self.where)
        self.x, self.y = probe.normalize(probe.images), probe.labels
        flow = stage.flow
        self.taps = list(dict.fromkeys([*getattr(stage.model, "flow_taps", ()), *(flow.student_taps if flow else [])]))
        self.t_feats = {}
        if stage.teacher is not None:  # the teacher is frozen: its probe features and their MI are computed once
            with torch.no_grad():
                self.t_feats = dict(stage.teacher(Batch(self.x, self.y, index=self.where)))
        self.t_mi = {k: quadratic_mi(v, self.y, kernel) for k, v in self.t_feats.items()}

    @torch.no_grad()
    def __call__(self, epoch: int) -> dict:
        t0 = time.perf_counter()
        s = self.stage
        with frozen_taps(s.model, self.taps) as taps:
            feats = taps(self.x)
        rec = {"stage": s.name, "epoch": epoch, "model": s.model_name,
               "mi": {k: quadratic_mi(v, self.y, self.kernel) for k, v in feats.items()}}
        flow = s.flow
        if flow is not None:
            rec["teacher"], rec["teacher_mi"] = s.teacher_name, self.t_mi
            rec["weights"] = dict(zip(flow.names, flow.weights(epoch)))
            terms = flow(self.t_feats, feats, epoch)  # each pair's loss as the flow computes it (teachers averaged)
            rec["divergence"] = {name: float(terms[f"{term}/{name}"]) for name, term in zip(flow.names, flow.terms)}
        rec["time_s"] = round(time.perf_counter() - t0, 4)
        return rec

    def intermediate_mi(self, record: dict) -> float:
        """The mean MI of the student's intermediate taps (what the adaptive critical period follows)."""
        inner = [record["mi"][st] for _, st in self.stage.flow.pairs[:-1]]
        return sum(inner) / max(len(inner), 1)
