"""Taps: hook-based intermediate outputs by module name, checked against running the submodules by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flowkd.errors import FlowKDError
from flowkd.taps import Taps, layer_shapes, parse_tap


class Net(nn.Module):
    """A small conv net with a nested ``features`` Sequential and a linear head."""

    def __init__(self, in_size: int = 8):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),   # features.0
            nn.ReLU(),                       # features.1
            nn.Conv2d(4, 6, 3, padding=1),   # features.2
            nn.ReLU(),                       # features.3
            nn.MaxPool2d(2),                 # features.4
        )
        self.head = nn.Linear(6 * (in_size // 2) ** 2, 5)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class Layered(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer1 = nn.Linear(4, 4)
        self.layer2 = nn.Linear(4, 4)
        self.layer3 = nn.Linear(4, 3)

    def forward(self, x):
        return self.layer3(self.layer2(self.layer1(x)))


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture
def net():
    torch.manual_seed(0)
    return Net().eval()


@pytest.fixture
def x8():
    torch.manual_seed(1)
    return torch.randn(2, 3, 8, 8)


# --- (a) plain and nested names -------------------------------------------------------------------

def test_sequential_taps_by_index():
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3), nn.Tanh())
    x = torch.randn(3, 4)
    with Taps(seq, ["0", "2"]) as taps:
        out, feats = taps(x)
    h0 = x @ seq[0].weight.T + seq[0].bias
    h2 = torch.clamp(h0, min=0) @ seq[2].weight.T + seq[2].bias
    assert set(feats) == {"0", "2"}
    torch.testing.assert_close(feats["0"], h0)
    torch.testing.assert_close(feats["2"], h2)
    torch.testing.assert_close(out, torch.tanh(h2))


def test_nested_name_matches_manual_submodules(net, x8):
    with Taps(net, ["features.3", "features.0", "head"]) as taps:
        out, feats = taps(x8)
    f = net.features
    c0 = f[0](x8)
    r3 = torch.clamp(f[2](torch.clamp(c0, min=0)), min=0)
    assert feats["features.0"].shape == (2, 4 * 8 * 8)
    assert feats["features.3"].shape == (2, 6 * 8 * 8)
    torch.testing.assert_close(feats["features.0"], c0.reshape(2, -1))
    torch.testing.assert_close(feats["features.3"], r3.reshape(2, -1))
    pooled = r3.reshape(2, 6, 4, 2, 4, 2).amax(dim=(3, 5))
    logits = pooled.reshape(2, -1) @ net.head.weight.T + net.head.bias
    torch.testing.assert_close(feats["head"], logits)
    torch.testing.assert_close(out, logits)


def test_taps_do_not_change_the_output(net, x8):
    ref = net(x8)
    with Taps(net, ["features.2@2", "head:input"]) as taps:
        out, _ = taps(x8)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


# --- (b) grid pooling ------------------------------------------------------------------------------

@pytest.mark.parametrize("grid", [1, 2, 3, 4])
def test_grid_pooling_matches_adaptive_avg_pool(net, x8, grid):
    with Taps(net, [f"features.2@{grid}"]) as taps:
        _, feats = taps(x8)
    ref = F.adaptive_avg_pool2d(net.features[2](net.features[1](net.features[0](x8))), grid).flatten(1)
    assert feats[f"features.2@{grid}"].shape == (2, 6 * grid * grid)
    torch.testing.assert_close(feats[f"features.2@{grid}"], ref)


def test_grid4_on_8x8_is_a_2x2_block_mean(net, x8):
    with Taps(net, ["features.3@4"]) as taps:
        _, feats = taps(x8)
    m = torch.clamp(net.features[2](torch.clamp(net.features[0](x8), min=0)), min=0)
    assert m.shape == (2, 6, 8, 8)
    expected = torch.zeros(2, 6 * 4 * 4)
    for n in range(2):
        k = 0
        for c in range(6):
            for i in range(4):
                for j in range(4):
                    block = [m[n, c, 2 * i + a, 2 * j + b].item() for a in range(2) for b in range(2)]
                    expected[n, k] = sum(block) / 4.0
                    k += 1
    torch.testing.assert_close(feats["features.3@4"], expected)


def test_grid_on_a_vector_output_raises_at_call(net, x8):
    with Taps(net, ["head@2"]) as taps:
        with pytest.raises(FlowKDError, match=r"head@2.*conv map.*\(2, 5\)"):
            taps(x8)


# --- (c) module input ------------------------------------------------------------------------------

def test_input_tap_is_the_module_input(net, x8):
    with Taps(net, ["head:input", "features.2:input"]) as taps:
        _, feats = taps(x8)
    r1 = torch.clamp(net.features[0](x8), min=0)
    pooled = F.max_pool2d(torch.clamp(net.features[2](r1), min=0), 2)
    torch.testing.assert_close(feats["head:input"], pooled.reshape(2, 6 * 4 * 4))
    torch.testing.assert_close(feats["features.2:input"], r1.reshape(2, -1))
    assert _hook_count(net) == 0  # the `with` removed the pre-hooks too


def test_input_tap_with_grid(net, x8):
    with Taps(net, ["features.2:input@2"]) as taps:
        _, feats = taps(x8)
    r1 = torch.clamp(net.features[0](x8), min=0)  # (2, 4, 8, 8)
    ref = r1.reshape(2, 4, 2, 4, 2, 4).mean(dim=(3, 5)).reshape(2, -1)
    torch.testing.assert_close(feats["features.2:input@2"], ref)


def test_parse_tap_fields():
    t = parse_tap("layer2.0.conv1:input@3")
    assert (t.module, t.use_input, t.grid, t.spec) == ("layer2.0.conv1", True, 3, "layer2.0.conv1:input@3")
    t = parse_tap("fc1_relu")
    assert (t.module, t.use_input, t.grid) == ("fc1_relu", False, None)


# --- (d) errors ------------------------------------------------------------------------------------

def test_unknown_layer_names_close_valid_names():
    model = Layered()
    with pytest.raises(FlowKDError, match=r"unknown layer 'layr2'.*Layered.*layer2") as e:
        Taps(model, ["layr2"])
    assert "\n" not in str(e.value)


def test_unknown_nested_layer_suggests_siblings(net):
    with pytest.raises(FlowKDError, match=r"unknown layer 'features\.9'.*features\.\d"):
        Taps(net, ["features.9"])


def test_failed_construction_leaves_no_hooks(net):
    with pytest.raises(FlowKDError):
        Taps(net, ["features.0", "head:input", "nope"])
    assert _hook_count(net) == 0


@pytest.mark.parametrize("spec", ["a@", "a@0", "", "a@-1", "a@x", "a:output", ":input", "@2", "a b", "a:input:input"])
def test_malformed_spec_raises(net, spec):
    with pytest.raises(FlowKDError, match="bad tap spec"):
        Taps(net, [spec])
    with pytest.raises(FlowKDError, match="bad tap spec"):
        parse_tap(spec)


def test_tap_that_does_not_fire_raises():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Linear(2, 2)
            self.spare = nn.Linear(2, 2)

        def forward(self, x):
            return self.used(x)

    with Taps(Unused(), ["used", "spare"]) as taps:
        with pytest.raises(FlowKDError, match=r"spare.*did not fire"):
            taps(torch.randn(1, 2))


# --- (e) no leak, remove, context manager ---------------------------------------------------------

def test_outputs_are_not_kept_outside_calls(net, x8):
    taps = Taps(net, ["features.3", "head:input"])
    _, feats = taps(x8)
    kept = {k: v.clone() for k, v in feats.items()}
    ids = {k: id(v) for k, v in feats.items()}
    # plain calls outside taps(...) store nothing and do not touch what was handed over
    net(torch.randn(4, 3, 8, 8))
    net(torch.randn(4, 3, 8, 8))
    assert taps._store == {}
    assert {k: id(v) for k, v in feats.items()} == ids
    for k in kept:
        torch.testing.assert_close(feats[k], kept[k], rtol=0, atol=0)
    # the next call hands over fresh features of the new batch only
    _, feats2 = taps(torch.randn(3, 3, 8, 8))
    assert feats2 is not feats and feats2["features.3"].shape[0] == 3
    assert feats["features.3"].shape[0] == 2
    taps.remove()


def test_remove_detaches_hooks(net, x8):
    assert _hook_count(net) == 0
    taps = Taps(net, ["features.0", "features.3@2", "head:input"])
    assert _hook_count(net) == 3
    taps.remove()
    assert _hook_count(net) == 0
    with pytest.raises(FlowKDError, match="did not fire"):
        taps(x8)
    taps.remove()  # idempotent


def test_duplicate_specs_share_one_hook(net, x8):
    with Taps(net, ["features.0", "features.0"]) as taps:
        assert _hook_count(net) == 1
        _, feats = taps(x8)
    assert list(feats) == ["features.0"]


def test_context_manager_removes_hooks_even_on_error(net, x8):
    with pytest.raises(RuntimeError, match="boom"):
        with Taps(net, ["features.0", "head:input"]) as taps:
            assert isinstance(taps, Taps)
            assert _hook_count(net) == 2
            raise RuntimeError("boom")
    assert _hook_count(net) == 0


def test_model_exception_leaves_taps_inactive(net):
    taps = Taps(net, ["features.0"])
    with pytest.raises(RuntimeError):
        taps(torch.randn(2, 5, 8, 8))  # wrong channel count
    net(torch.randn(2, 3, 8, 8))
    assert taps._store == {}
    taps.remove()


# --- (f) gradients -------------------------------------------------------------------------------

def test_gradients_flow_through_taps(net, x8):
    net.train()
    params = [net.features[0].weight, net.features[2].weight]
    with Taps(net, ["features.3@2", "head:input"]) as taps:
        _, feats = taps(x8)
    loss = (feats["features.3@2"] ** 2).sum() + feats["head:input"].sum()
    assert loss.requires_grad
    g_tap = torch.autograd.grad(loss, params)
    # the same loss built by hand
    m = torch.clamp(net.features[2](torch.clamp(net.features[0](x8), min=0)), min=0)
    pooled = m.reshape(2, 6, 2, 4, 2, 4).mean(dim=(3, 5))
    loss_ref = (pooled ** 2).sum() + F.max_pool2d(m, 2).sum()
    g_ref = torch.autograd.grad(loss_ref, params)
    for a, b in zip(g_tap, g_ref):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b)


def test_gradient_reaches_the_input_through_an_input_tap(net):
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    with Taps(net, ["features.0:input"]) as taps:
        _, feats = taps(x)
    feats["features.0:input"].sum().backward()
    torch.testing.assert_close(x.grad, torch.ones_like(x))


# --- (g) layer_shapes -------------------------------------------------------------------------------

def test_layer_shapes(net, x8):
    net.train()
    rows = layer_shapes(net, x8)
    expected = {
        "features": ("Sequential", (2, 6, 4, 4)),
        "features.0": ("Conv2d", (2, 4, 8, 8)),
        "features.1": ("ReLU", (2, 4, 8, 8)),
        "features.2": ("Conv2d", (2, 6, 8, 8)),
        "features.3": ("ReLU", (2, 6, 8, 8)),
        "features.4": ("MaxPool2d", (2, 6, 4, 4)),
        "head": ("Linear", (2, 5)),
    }
    assert len(rows) == len(expected)
    assert {n: (t, tuple(s)) for n, t, s in rows} == expected
    assert net.training  # mode restored
    assert _hook_count(net) == 0


def test_layer_shapes_keeps_the_first_call_of_a_reused_module():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 2)

        def forward(self, x):
            return self.b(self.a(self.a(x)[:, :4]))

    rows = layer_shapes(Twice().eval(), torch.randn(3, 4))
    assert {n: s for n, _, s in rows} == {"a": (3, 4), "b": (3, 2)}
    model = Twice()
    model.eval()
    layer_shapes(model, torch.randn(3, 4))
    assert not model.training
