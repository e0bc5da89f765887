"""The README's CIFAR-10 reproduction, shrunk: fetch (loopback server) -> teacher config -> paper pipeline config
that takes the teacher from the teacher run's folder, with the shipped configs' own relative paths."""

import json
import math
from pathlib import Path

import pytest
import torch

from flowkd.cli import main
from flowkd.config import load_config
from flowkd.io import load_into
from flowkd.models import create_model
from helpers import run_args
from test_fetch import Server, _tar, cifar10_files, serve

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "configs" / "cifar10_teacher_resnet18.toml"
PIPELINE = ROOT / "configs" / "cifar10_resnet18_to_verytiny.toml"


def test_teacher_recipe():
    cfg = load_config(TEACHER)
    (st,) = cfg.stages
    assert (st.name, st.kind, st.model) == ("teacher", "supervised", "teacher")
    assert cfg.models["teacher"].arch == "preact_resnet18" and cfg.models["teacher"].width == 1.0
    assert (st.optimizer, st.weight_decay, st.epochs, st.lr) == ("sgd", 5e-4, [80, 40, 30], [0.1, 0.01, 0.001])
    assert (cfg.data.name, cfg.data.root, cfg.data.download, cfg.data.augment) == ("cifar10", "data", True, True)
    assert cfg.fast.amp == "bf16" and cfg.fast.channels_last
    # the pipeline reads the same data and the teacher run's checkpoint by default
    pipe = load_config(PIPELINE)
    assert (pipe.data.name, pipe.data.root, pipe.data.download) == ("cifar10", "data", True)
    assert pipe.models["teacher"].weights == "runs/teacher/checkpoints/teacher.pt"
    assert pipe.models["teacher"].arch == cfg.models["teacher"].arch


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def test_fetch_teacher_pipeline_end_to_end_on_cpu(tmp_path, server, monkeypatch, capsys, one_thread):
    files, _, _ = cifar10_files(per_batch=30)  # 150 training / 30 test images in the official layout
    serve(server, monkeypatch, "cifar10", _tar(files))
    monkeypatch.chdir(tmp_path)  # the configs' relative paths: data/, runs/teacher/...
    small = ["device=cpu", "models.teacher.width=0.125", "data.batch_size=32", "data.eval_batch_size=64", "eval.cost=static"]
    sets = small + ["stages.teacher.epochs=[1, 1, 0]", "fast.amp=none", "fast.channels_last=false"]
    assert main(run_args("runs/teacher", sets, config=TEACHER)) == 0
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["cifar-10-batches-py"] and len(server.log) == 1
    res = json.loads((tmp_path / "runs/teacher/results.json").read_text())
    t = res["models"]["teacher"]
    assert res["data"]["train"] == 150 and res["data"]["test"] == 30
    assert 0 <= t["head_acc"] <= 100 and t["dim"] == 64  # 512 x 0.125
    recs = [json.loads(x) for x in (tmp_path / "runs/teacher/metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in recs] == [0.1, 0.01] and all(math.isfinite(r["loss"]) for r in recs)
    ckpt = tmp_path / "runs/teacher/checkpoints/teacher.pt"
    model = create_model("preact_resnet18", width=0.125)
    load_into(model, ckpt, "teacher")
    assert not torch.equal(model.linear.weight, create_model("preact_resnet18", width=0.125).linear.weight)

    # the paper pipeline, its teacher weights left at the config's default path
    sets = small + ["stages.aux_labels.epochs=[1, 0]", "stages.aux_pkt.epochs=[1, 0]", "stages.student.epochs=[1]",
                    "stages.baseline.epochs=[1]"]
    assert main(run_args("runs/cifar10", sets, config=PIPELINE)) == 0
    res2 = json.loads((tmp_path / "runs/cifar10/results.json").read_text())
    assert len(server.log) == 1  # the data was already there
    assert res2["models"]["teacher"]["cosine"] == t["cosine"]  # the same network, loaded from the teacher run
    assert set(res2["models"]) == {"teacher", "aux", "student", "baseline"}
