"""The CUDA-graph training loop (``fast.cuda_graph``): one captured step per batch shape, replayed per batch.

On CPU the graph path's bookkeeping (static buffers, persistent gradients and optimiser state, the eager
first and last batches, the per-epoch values written into device memory, re-capture for a new learning rate)
runs with ``PlainStep`` (a test double, below) in place of the capture and must give bit-identical training
to the eager loop. On a CUDA machine the real capture is compared with the eager loop to a tolerance.
"""

import numpy as np
import pytest
import torch

from flowkd import CriticalPeriod, DistillStep, InformationFlowLoss, SupervisedStep, train
from flowkd.cli import main
from flowkd.data.arrays import ArrayDataset, Loader
from flowkd.graphs import StepGraph
from flowkd.models import create_model


class PlainStep(StepGraph):
    """The graph path's bookkeeping without a capture: "capture" keeps the step on its static buffers and each
    "replay" runs it again on them (what a CUDA graph does, minus the kernels' recording)."""

    def __init__(self, body):
        self.body = body

    def __call__(self):
        return self.body()

    @staticmethod
    def warm(fn):
        return fn()

PAIRS = [("pool1", "pool1"), ("pool2", "pool2"), ("pool3", "pool3"), ("fc1_relu", "fc1_relu")]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _data(device, n=300):
    g = np.random.default_rng(0)
    images = g.integers(0, 256, (n, 1, 8, 8), dtype=np.uint8)
    labels = g.integers(0, 10, n)
    return ArrayDataset(images, labels, [str(c) for c in range(10)], (0.5,), (0.25,)).to(device)


def _run(graph, *, device="cpu", kind="distill", optimizer="adam", fresh=False, epochs=(2, 1), autocast=None,
         channels_last=False, ce=0.5):
    torch.manual_seed(0)
    teacher = create_model("digits_cnn", in_channels=1, in_size=8, width=2.0).to(device)
    student = create_model("digits_cnn", in_channels=1, in_size=8).to(device)
    if channels_last:
        teacher, student = (m.to(memory_format=torch.channels_last) for m in (teacher, student))
    data = _data(device)
    loader = Loader(data, 64, shuffle=True, augment=True, pad=1, seed=3, channels_last=channels_last)  # 4 full batches + one of 44
    if kind == "distill":
        flow = InformationFlowLoss(PAIRS, CriticalPeriod(init=10.0, decay=0.5))
        step = DistillStep(student, teacher, flow, ce_weight=ce)
    else:
        step = SupervisedStep(student)
    recs = train(student, loader, step, epochs=list(epochs), lr=[1e-2, 1e-3][:len(epochs)], optimizer=optimizer,
                 restart="epoch" if fresh else "never", show_progress=False, autocast=autocast, cuda_graph=graph)
    if hasattr(step, "close"):
        step.close()
    return recs, {k: v.detach().float().cpu() for k, v in student.named_parameters()}


@pytest.mark.parametrize("kind, optimizer, fresh, ce", [
    ("distill", "adam", False, 0.5),
    ("distill", "adam", True, 0.5),    # paper mode: a fresh Adam every epoch
    ("distill", "adam", False, 0.0),   # the classifier gets no gradient and must stay untouched
    ("supervised", "sgd", False, 0.0),
])
def test_graph_bookkeeping_trains_exactly_like_the_eager_loop(kind, optimizer, fresh, ce):
    eager, w_eager = _run(False, kind=kind, optimizer=optimizer, fresh=fresh, ce=ce)
    graphed, w_graph = _run(PlainStep, kind=kind, optimizer=optimizer, fresh=fresh, ce=ce)
    assert len(eager) == len(graphed) == 3
    for a, b in zip(eager, graphed):
        assert a.keys() == b.keys()
        for k in a:
            if k != "time_s":
                assert a[k] == b[k], (k, a[k], b[k])
    for k in w_eager:
        assert torch.equal(w_eager[k], w_graph[k]), k
    # and training did happen: the schedule's weights moved between epochs
    if kind == "distill":
        assert eager[0]["w/pool1~pool1"] == 10.0 and eager[1]["w/pool1~pool1"] == 5.0


class CountingStep(PlainStep):
    captures = 0

    def __init__(self, body):
        super().__init__(body)
        CountingStep.captures += 1


