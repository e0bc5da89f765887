"""The torch HOG teacher against scikit-image's hog on real images, and as a teacher in a pipeline."""

import json
from importlib import resources

import numpy as np
import pytest
import torch

from flowkd.cli import main
from flowkd.models import create_model
from flowkd.models.hog import HOG

skimage = pytest.importorskip("skimage")
from skimage.feature import hog as sk_hog  # noqa: E402


def _patches():
    img = skimage.data.astronaut()  # a real photograph, 512x512 RGB
    return np.stack([img[r:r + 32, c:c + 32] for r in (0, 100, 200, 300) for c in (50, 250, 400)])


@pytest.mark.parametrize("cell, block", [(8, 2), (8, 3), (4, 2)])
def test_rgb_matches_scikit_image(cell, block):
    patches = _patches()
    ours = HOG(9, cell, block)(torch.from_numpy(patches).permute(0, 3, 1, 2).float())
    ref = np.stack([sk_hog(p, orientations=9, pixels_per_cell=(cell, cell), cells_per_block=(block, block),
                           block_norm="L2-Hys", channel_axis=-1) for p in patches])
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-6)


def test_gray_digits_match_scikit_image():
    from sklearn.datasets import load_digits

    imgs = load_digits().images[:50]  # real 8x8 handwritten digits
    ours = create_model("hog", in_channels=1, in_size=8)(torch.from_numpy(imgs)[:, None].float())
    ref = np.stack([sk_hog(im, orientations=9, pixels_per_cell=(2, 2), cells_per_block=(2, 2),
                           block_norm="L2-Hys") for im in imgs])
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-6)


def test_hog_teacher_pipeline_on_digits(tmp_path, capsys):
    demo = str(resources.files("flowkd").joinpath("configs/digits_demo.toml"))
    sets = ["models.teacher.arch=hog", "stages.teacher.epochs=[0]", "stages.aux_labels.epochs=[1, 1]",
            "stages.aux_pkt.epochs=[2, 1]", "stages.aux_pkt.pairs=[['descriptor', 'fc1_relu']]",
            "stages.student.epochs=[2, 1]", "stages.student_labels.epochs=[1]", "stages.student_labels.lr=[1e-3]",
            "stages.student_pkt.epochs=[1]", "stages.student_pkt.lr=[1e-3]",
            "eval.models=['teacher', 'aux', 'student']"]
    args = ["run", demo, "--out", str(tmp_path / "run"), "--no-progress"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["models"]["teacher"]["arch"] == "hog" and res["models"]["teacher"]["dim"] == 324
    assert res["models"]["teacher"]["params"] == 0 and "head_acc" not in res["models"]["teacher"]
    assert res["models"]["teacher"]["cosine"]["map"] > 30  # HOG alone already retrieves digits well above chance
    assert res["stages"]["aux_pkt"]["pairs"] == [["descriptor", "fc1_relu"]]


def test_hog_computed_once_trains_like_hog_per_batch(tmp_path):
    """``precompute = true``: the descriptor of every augmentation-free training image is computed once and
    kept on the device; training from it equals computing HOG per batch on the same (unaugmented) images."""
    demo = str(resources.files("flowkd").joinpath("configs/digits_demo.toml"))
    base = ["models.teacher.arch=hog", "stages.teacher.epochs=[0]", "stages.aux_labels.epochs=[0, 0]",
            "stages.aux_pkt.epochs=[2, 1]", "stages.aux_pkt.pairs=[['descriptor', 'fc1_relu']]",
            "stages.student.epochs=[0, 0]", "stages.student_labels.epochs=[0, 0]", "stages.student_pkt.epochs=[0, 0]",
            "eval.models=['aux']", "stages.aux_pkt.augment=false"]
    losses = {}
    for name, extra in [("per_batch", []), ("once", ["models.teacher.precompute=true"])]:
        args = ["run", demo, "--out", str(tmp_path / name), "--no-progress"]
        for s in base + extra:
            args += ["--set", s]
        assert main(args) == 0
        recs = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        losses[name] = [r["loss"] for r in recs if r["stage"] == "aux_pkt"]
        res = json.loads((tmp_path / name / "results.json").read_text())
        assert res["stages"]["aux_pkt"]["teacher_precomputed"] is (name == "once")
    assert len(losses["once"]) == 3
    np.testing.assert_allclose(losses["once"], losses["per_batch"], rtol=1e-5)
