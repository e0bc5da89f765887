"""Models from outside the zoo: timm:/torchvision: names (lazily imported), py: factories, fn: feature functions.

The library tests use small stand-in modules put into ``sys.modules`` (CI has neither library: torchvision is a
5 GB install); ``test_real_*`` run against the real libraries where they are installed.
"""

import json
import sys
import types

import pytest
import torch
from torch import nn

from flowkd.cli import main
from flowkd.errors import FlowKDError
from flowkd.models import create_model
from flowkd.models.external import CallableTeacher
from flowkd.taps import Taps, default_representation


class Net(nn.Module):  # shaped like a library classifier: a body, a pooled vector, a linear head
    def __init__(self, in_chans=3, num_classes=10, hidden=6):
        super().__init__()
        self.stem = nn.Conv2d(in_chans, hidden, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.act(self.stem(x))).flatten(1))


@pytest.fixture
def fake_timm(monkeypatch):
    calls = []
    mod = types.ModuleType("timm")

    def create_model(name, **kw):
        calls.append((name, kw))
        return Net(kw["in_chans"], kw["num_classes"], **{k: v for k, v in kw.items() if k == "hidden"})

    mod.create_model = create_model
    mod.list_models = lambda: ["resnet18", "resnet34", "vit_tiny"]
    monkeypatch.setitem(sys.modules, "timm", mod)
    return calls


@pytest.fixture
def fake_torchvision(monkeypatch):
    calls = []
    tv, models = types.ModuleType("torchvision"), types.ModuleType("torchvision.models")

    def get_model(name, **kw):
        calls.append((name, kw))
        return Net(3, kw["num_classes"])

    models.get_model, models.list_models = get_model, lambda: ["resnet18", "mobilenet_v3_small"]
    tv.models = models
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    return calls


def test_timm_name_creates_the_library_model_offline(fake_timm):
    model = create_model("timm:resnet18", num_classes=7, in_channels=1, in_size=8, options={"hidden": 5})
    assert fake_timm == [("resnet18", {"pretrained": False, "num_classes": 7, "in_chans": 1, "hidden": 5})]
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 7)
    assert default_representation(model) == "fc:input"


def test_unknown_library_model_names_the_closest(fake_timm):
    with pytest.raises(FlowKDError, match="unknown timm model 'resnet81'; closest: resnet18"):
        create_model("timm:resnet81")


def test_width_is_refused_for_library_models(fake_timm):
    with pytest.raises(FlowKDError, match="width applies to flowkd's own models"):
        create_model("timm:resnet18", width=2.0)


def test_torchvision_name_and_its_channel_check(fake_torchvision):
    create_model("torchvision:resnet18", num_classes=4)
    assert fake_torchvision == [("resnet18", {"weights": None, "num_classes": 4})]
    with pytest.raises(FlowKDError, match="3-channel images, the data has 1"):
        create_model("torchvision:resnet18", in_channels=1)