@pytest.mark.parametrize("kind, fresh, captures", [
    ("distill", False, 4),     # shapes 64 and 44, captured in epoch 0, replayed in epoch 1 (new weights in device
                               # memory), captured again in epoch 2 for its new learning rate
    ("distill", True, 4),      # a fresh Adam every epoch: its state is zeroed in place, the capture stays
    ("supervised", False, 4),
])
def test_a_captured_step_serves_epochs_until_what_it_fixed_changes(kind, fresh, captures):
    CountingStep.captures = 0
    recs, _ = _run(CountingStep, kind=kind, fresh=fresh)
    assert CountingStep.captures == captures
    eager, _ = _run(False, kind=kind, fresh=fresh)
    assert [r["loss"] for r in recs] == [r["loss"] for r in eager]


class ScaledStep:
    """A user's step with a per-epoch value of its own (a loss scale): written in place at each epoch's start,
    a capture reads it."""

    def __init__(self, model):
        self.base = SupervisedStep(model)
        self.scale = torch.ones(1)

    def begin_epoch(self, epoch, records=()):
        self.scale.fill_(epoch + 1.0)

    def __call__(self, batch):
        return {"loss": self.base(batch)["loss"] * self.scale[0]}


def test_a_user_step_with_a_per_epoch_value_is_captured_once_per_shape():
    def run(graph):
        torch.manual_seed(0)
        student = create_model("digits_cnn", in_channels=1, in_size=8)
        loader = Loader(_data("cpu"), 64, shuffle=True, seed=3)
        return train(student, loader, ScaledStep(student), epochs=[3], lr=[1e-2], show_progress=False, cuda_graph=graph)

    CountingStep.captures = 0
    graphed = run(CountingStep)
    assert CountingStep.captures == 2  # two batch shapes, one learning rate, three epochs
    eager = run(False)
    assert [r["loss"] for r in graphed] == [r["loss"] for r in eager]
    # the scale did change the loss from epoch to epoch (3x at epoch 2): the buffer was written each epoch
    assert eager[2]["loss"] > 2 * eager[0]["loss"] * 0.5


