"""Bad input through the CLI: one clear error line, exit 2, no results file, an existing run left intact."""

import json
import pickle
from importlib import resources

import numpy as np
import pytest
import torch

from flowkd.cli import main
from flowkd.pipeline import Pipeline

DEMO = str(resources.files("flowkd").joinpath("configs/digits_demo.toml"))
FAST = ["stages.teacher.epochs=[1]", "stages.aux_labels.epochs=[1, 1]", "stages.aux_pkt.epochs=[1, 1]",
        "stages.student.epochs=[1, 1]", "stages.student_labels.epochs=[1, 1]", "stages.student_pkt.epochs=[1, 1]"]


def _png(path, size=(8, 8), mode="RGB"):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, 128).save(path)


def _folder(root):
    for split in ("train", "test"):
        for c in ("a", "b"):
            for i in range(2):
                _png(root / split / c / f"{i}.png")
    return root


def _corrupt(root):
    (root / "train" / "a" / "0.png").write_bytes(b"not a png at all")
    return "0.png"


def _wrong_size(root):
    _png(root / "train" / "b" / "9.png", size=(9, 8))
    return "9.png"


def _wrong_mode(root):
    _png(root / "train" / "b" / "9.png", mode="L")
    return "9.png"


def _empty_class(root):
    (root / "train" / "c").mkdir()
    return "train/c"


def _cifar_label_out_of_range(tmp):
    d = tmp / "cifar"
    d.mkdir()
    batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 12]}
    for name in ["data_batch_1", "test_batch"]:
        (d / name).write_bytes(pickle.dumps(batch))
    (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}))
    return d


@pytest.mark.parametrize("case, expect", [
    ("missing", "not found"),
    ("corrupt", "0.png"),
    ("wrong_size", "9.png"),
    ("wrong_mode", "9.png"),
    ("empty_class", "train/c"),
])
def test_bad_image_folders(tmp_path, capsys, case, expect):
    root = tmp_path / "imgs"
    if case != "missing":
        _folder(root)
        {"corrupt": _corrupt, "wrong_size": _wrong_size, "wrong_mode": _wrong_mode, "empty_class": _empty_class}[case](root)
    out = tmp_path / "run"
    args = ["run", DEMO, "--out", str(out), "--no-progress", "--set", "data.name=imagefolder", "--set", f"data.root={root}"]
    for s in FAST:
        args += ["--set", s]
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("flowkd: error:") and len(err.splitlines()) == 1, err
    assert expect in err
    assert not (out / "results.json").exists() and not list(tmp_path.rglob("*.tmp"))


def test_label_out_of_range(tmp_path, capsys):
    root = _cifar_label_out_of_range(tmp_path)
    code = main(["run", DEMO, "--out", str(tmp_path / "run"), "--no-progress", "--set", "data.name=cifar10",
                 "--set", f"data.root={root}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "label 12 is out of range for 10 classes" in err and len(err.splitlines()) == 1


def test_failure_inside_an_existing_run_keeps_its_results(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", DEMO, "--out", str(out), "--no-progress"]
    for s in FAST:
        args += ["--set", s]
    assert main(args) == 0
    before = (out / "results.json").read_bytes()
    # resuming with a config that now fails at the first stage must not touch the finished run's results
    code = main(args + ["--resume", "--set", "stages.student.pairs=[['nope', 'pool1']]"])
    err = capsys.readouterr().err
    assert code == 2 and ("cannot resume with another config: stages.student.pairs" in err or "unknown layer" in err)
    assert (out / "results.json").read_bytes() == before
    json.loads(before)


def test_out_of_memory_gives_a_hint(tmp_path, capsys, monkeypatch):
    def boom(self, *a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(Pipeline, "train_group", boom)
    code = main(["run", DEMO, "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "out of GPU memory" in err and "batch_size" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run" / "results.json").exists()