@pytest.mark.parametrize("lib", ["timm", "torchvision"])
def test_missing_library_is_one_clear_line(monkeypatch, capsys, lib):
    monkeypatch.setitem(sys.modules, lib, None)  # as if not installed
    monkeypatch.setitem(sys.modules, f"{lib}.models", None)
    assert main(["layers", f"{lib}:resnet18"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"flowkd: error: model '{lib}:resnet18' needs the module '{lib if lib == 'timm' else 'torchvision.models'}', " \
                  f"which cannot be imported (pip install {lib})"


def test_layers_lists_a_library_model_and_its_default_representation(fake_timm, capsys):
    assert main(["layers", "timm:resnet18", "--in-channels", "1", "--in-size", "8"]) == 0
    out = capsys.readouterr().out
    assert "stem" in out and "(6, 8, 8)" in out and "fc" in out
    assert "representation: fc:input  (default: the last linear layer's input)" in out


def test_library_teacher_in_a_pipeline(fake_timm, tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("""
seed = 0
progress = false
[data]
name = "digits"
[models.teacher]
arch = "timm:resnet18"
options = { hidden = 12 }
[models.student]
arch = "digits_cnn"
[[stages]]
name = "teacher"
kind = "supervised"
model = "teacher"
epochs = [1]
lr = [1e-3]
[[stages]]
name = "student"
kind = "distill"
model = "student"
teacher = "teacher"
pairs = [["stem@2", "pool1"], ["fc:input", "fc1_relu"]]
schedule = { name = "critical_period" }
epochs = [1]
lr = [1e-3]
""")
    assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["models"]["teacher"]["arch"] == "timm:resnet18" and res["models"]["teacher"]["dim"] == 12
    assert res["stages"]["student"]["pairs"] == [["stem@2", "pool1"], ["fc:input", "fc1_relu"]]


def feature_fn(x):  # fn: target — images -> {name: features}
    return {"mean": x.mean((2, 3)), "energy": (x ** 2).flatten(1)}


def returns_list(x):
    return [x]


def factory(num_classes, in_channels, scale=1.0):  # py: target — a factory taking some of the offered arguments
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes)) if scale == 1.0 else lambda x: x.flatten(1) * scale


def test_fn_feature_function_becomes_a_tapped_module():
    model = create_model(f"fn:{__name__}:feature_fn", in_channels=2, in_size=3)
    assert isinstance(model, CallableTeacher) and model.flow_taps == ("outputs.mean", "outputs.energy")
    x = torch.randn(4, 2, 3, 3)
    with Taps(model, list(model.flow_taps)) as taps:
        feats = taps(x)[1]
    assert torch.equal(feats["outputs.mean"], x.mean((2, 3))) and torch.equal(feats["outputs.energy"], (x ** 2).flatten(1))


def test_py_factory_gets_the_arguments_it_accepts_and_options():
    seq = create_model(f"py:{__name__}:factory", num_classes=3, in_channels=1, in_size=4)
    assert isinstance(seq, nn.Sequential) and seq(torch.zeros(2, 1, 4, 4)).shape == (2, 3)
    wrapped = create_model(f"py:{__name__}:factory", num_classes=3, in_channels=1, in_size=4, options={"scale": 2.0})
    x = torch.randn(2, 1, 4, 4)
    assert isinstance(wrapped, CallableTeacher) and torch.equal(wrapped(x), x.flatten(1) * 2.0)


@pytest.mark.parametrize("name, message", [
    ("py:no_such_module_xyz:f", "needs the module 'no_such_module_xyz', which cannot be imported"),
    (f"py:{__name__}:nothing_here", "has no attribute 'nothing_here'"),
    ("fn:torch:flatten", "expected one row per image"),
    ("fn:torch:nn", "not callable"),
    ("py:justone", "expected py:MODULE:NAME"),
    (f"fn:{__name__}:returns_list", "the callable must return a tensor or a dict of tensors"),
    (f"fn:{__name__}:Net", r"the callable failed on an example batch of shape \(2, 1, 4, 4\)"),
])
def test_bad_python_targets(name, message):
    with pytest.raises(FlowKDError, match=message):
        create_model(name, in_channels=1, in_size=4)


def test_default_representation_prefers_the_declared_tap():
    assert default_representation(create_model("digits_cnn", in_channels=1, in_size=8)) == "fc1_relu"
    assert default_representation(nn.Sequential(nn.Conv2d(1, 2, 3))) == ""


def test_real_timm_resnet18_taps():
    timm = pytest.importorskip("timm")
    model = create_model("timm:resnet18", num_classes=10)
    assert isinstance(model, timm.models.ResNet) and default_representation(model) == "fc:input"
    with Taps(model, ["layer2@2", "fc:input"]) as taps:
        feats = taps(torch.zeros(2, 3, 32, 32))[1]
    assert feats["layer2@2"].shape == (2, 128 * 4) and feats["fc:input"].shape == (2, 512)


def test_real_torchvision_resnet18_taps():
    pytest.importorskip("torchvision")
    model = create_model("torchvision:resnet18", num_classes=10)
    assert default_representation(model) == "fc:input"
    with Taps(model, ["layer3", "fc:input"]) as taps:
        feats = taps(torch.zeros(2, 3, 32, 32))[1]
    assert feats["layer3"].shape == (2, 256 * 2 * 2) and feats["fc:input"].shape == (2, 512)
