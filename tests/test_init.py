"""`flowkd init`: a config for a generated image folder and two networks, then `flowkd run` on it unchanged."""

import json
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from flowkd.cli import main
from flowkd.config import load_config
from flowkd.models import create_model


def image_folder(root: Path, classes: int, side: int, mode: str, per_split=(6, 2), seed=0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "test"), per_split):
        for c in range(classes):
            d = root / split / f"kind_{c}"
            d.mkdir(parents=True)
            for i in range(n):
                shape = (side, side, 3) if mode == "RGB" else (side, side)
                img = rng.integers(0, 256, shape, dtype=np.uint8)
                img[: side // (c + 2)] //= 3  # a little class signal
                Image.fromarray(img, mode).save(d / f"{i:03d}.png")
    return root


def init(*args) -> int:
    return main(["init", *map(str, args)])


def run(config: Path, out: Path) -> dict:
    assert main(["run", str(config), "--out", str(out), "--no-progress"]) == 0  # no --set: the file as written
    return json.loads((out / "results.json").read_text())


def stages_of(out: Path) -> list[str]:
    return [json.loads(x)["stage"] for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_init_two_zoo_networks_with_teacher_weights(tmp_path, capsys, one_thread):
    data = image_folder(tmp_path / "imgs", classes=3, side=32, mode="RGB")
    teacher = create_model("preact_resnet18", num_classes=3, width=0.25)  # a "trained" teacher's file
    weights = tmp_path / "teacher.pt"
    torch.save(teacher.state_dict(), weights)
    cfg_path = tmp_path / "mine.toml"
    # the teacher's width must match the file: a zoo width is part of the arch here, so use the full-width file
    assert init("--data", data, "--teacher", f"preact_resnet18@{weights}", "--student", "verytiny",
                "--out", cfg_path, "--epochs", "1") == 2
    assert "do not fit --teacher preact_resnet18" in capsys.readouterr().err and not cfg_path.exists()
    torch.save(create_model("preact_resnet18", num_classes=3).state_dict(), weights)
    assert init("--data", data, "--teacher", f"preact_resnet18@{weights}", "--student", "verytiny",
                "--out", cfg_path, "--epochs", "1") == 0
    text = cfg_path.read_text()
    # data options from the folder, the listing, the proposals
    assert "18 training / 6 test images, 3 classes (kind_0, kind_1, kind_2)" in text
    assert "3 channel(s), 32x32 pixels" in text and "batch_size = 18" in text
    # the listings: ResNet layer2 and the very tiny pool1 on 32x32 images
    assert re.search(r"^#   layer2 +Sequential +\(128, 16, 16\)$", text, re.M)
    assert re.search(r"^#   pool1 +MaxPool2d +\(8, 15, 15\)$", text, re.M)
    cfg = load_config(cfg_path)
    st = {s.name: s for s in cfg.stages}
    assert list(st) == ["aux_labels", "aux_pkt", "student", "baseline"]  # weights given: no teacher stage
    assert cfg.models["teacher"].weights == str(weights)
    assert (cfg.models["aux"].auxiliary_of, cfg.models["aux"].width) == ("student", 2.0)
    assert st["aux_pkt"].pairs == [["linear:input", "fc1_relu"]]
    assert st["student"].pairs == [["pool1", "pool1"], ["pool2", "pool2"], ["pool3", "pool3"], ["fc1_relu", "fc1_relu"]]
    assert st["student"].schedule["name"] == "critical_period" and all(s.epochs == [1] for s in cfg.stages)
    # the alternative straight from the teacher pairs shallow with shallow
    assert '# pairs = [["layer1@4", "pool1"], ["layer2@4", "pool2"], ["layer3@2", "pool3"], ["linear:input", "fc1_relu"]]' in text
    res = run(cfg_path, tmp_path / "run")
    assert set(res["models"]) == {"teacher", "aux", "student", "baseline"}
    assert res["data"] == res["data"] | {"train": 18, "test": 6}
    assert stages_of(tmp_path / "run") == ["aux_labels", "aux_pkt", "student", "baseline"]
    assert res["models"]["aux"]["width"] == 2.0 and res["models"]["student"]["dim"] == 64

    # never overwrites
    before = cfg_path.read_text()
    capsys.readouterr()
    assert init("--data", data, "--teacher", "tiny", "--student", "verytiny", "--out", cfg_path) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"flowkd: error: --out {cfg_path} already exists;") and "--force" in err
    assert cfg_path.read_text() == before


PY_NETS = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, in_channels, num_classes, width):
        super().__init__()
        c1, c2, h = (max(1, round(n * width)) for n in (8, 16, 24))
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c1, 3, padding=1), nn.ReLU())
        self.block1 = nn.Sequential(nn.Conv2d(c1, c1, 3, padding=1), nn.BatchNorm2d(c1), nn.ReLU(), nn.MaxPool2d(2))
        self.block2 = nn.Sequential(nn.Conv2d(c1, c2, 3, padding=1), nn.BatchNorm2d(c2), nn.ReLU(), nn.MaxPool2d(2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embed = nn.Linear(c2, h)
        self.act = nn.ReLU()
        self.head = nn.Linear(h, num_classes)

    def forward(self, x):
        x = self.pool(self.block2(self.block1(self.stem(x)))).flatten(1)
        return self.head(self.act(self.embed(x)))


def build(in_channels, num_classes, width=1.0):
    return Net(in_channels, num_classes, width)


def fixed(in_channels, num_classes):  # no width: its auxiliary cannot be wider
    return Net(in_channels, num_classes, 1.0)
'''


def test_init_with_a_py_factory_student_on_grayscale(tmp_path, monkeypatch, capsys, one_thread):
    data = image_folder(tmp_path / "gray", classes=4, side=28, mode="L", per_split=(5, 2))
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "init_test_nets.py").write_text(textwrap.dedent(PY_NETS))
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    cfg_path = tmp_path / "cfg" / "gray.toml"
    assert init("--data", data, "--teacher", "mlp", "--student", "py:init_test_nets:build", "--out", cfg_path,
                "--epochs", "1") == 0
    text = cfg_path.read_text()
    assert "20 training / 8 test images, 4 classes" in text and "1 channel(s), 28x28 pixels" in text
    # taps derived for a network that declares none: the end of each resolution, pooled when wide, then the
    # input of the last linear layer; the 1x1 map before it is left out
    assert "proposed taps, shallow -> deep (last = representation): stem@16, block1, block2, head:input" in text
    cfg = load_config(cfg_path)
    st = {s.name: s for s in cfg.stages}
    assert list(st) == ["teacher", "aux_labels", "aux_pkt", "student", "baseline"]  # no weights: teacher trains first
    assert st["student"].pairs == [["stem@16", "stem@16"], ["block1", "block1"], ["block2", "block2"],
                                   ["head:input", "head:input"]]
    assert st["aux_pkt"].pairs == [["fc2_relu", "head:input"]]
    assert cfg.models["student"].arch == "py:init_test_nets:build"
    res = run(cfg_path, tmp_path / "run")
    assert stages_of(tmp_path / "run") == ["teacher", "aux_labels", "aux_pkt", "student", "baseline"]
    assert res["models"]["aux"]["dim"] == 48 and res["models"]["student"]["dim"] == 24  # width x2 reached the factory

    # a factory without `width`: the config says so and stays runnable
    other = tmp_path / "fixed.toml"
    assert init("--data", data, "--teacher", "mlp", "--student", "py:init_test_nets:fixed", "--out", other) == 0
    assert "ignores `width`: the auxiliary is no bigger than the student" in other.read_text()
    assert load_config(other).stages[-1].epochs == [50]  # no --epochs: the paper's budget


@pytest.mark.parametrize("args, msg", [
    (["--teacher", "resnet_18", "--student", "verytiny"], "unknown model 'resnet_18'; closest:"),
    (["--teacher", "tiny@missing.pt", "--student", "verytiny"], "weights file not found: missing.pt"),
    (["--teacher", "tiny", "--student", "verytiny@x.pt"], "--student takes no weights"),
])
def test_init_bad_specs_are_one_line(tmp_path, capsys, args, msg):
    data = tmp_path / "imgs"
    assert init("--data", "cifar10", *args, "--out", tmp_path / "x.toml") == 2
    err = capsys.readouterr().err
    assert err.startswith("flowkd: error: ") and msg in err and err.count("\n") == 1
    assert not (tmp_path / "x.toml").exists() and not data.exists()


def test_init_by_dataset_name_and_bad_data(tmp_path, capsys):
    out = tmp_path / "c.toml"
    assert init("--data", "cifar10", "--teacher", "preact_resnet18", "--student", "verytiny", "--out", out,
                "--root", tmp_path / "d") == 0
    cfg = load_config(out)
    assert (cfg.data.name, cfg.data.root, cfg.data.download) == ("cifar10", str(tmp_path / "d"), True)
    assert not (tmp_path / "d").exists()  # init downloads nothing; the run fetches
    (tmp_path / "flat").mkdir()
    assert init("--data", tmp_path / "flat", "--teacher", "tiny", "--student", "verytiny", "--out", tmp_path / "f.toml") == 2
    assert "no " + str(tmp_path / "flat" / "train") + " folder" in capsys.readouterr().err
    assert init("--data", "imagenet", "--teacher", "tiny", "--student", "verytiny", "--out", tmp_path / "f.toml") == 2
    assert "neither a folder nor a known dataset" in capsys.readouterr().err


def test_init_quick_trial_quoting_and_the_teacher_pairing(tmp_path, capsys, monkeypatch, one_thread):
    """--epochs N (a quick trial) skips latency timing; the suggested command survives spaces in paths; the
    commented "straight from the teacher" pairing runs when uncommented, even for a teacher with few taps."""
    monkeypatch.chdir(tmp_path)
    cfg_path = Path("my configs") / "a b.toml"
    assert init("--data", "digits", "--teacher", "mlp", "--student", "digits_cnn", "--out", cfg_path,
                "--epochs", "1") == 0
    printed = capsys.readouterr().out
    assert "flowkd run 'my configs/a b.toml' --out 'runs/a b'" in printed
    text = cfg_path.read_text()
    assert "# Written by `flowkd init --data digits --teacher mlp --student digits_cnn --epochs 1`." in text
    assert re.search(r'^cost = "static"', text, re.M)
    direct = re.search(r"^# (pairs = \[.*\])$", text, re.M).group(1)
    student = re.search(r'(name = "student"\n.*?)\n\n', text, re.S).group(1)
    changed = student.replace('teacher = "aux"', 'teacher = "teacher"')
    changed = re.sub(r"^pairs = .*$", lambda m: direct, changed, count=1, flags=re.M)
    assert changed != student
    alt = tmp_path / "direct.toml"
    alt.write_text(text.replace(student, changed))
    tmap = [p[0] for p in load_config(alt).stages[2].pairs]
    assert len(tmap) == len(set(tmap))  # no teacher tap twice
    res = run(alt, tmp_path / "run")
    assert "macs" in res["models"]["student"]["cost"] and "latency_ms" not in res["models"]["student"]["cost"]
