"""The CIFAR-10 paper pipeline's config, wired end to end on a small generated image folder."""

import json
from pathlib import Path

import numpy as np
import pytest

from flowkd.cli import main
from flowkd.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.toml"))
SHARED_TEACHER = ROOT.parent / "shared" / "models" / "cifar10_preact_resnet18.pt"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.stages and cfg.models


def test_paper_config_matches_the_reference_recipe():
    cfg = load_config(ROOT / "configs" / "cifar10_resnet18_to_verytiny.toml")
    st = {s.name: s for s in cfg.stages}
    assert (st["aux_labels"].epochs, st["aux_labels"].lr) == ([50, 30], [1e-3, 1e-4])
    assert (st["aux_pkt"].epochs, st["aux_pkt"].lr) == ([30, 10], [1e-3, 1e-4])
    assert (st["student"].epochs, st["student"].lr) == ([50], [1e-3])
    assert st["student"].pairs == [["pool1", "pool1"], ["pool2", "pool2"], ["pool3", "pool3"], ["fc1_relu", "fc1_relu"]]
    assert st["student"].schedule == {"name": "critical_period", "init": 100.0, "decay": 0.7}
    assert st["aux_pkt"].pairs == [["linear:input", "fc1_relu"]]
    assert cfg.data.batch_size == 128 and cfg.data.augment
    assert all(s.restart_optimizer == "never" for s in cfg.stages) and st["student"].log_eps is None  # PKT's 1e-6
    paper = load_config(ROOT / "configs" / "cifar10_resnet18_to_verytiny.toml", ["mode=paper"])
    pst = {s.name: s for s in paper.stages}
    # the reference code: a new Adam every epoch for the student, one Adam per learning-rate phase for the
    # auxiliary teacher's stages (labels 50 + 30, PKT 30 + 10); plain logs in the PKT stages
    assert pst["student"].restart_optimizer == "epoch" and pst["student"].log_eps == 0.0
    assert pst["aux_labels"].restart_optimizer == "phase" and pst["aux_labels"].log_eps is None
    assert pst["aux_pkt"].restart_optimizer == "phase" and pst["aux_pkt"].log_eps == 0.0


def _image_folder(root: Path, per_class: dict[str, int], seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for c in range(10):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                img[..., c % 3] //= 4  # a little class signal
                Image.fromarray(img).save(d / f"{i:04d}.png")


@pytest.mark.parametrize("mode", ["default", "paper"])
def test_resnet_pipeline_end_to_end_on_small_folder(tmp_path, capsys, mode):
    _image_folder(tmp_path / "imgs", {"train": 3, "test": 2})
    weights = str(SHARED_TEACHER) if SHARED_TEACHER.exists() else ""
    sets = ["data.name=imagefolder", f"data.root={tmp_path / 'imgs'}", f"models.teacher.weights='{weights}'",
            "stages.aux_labels.epochs=[1, 1]", "stages.aux_pkt.epochs=[1, 1]", "stages.student.epochs=[2]",
            "stages.baseline.epochs=[1]", "data.batch_size=16", f"mode={mode}", "device=cpu", "eval.cost=static"]
    args = ["run", str(ROOT / "configs" / "cifar10_resnet18_to_verytiny.toml"), "--out", str(tmp_path / "run"), "--no-progress"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert list(res["models"]) == ["teacher", "aux", "student", "baseline"]
    assert res["models"]["aux"]["arch"] == "verytiny" and res["models"]["aux"]["width"] == 2.0
    assert res["models"]["teacher"]["dim"] == 512 and res["models"]["student"]["dim"] == 64
    assert res["stages"]["student"]["pairs"][0] == ["pool1", "pool1"]
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # student and baseline train as one cohort: their epochs' lines interleave
    assert [r["stage"] for r in recs] == ["aux_labels"] * 2 + ["aux_pkt"] * 2 + ["student", "baseline", "student"]
    assert all(np.isfinite(r["loss"]) for r in recs)


def test_teacher_run_elsewhere_workflow_on_small_folder(tmp_path, capsys):
    """The two documented commands: export the ResNet-18's features, then train from the file alone."""
    _image_folder(tmp_path / "imgs", {"train": 3, "test": 2})
    weights = str(SHARED_TEACHER) if SHARED_TEACHER.exists() else ""
    data = ["--set", "data.name=imagefolder", "--set", f"data.root={tmp_path / 'imgs'}", "--set", "device=cpu"]
    feats = tmp_path / "resnet18_linear_input.npz"
    assert main(["features", str(ROOT / "configs" / "cifar10_resnet18_to_verytiny.toml"), "--model", "teacher",
                 "--taps", "linear:input", "--out", str(feats), "--set", f"models.teacher.weights='{weights}'", *data]) == 0
    sets = [f"models.teacher.features={feats}", "stages.aux_labels.epochs=[1, 1]", "stages.aux_pkt.epochs=[1, 1]",
            "stages.student.epochs=[1]", "data.batch_size=16"]
    args = ["run", str(ROOT / "configs" / "cifar10_aux_from_features.toml"), "--out", str(tmp_path / "run"), "--no-progress", *data]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert list(res["models"]) == ["student", "aux"] or set(res["models"]) == {"student", "aux"}
    assert res["stages"]["aux_pkt"]["teacher_precomputed"] and res["stages"]["aux_pkt"]["augment"] is False
    assert res["stages"]["student"]["augment"] is True


def test_cifar_comparison_config_runs_every_method_on_small_folder(tmp_path):
    """Every method of compare_cifar10.toml (AT/FitNets maps on the ResNet, KD on logits, ablations) trains."""
    from flowkd.pipeline import Pipeline

    _image_folder(tmp_path / "imgs", {"train": 2, "test": 1})
    cfg = load_config(ROOT / "configs" / "compare_cifar10.toml",
                      ["data.name=imagefolder", f"data.root={tmp_path / 'imgs'}", "models.teacher.weights=''",
                       "device=cpu", "progress=false", "data.batch_size=20", "fast.amp=none", "eval.cost=static",
                       f"models.teacher.bank={tmp_path / 'banks'}"])
    for s in cfg.stages:
        s.epochs, s.lr = [1], [1e-3]
    res = Pipeline(cfg, tmp_path / "run", log=lambda *a: None).run()
    assert len(res["stages"]) == 15
    # the ResNet-18's students and the auxiliary's PKT stage read its bank of views; FitNets' hint one view
    banked = {k for k, v in res["stages"].items() if v.get("teacher_views")}
    assert banked == {"fitnet_hint", "kd", "fitnet", "at", "sp", "pkt_last", "flow_direct", "aux_pkt"}
    assert res["stages"]["fitnet_hint"]["teacher_views"] == 1 and res["stages"]["kd"]["teacher_views"] == 4
    assert list(res["stages"]["at"]["pairs"][0]) == ["layer1@map", "pool1@map"]
    assert res["stages"]["fitnet_hint"]["loss"] == "fitnet"
    for name, m in res["models"].items():
        assert 0 <= m["cosine"]["map"] <= 100, name
