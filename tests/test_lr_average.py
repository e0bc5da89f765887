"""Learning-rate annealing and weight averaging, against references written here."""

import math

import numpy as np
import pytest
import torch

from flowkd import SupervisedStep, train
from flowkd.data.arrays import ArrayDataset, Loader
from flowkd.errors import FlowKDError
from flowkd.loop import Trainer, lr_at
from flowkd.models import create_model


def test_cosine_anneal_falls_along_a_half_cosine_in_each_phase():
    assert [lr_at(e, [4], [1.0], "cosine") for e in range(4)] == pytest.approx(
        [1.0, (1 + math.cos(math.pi / 4)) / 2, 0.5, (1 + math.cos(3 * math.pi / 4)) / 2])
    # two phases: each starts again at its own rate
    assert [lr_at(e, [2, 2], [1.0, 0.1], "cosine") for e in range(4)] == pytest.approx([1.0, 0.5, 0.1, 0.05])
    assert [lr_at(e, [2, 2], [1.0, 0.1]) for e in range(4)] == [1.0, 1.0, 0.1, 0.1]


def _setup():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(200, 1, 8, 8)).astype(np.uint8)
    y = rng.integers(0, 10, 200)
    model = create_model("digits_cnn", in_channels=1, in_size=8)
    return model, SupervisedStep(model), Loader(ArrayDataset(x, y, [str(i) for i in range(10)]), 50, shuffle=True, seed=3)


def test_the_loop_sets_the_annealed_rate_each_epoch():
    model, step, loader = _setup()
    recs = train(model, loader, step, epochs=[3], lr=[1e-2], anneal="cosine", show_progress=False)
    assert [r["lr"] for r in recs] == pytest.approx([1e-2 * (1 + math.cos(math.pi * e / 3)) / 2 for e in range(3)])


def test_weight_averaging_ends_with_the_mean_of_the_last_epochs():
    model, step, loader = _setup()
    snaps = []  # the weights at the end of every epoch, before any averaging
    train(model, loader, step, epochs=[5], lr=[1e-2], average=3, show_progress=False,
          on_epoch=lambda rec: snaps.append({k: v.clone() for k, v in model.state_dict().items()}))
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            mean = sum(s[k].double() for s in snaps[-3:]) / 3  # an independent mean of the last three
            assert torch.allclose(v.double(), mean, atol=1e-6), k
        else:  # BatchNorm's batch counter: the last epoch's
            assert torch.equal(v, snaps[-1][k]), k
    assert not torch.equal(model.state_dict()["fc1.weight"], snaps[-1]["fc1.weight"])


def test_a_resumed_average_continues_exactly():
    model, step, loader = _setup()
    train(model, loader, step, epochs=[5], lr=[1e-2], average=3, show_progress=False)
    whole = {k: v.clone() for k, v in model.state_dict().items()}

    model, step, loader = _setup()
    saved = {}

    def checkpoint(trainer):
        if trainer.done == 2:  # killed after the first averaged epoch
            saved.update(trainer.state_dict())

    tr = Trainer(model, step, epochs=[5], lr=[1e-2], average=3, checkpoint=checkpoint)
    for e in range(3):
        loader.set_epoch(e)
        tr.begin(e)
        for b in loader:
            tr.batch(b)
        tr.end(e)
    model2, step2, loader2 = _setup()
    train(model2, loader2, step2, epochs=[5], lr=[1e-2], average=3, show_progress=False, resume=saved)
    for k, v in model2.state_dict().items():
        assert torch.equal(v, whole[k]), k


@pytest.mark.parametrize("kw, fragment", [({"anneal": "linear"}, "lr_anneal must be one of none, cosine"),
                                          ({"average": 6}, "average_last must be a whole number"),
                                          ({"restart": "stage"}, "restart must be one of never, phase, epoch")])
def test_bad_anneal_or_average_is_named(kw, fragment):
    model, step, _ = _setup()
    with pytest.raises(FlowKDError, match=fragment):
        Trainer(model, step, epochs=[5], lr=[1e-2], **kw)
