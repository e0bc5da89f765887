"""A training step captured as a CUDA graph and replayed: one launch instead of hundreds (``fast.cuda_graph``).

``one_step`` is the one step function: the eager loop calls it per batch, and the graph path captures it.
"""

from __future__ import annotations

from typing import Callable

import torch

from .errors import FlowKDError, first_line
from .steps import Step
from .teachers import Batch

__all__ = ["StepGraph", "GraphSteps", "one_step"]


class StepGraph:
    """One training step captured as a CUDA graph and replayed: a single launch instead of hundreds.

    ``body()`` runs the step on static input buffers and returns its terms; capture records its kernels
    without running them, and each call replays them, overwriting the same output tensors. ``warm(fn)``
    runs an eager step on a side stream first, as capture requires.
    """

    def __init__(self, body: Callable[[], dict]):
        self.graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(self.graph):
                self.terms = body()
        except Exception as e:  # an op that cannot be captured (host sync, CPU tensor, ...)
            raise FlowKDError(f"fast.cuda_graph: the training step could not be captured as a CUDA graph "
                              f"({first_line(e)}); set fast.cuda_graph=false") from e

    def __call__(self) -> dict:
        self.graph.replay()
        return self.terms

    @staticmethod
    def warm(fn: Callable[[], dict]) -> dict:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            out = fn()
        torch.cuda.current_stream().wait_stream(side)
        return out


class GraphSteps:
    """Captured steps of one stage: one per batch shape, kept from epoch to epoch while nothing they have fixed
    changes (the optimiser object and the learning rate; the step's per-epoch values live in device memory the
    loop writes). A shape's first batch runs eagerly (warm-up; it also creates the gradients and the
    optimiser's state outside the capture: state first created inside it would be re-zeroed at every replay),
    then the step is captured on static buffers; the captured step zeroes the gradients in place and
    accumulates into them, so parameters the loss does not reach keep no gradient, as in the eager loop."""

    def __init__(self, graph_cls: type[StepGraph]):
        self.graph_cls, self.graphs, self.key = graph_cls, {}, None

    def begin(self, opt) -> None:
        key = (id(opt), opt.param_groups[0]["lr"])
        if key != self.key:
            self.graphs.clear()
            self.key = key

    def __call__(self, batch: Batch, step: Step, opt, ctx: Callable) -> dict:
        shape = tuple(batch.x.shape)
        if shape in self.graphs:
            graph, static = self.graphs[shape]
            for name, src in batch.tensors().items():
                static[name].copy_(src)
            return graph()

        def eager(b):  # gradients zeroed in place: the captured step reuses their memory
            return one_step(b, step, opt, ctx, set_to_none=False)

        terms = self.graph_cls.warm(lambda: eager(batch))
        static = {name: t.clone() for name, t in batch.tensors().items()}
        # the step runs on the static tensors, as a batch of their own (its memo: what the capture computes)
        self.graphs[shape] = (self.graph_cls(lambda s=static: eager(Batch(**s))), static)
        return terms


def one_step(batch: Batch, step: Step, opt, ctx: Callable, set_to_none: bool) -> dict:
    """Forward, backward and optimiser step on one batch; the terms with a detached loss (no autograd graph
    kept alive, e.g. into a capture)."""
    opt.zero_grad(set_to_none=set_to_none)
    with ctx():
        terms = step(batch)
    terms["loss"].backward()
    opt.step()
    return {**terms, "loss": terms["loss"].detach()}