def test_graph_path_needs_a_cuda_device(tmp_path, capsys):
    from importlib import resources

    cfg = resources.files("flowkd").joinpath("configs/digits_demo.toml")
    code = main(["run", str(cfg), "--out", str(tmp_path / "r"), "--no-progress", "--set", "device=cpu",
                 "--set", "fast.cuda_graph=true"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "fast.cuda_graph needs a CUDA device" in err[0]
    assert not (tmp_path / "r" / "results.json").exists()


def test_graph_and_compile_are_alternatives(tmp_path, capsys):
    from importlib import resources

    cfg = resources.files("flowkd").joinpath("configs/digits_demo.toml")
    code = main(["run", str(cfg), "--out", str(tmp_path / "r"), "--no-progress",
                 "--set", "fast.cuda_graph=true", "--set", "fast.compile=true"])
    assert code == 2 and "alternatives" in capsys.readouterr().err


@cuda
@pytest.mark.parametrize("kind, fresh", [("distill", False), ("distill", True), ("supervised", False)])
def test_captured_step_matches_eager_on_cuda(kind, fresh):
    torch.backends.cudnn.deterministic = True
    eager, w_eager = _run(False, device="cuda", kind=kind, fresh=fresh)
    graphed, w_graph = _run(True, device="cuda", kind=kind, fresh=fresh)
    for a, b in zip(eager, graphed):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-6)
        assert {k: v for k, v in b.items() if k.startswith("w/")} == {k: v for k, v in a.items() if k.startswith("w/")}
    for k in w_eager:  # a conv bias under BatchNorm gets rounding-noise gradients only, which Adam turns into
        if not (k.startswith("conv") and k.endswith(".bias")):  # lr-sized steps of random sign (and BN's running mean follows)
            # Adam's first steps move each weight by about lr (1e-2) whatever its gradient's size, so rounding-level
            # gradients differ by up to that; a fresh Adam every epoch (paper mode) has such first steps each epoch
            torch.testing.assert_close(w_graph[k], w_eager[k], rtol=1e-3, atol=5e-3 if fresh else 1e-3)


@cuda
def test_captured_step_with_bf16_channels_last_and_indices_on_cuda():
    eager, _ = _run(False, device="cuda", autocast=torch.bfloat16, channels_last=True)
    graphed, _ = _run(True, device="cuda", autocast=torch.bfloat16, channels_last=True)
    for a, b in zip(eager, graphed):
        assert b["loss"] == pytest.approx(a["loss"], rel=0.05)
    assert all(np.isfinite(r["loss"]) for r in graphed)


@cuda
def test_pipeline_runs_with_cuda_graph(tmp_path):
    import json
    from importlib import resources

    cfg = resources.files("flowkd").joinpath("configs/digits_demo.toml")
    assert main(["run", str(cfg), "--out", str(tmp_path / "r"), "--no-progress", "--set", "device=cuda",
                 "--set", "fast.cuda_graph=true", "--set", "fast.amp=bf16"]) == 0
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    assert all(m["cosine"]["map"] > 20 for m in res["models"].values())


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_restarting_the_optimiser_in_place_equals_a_new_optimiser_each_epoch_with_resume(optimizer):
    """Paper mode zeroes the optimiser's state each epoch (so a captured step keeps its memory); that must be
    exactly a brand-new optimiser per epoch, which resuming a paper-mode run one epoch at a time gives."""
    def setup():
        torch.manual_seed(0)
        student = create_model("digits_cnn", in_channels=1, in_size=8)
        return student, SupervisedStep(student), Loader(_data("cpu"), 64, shuffle=True, augment=True, pad=1, seed=3)

    student, step, loader = setup()
    kw = dict(lr=[1e-2], optimizer=optimizer, restart="epoch", show_progress=False)
    once = train(student, loader, step, epochs=[3], **kw)
    reference, step2, loader2 = setup()
    saved = {}
    for e in range(3):  # one epoch per call, each with a new optimiser
        each = train(reference, loader2, step2, epochs=[e + 1], resume=saved.get("state"),
                     checkpoint=lambda t: saved.update(state=t.state_dict()), **kw)
    assert [r["loss"] for r in once] == [r["loss"] for r in each]
    for (k, a), b in zip(student.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), k


def _explicit(model, loader, step, optimizers: list, lr_of: list):
    """The reference: a plain loop over epochs; ``optimizers[e]`` is the optimiser object epoch e uses (the
    same object for consecutive epochs = one optimiser kept; a new object = a fresh optimiser)."""
    losses = []
    for e, (opt, lr) in enumerate(zip(optimizers, lr_of)):
        for g in opt.param_groups:
            g["lr"] = lr
        loader.set_epoch(e)
        model.train()
        total, n = 0.0, 0
        for batch in loader:
            opt.zero_grad()
            loss = step(batch)["loss"]
            loss.backward()
            opt.step()
            total, n = total + loss.item(), n + 1
        losses.append(total / n)
    return losses


@pytest.mark.parametrize("restart, new_at", [
    ("never", [0]),              # one optimiser for the stage
    ("phase", [0, 2]),           # the reference code's auxiliary stages: a new Adam when the rate changes
    ("epoch", [0, 1, 2, 3, 4]),  # the reference code's student: a new Adam every epoch
])
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_optimiser_restarts_match_an_explicit_optimiser_sequence(restart, new_at, optimizer):
    epochs, lrs = [2, 3], [1e-2, 1e-3]

    def setup():
        torch.manual_seed(0)
        student = create_model("digits_cnn", in_channels=1, in_size=8)
        return student, SupervisedStep(student), Loader(_data("cpu"), 64, shuffle=True, augment=True, pad=1, seed=3)

    student, step, loader = setup()
    got = train(student, loader, step, epochs=epochs, lr=lrs, optimizer=optimizer, restart=restart, show_progress=False)
    ref_model, ref_step, ref_loader = setup()
    make = {"adam": lambda: torch.optim.Adam(ref_model.parameters(), lr=1.0),
            "sgd": lambda: torch.optim.SGD(ref_model.parameters(), lr=1.0, momentum=0.9, nesterov=True)}[optimizer]
    sequence, current = [], None
    for e in range(5):
        if e in new_at:
            current = make()
        sequence.append(current)
    want = _explicit(ref_model, ref_loader, ref_step, sequence, [1e-2, 1e-2, 1e-3, 1e-3, 1e-3])
    assert [r["loss"] for r in got] == pytest.approx(want, rel=1e-6)  # float32 vs float64 epoch means
    for (k, a), b in zip(student.state_dict().items(), ref_model.state_dict().values()):
        assert torch.equal(a, b), k
