"""The model zoo: every registered model's forward/backward and taps, exact layer sizes, names, auxiliaries."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flowkd import make_auxiliary
from flowkd.errors import FlowKDError
from flowkd.models import MODELS, create_model
from flowkd.taps import Taps

CHECKPOINT = Path("/work/shared/models/cifar10_preact_resnet18.pt")


def _kwargs(name: str) -> dict:
    if name == "digits_cnn":
        return dict(in_channels=1, in_size=8, num_classes=10)
    return dict(in_channels=3, in_size=32, num_classes=10)


def _input(name: str, n: int = 2, seed: int = 0) -> torch.Tensor:
    kw = _kwargs(name)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, kw["in_channels"], kw["in_size"], kw["in_size"], generator=g)


@pytest.fixture(scope="module")
def built():
    """One instance per registered model (built once: the ResNet is the slow one)."""
    cache = {}

    def get(name):
        if name not in cache:
            torch.manual_seed(0)
            cache[name] = create_model(name, **_kwargs(name))
        return cache[name]

    return get


# --- every registered model -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tapped(built):
    """(model, x, logits, features) of one train-mode pass through every flow tap, per model.

    Computed once per model (the ResNet is slow on CPU) and shared: ``test_forward_backward`` backpropagates
    through these logits, the other tests only read the values.
    """
    cache = {}

    def get(name):
        if name not in cache:
            model = built(name).train()
            model.zero_grad(set_to_none=True)
            x = _input(name, seed=1)
            with Taps(model, model.flow_taps) as taps:
                out, feats = taps(x)
            cache[name] = (model, x, out, feats)
        return cache[name]

    return get


FIXED = {"hog"}  # parameter-free feature extractors (teachers only): no classifier, nothing to train
TRAINABLE = [n for n in MODELS.names() if n not in FIXED]


def test_fixed_extractors_have_no_parameters_and_one_descriptor(tapped):
    for name in FIXED:
        model, x, out, feats = tapped(name)
        assert not list(model.parameters())
        assert model.flow_taps == (model.representation,)
        assert out.dim() == 2 and out.shape[0] == 2 and torch.isfinite(out).all()
        torch.testing.assert_close(feats[model.representation], out)


@pytest.mark.parametrize("name", TRAINABLE)
def test_forward_backward(tapped, name):
    model, _, logits, _ = tapped(name)
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.tensor([1, 7])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    assert sum(p.grad.abs().sum().item() for p in model.parameters()) > 0
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", TRAINABLE)
def test_flow_taps_fire(tapped, name):
    model, x, out, feats = tapped(name)
    taps_names = tuple(model.flow_taps)
    assert len(taps_names) >= 2
    assert taps_names[-1] == model.representation
    assert set(feats) == set(taps_names)
    for spec, f in feats.items():
        assert f.dim() == 2 and f.shape[0] == 2, spec
        assert torch.isfinite(f).all(), spec
        assert f.requires_grad, spec  # student taps keep the graph
    assert out.shape == (2, 10)
    if name != "preact_resnet18":  # (too slow on CPU twice; its own test checks the logits by hand)
        with torch.no_grad():  # train-mode BN uses the batch statistics: the same output again
            torch.testing.assert_close(out, model(x), rtol=0, atol=0)


EXPECTED_TAP_DIMS = {
    "verytiny": [8 * 15 * 15, 16 * 6 * 6, 32 * 2 * 2, 64],
    "tiny": [16 * 15 * 15, 32 * 6 * 6, 64 * 2 * 2, 128],
    "digits_cnn": [4 * 4 * 4, 8 * 2 * 2, 16 * 1 * 1, 32],
    "mlp": [256, 256],
    "preact_resnet18": [64 * 4 * 4, 128 * 4 * 4, 256 * 2 * 2, 512],
}


@pytest.mark.parametrize("name", sorted(EXPECTED_TAP_DIMS))
def test_flow_tap_dims(tapped, name):
    model, _, _, feats = tapped(name)
    assert [feats[t].shape[1] for t in model.flow_taps] == EXPECTED_TAP_DIMS[name]


def test_representation_dims():
    for name, dim in (("verytiny", 64), ("tiny", 128)):
        model = create_model(name).eval()
        with torch.no_grad(), Taps(model, [model.representation]) as taps:
            _, feats = taps(torch.zeros(1, 3, 32, 32))
        assert feats[model.representation].shape == (1, dim), name


def test_verytiny_taps_match_a_hand_built_forward():
    torch.manual_seed(3)
    m = create_model("verytiny").eval()
    # non-trivial BN statistics so eval-mode BN matters
    for bn in (m.conv1_bn, m.conv2_bn, m.conv3_bn):
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 32, 32)

    def block(h, conv, bn):
        h = F.conv2d(h, conv.weight, conv.bias)  # no padding
        h = (h - bn.running_mean[None, :, None, None]) / torch.sqrt(bn.running_var[None, :, None, None] + bn.eps)
        h = h * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]
        return F.max_pool2d(torch.clamp(h, min=0), 2)

    with torch.no_grad():
        p1 = block(x, m.conv1, m.conv1_bn)
        p2 = block(p1, m.conv2, m.conv2_bn)
        p3 = block(p2, m.conv3, m.conv3_bn)
        rep = torch.clamp(p3.reshape(2, -1) @ m.fc1.weight.T + m.fc1.bias, min=0)
        logits = rep @ m.fc2.weight.T + m.fc2.bias
        with Taps(m, m.flow_taps) as taps:
            out, feats = taps(x)
    assert p1.shape == (2, 8, 15, 15) and p2.shape == (2, 16, 6, 6) and p3.shape == (2, 32, 2, 2)
    for spec, ref in zip(("pool1", "pool2", "pool3", "fc1_relu"), (p1, p2, p3, rep)):
        torch.testing.assert_close(feats[spec], ref.reshape(2, -1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out, logits, rtol=1e-4, atol=1e-5)


def test_tiny_parameter_names():
    sd = create_model("tiny").state_dict()
    prefixes = {k.split(".")[0] for k in sd}
    assert prefixes == {"conv1", "conv1_bn", "conv2", "conv2_bn", "conv3", "conv3_bn", "fc1", "fc2"}
    assert sd["conv1.weight"].shape == (16, 3, 3, 3)
    assert sd["conv3.weight"].shape == (64, 32, 3, 3)
    assert sd["fc1.weight"].shape == (128, 64 * 2 * 2)
    assert sd["fc2.weight"].shape == (10, 128)


# --- PreAct ResNet-18 -------------------------------------------------------------------------------

def test_preact_resnet18_names(built):
    keys = set(built("preact_resnet18").state_dict())
    for k in ("conv1.weight", "bn1.weight", "layer1.0.bn1.weight", "layer2.0.shortcut.0.weight", "linear.weight"):
        assert k in keys, k
    assert "layer1.0.shortcut.0.weight" not in keys  # identity shortcut in the first stage
    n_params = sum(p.numel() for p in built("preact_resnet18").parameters())
    assert 11_000_000 < n_params < 11_300_000


def test_preact_resnet18_taps_match_submodules(tapped):
    m, x, out, feats = tapped("preact_resnet18")
    assert m.training  # BN on the batch statistics, in both passes
    with torch.no_grad():
        h = F.relu(m.bn1(m.conv1(x)))
        l1 = m.layer1(h)
        l2 = m.layer2(l1)
        l3 = m.layer3(l2)
        l4 = m.layer4(l3)
        rep = l4.mean(dim=(2, 3))
        logits = rep @ m.linear.weight.T + m.linear.bias
    assert l1.shape[-2:] == (32, 32) and l3.shape[-2:] == (8, 8) and l4.shape[-2:] == (4, 4)
    torch.testing.assert_close(feats["layer1@4"].detach(), l1.reshape(2, 64, 4, 8, 4, 8).mean((3, 5)).reshape(2, -1))
    torch.testing.assert_close(feats["layer2@4"].detach(), l2.reshape(2, 128, 4, 4, 4, 4).mean((3, 5)).reshape(2, -1))
    torch.testing.assert_close(feats["layer3@2"].detach(), l3.reshape(2, 256, 2, 4, 2, 4).mean((3, 5)).reshape(2, -1))
    torch.testing.assert_close(feats["linear:input"].detach(), rep)
    torch.testing.assert_close(out.detach(), logits, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not CHECKPOINT.is_file(), reason=f"{CHECKPOINT} not present")
def test_preact_checkpoint_loads_strict():
    sd = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)
    sd = {k: v.float() for k, v in sd.items()}
    model = create_model("preact_resnet18")
    result = model.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    torch.testing.assert_close(model.conv1.weight, sd["conv1.weight"])
    torch.testing.assert_close(model.layer4[1].bn2.running_var, sd["layer4.1.bn2.running_var"])
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())


# --- create_model / make_auxiliary -------------------------------------------------------------------

def test_create_model_unknown_name():
    with pytest.raises(FlowKDError, match=r"unknown model 'nope'.*digits_cnn.*mlp.*preact_resnet18.*tiny.*verytiny"):
        create_model("nope")


def _shaped_layers(model: nn.Module):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d))]


@pytest.mark.parametrize("name", ["verytiny", "digits_cnn", "mlp"])
def test_auxiliary_is_twice_as_wide(name):
    kw = _kwargs(name) if name != "mlp" else dict(in_channels=1, in_size=8, num_classes=10)
    student = create_model(name, **kw)
    aux = make_auxiliary(name, 2.0, **kw)
    s_layers, a_layers = _shaped_layers(student), _shaped_layers(aux)
    assert [n for n, _ in s_layers] == [n for n, _ in a_layers]
    linears = [n for n, m in s_layers if isinstance(m, nn.Linear)]
    classifier = linears[-1]
    convs = [n for n, m in s_layers if isinstance(m, nn.Conv2d)]
    first = (convs or linears)[0]
    n_checked = 0
    for (n, s), (_, a) in zip(s_layers, a_layers):
        if isinstance(s, nn.Conv2d):
            assert a.out_channels == 2 * s.out_channels, n
            assert a.in_channels == (s.in_channels if n == first else 2 * s.in_channels), n
        elif isinstance(s, nn.BatchNorm2d):
            assert a.num_features == 2 * s.num_features, n
        elif n == classifier:
            assert a.out_features == s.out_features == 10, n
            assert a.in_features == 2 * s.in_features, n
        else:
            assert a.out_features == 2 * s.out_features, n
            if n == first:
                assert a.in_features == s.in_features, n
        n_checked += 1
    assert n_checked >= 3
    # and the auxiliary runs
    x = torch.randn(2, kw["in_channels"], kw["in_size"], kw["in_size"])
    assert aux.eval()(x).shape == (2, 10)


def test_auxiliary_of_verytiny_is_tiny():
    aux = make_auxiliary("verytiny").state_dict()
    tiny = create_model("tiny").state_dict()
    assert set(aux) == set(tiny)
    assert {k: tuple(v.shape) for k, v in aux.items()} == {k: tuple(v.shape) for k, v in tiny.items()}


def test_auxiliary_base_width_and_kwargs():
    aux = make_auxiliary("verytiny", 2.0, base_width=0.5, num_classes=7)
    assert aux.conv1.out_channels == 8 and aux.fc1.out_features == 64 and aux.fc2.out_features == 7


class MyNet(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(3, c, 3)
        self.fc = nn.Linear(c, 4)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


def test_auxiliary_from_a_factory():
    calls = []

    def factory(w):
        calls.append(w)
        return MyNet(int(8 * w))

    aux = make_auxiliary(factory)
    assert calls == [2.0]
    assert aux.conv.out_channels == 16
    aux3 = make_auxiliary(lambda w: MyNet(int(8 * w)), 3.0, base_width=0.5)
    assert aux3.conv.out_channels == 12


def test_auxiliary_rejects_instances_and_bad_widths():
    with pytest.raises(FlowKDError, match="not an instance"):
        make_auxiliary(MyNet(8))
    for w in (0, -1.0):
        with pytest.raises(FlowKDError, match=r"must be positive, got " + str(w)):
            make_auxiliary("verytiny", w)
    with pytest.raises(FlowKDError, match="not an nn.Module"):
        make_auxiliary(lambda w: 42)
    with pytest.raises(FlowKDError, match="unsupported student spec"):
        make_auxiliary(3)
    with pytest.raises(FlowKDError, match="unknown model 'nope'"):
        make_auxiliary("nope")
