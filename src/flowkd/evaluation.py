"""Evaluate a network's representation: retrieval (test queries vs training database) and accuracy."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from . import retrieval
from .data.arrays import ArrayDataset, Loader
from .checks import is_shape_mismatch
from .errors import FlowKDError, first_line, warn
from .taps import default_representation, frozen_taps

__all__ = ["extract", "features_of", "accuracy", "ncm_accuracy", "evaluate_representation"]


@torch.no_grad()
def extract(model: nn.Module, data: ArrayDataset, tap: str, batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, D), model outputs (N, ...)) for ``data`` in order, in eval mode, no augmentation."""
    feats, outs = [], []
    with frozen_taps(model, [tap]) as taps:
        for x in (b.x for b in Loader(data, batch_size)):
            try:
                out, f = taps.run(x)
            except RuntimeError as e:
                if feats or not is_shape_mismatch(e):
                    raise
                raise FlowKDError(f"{type(model).__name__} cannot run on these {'x'.join(map(str, x.shape[1:]))} "
                                  f"images ({first_line(e, 160)}): was it built for other images (channels, "
                                  "size)?") from None
            feats.append(f[tap].float())
            outs.append(out.float() if isinstance(out, torch.Tensor) else torch.zeros(len(x), 0, device=x.device))
    return torch.cat(feats), torch.cat(outs)


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"


def features_of(model: nn.Module, data: ArrayDataset, tap: str = "", batch_size: int = 1024,
                normalize_like: ArrayDataset | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features (N, D), labels (N,))`` of ``data`` at ``tap`` (default: the model's representation), in eval
    mode without augmentation: what ``flowkd.retrieval.evaluate`` takes. ``normalize_like``: the training set,
    whose statistics a test set must be normalised with."""
    tap = tap or default_representation(model)
    if not tap:
        raise FlowKDError(f"{type(model).__name__} declares no representation: name a tap (see `flowkd layers`)")
    if normalize_like is not None:
        data = dataclasses.replace(data, mean=tuple(normalize_like.mean), std=tuple(normalize_like.std))
    return extract(model, data, tap, batch_size)[0], data.labels


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels.to(logits.device)).float().mean() * 100)


def ncm_accuracy(train_feats, train_labels, test_feats, test_labels) -> float:
    """Nearest-class-mean probe (cosine): a classifier-free accuracy for any representation."""
    train_labels = train_labels.to(train_feats.device)
    n_cls = int(train_labels.max()) + 1
    f = F.normalize(train_feats.float(), dim=1)
    means = torch.zeros(n_cls, f.shape[1], device=f.device).index_add_(0, train_labels, f)
    means = F.normalize(means, dim=1)
    pred = (F.normalize(test_feats.float(), dim=1) @ means.T).argmax(1)
    return float((pred == test_labels.to(pred.device)).float().mean() * 100)


def evaluate_representation(
    model: nn.Module,
    tap: str,
    train: ArrayDataset,
    test: ArrayDataset,
    *,
    metrics=("cosine", "euclidean"),
    k=(10, 100),
    head: bool = True,
    legacy: bool = True,
    batch_size: int = 1024,
) -> dict:
    """Retrieval mAP / P@k per metric, NCM-probe accuracy, and (``head``) the classifier's accuracy."""
    if tuple(test.mean) != tuple(train.mean) or tuple(test.std) != tuple(train.std):
        warn(f"the test images were normalised with their own statistics; using the training set's (mean "
             f"{_fmt(train.mean)}, std {_fmt(train.std)}), as the model saw in training")
        test = dataclasses.replace(test, mean=tuple(train.mean), std=tuple(train.std))
    db, _ = extract(model, train, tap, batch_size)
    qf, logits = extract(model, test, tap, batch_size)
    dropped = [x for x in k if x > len(train)]
    if dropped:
        warn(f"precision at k={', '.join(map(str, dropped))} skipped: the database has only {len(train)} images")
    k = [x for x in k if x <= len(train)]
    res: dict = {"tap": tap, "dim": int(db.shape[1])}
    for m in metrics:
        r = retrieval.evaluate(qf, test.labels, db, train.labels, metric=m, k=k, legacy=legacy)
        res[m] = r
    res["ncm_acc"] = ncm_accuracy(db, train.labels, qf, test.labels)
    if head and logits.dim() == 2 and logits.shape[1] == test.num_classes:
        res["head_acc"] = accuracy(logits, test.labels)
    return res
