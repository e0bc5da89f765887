"""Teachers as data: precomputed per-sample features (files, cached extractors) and their alignment checks."""

import json
from importlib import resources

import numpy as np
import pytest
import torch

from flowkd.cli import main
from flowkd.data.arrays import ArrayDataset, Loader
from flowkd.errors import FlowKDError
from flowkd.features import FeatureBank, load_features, save_features

TEACHER = """
seed = 0
progress = false
[data]
name = "digits"
batch_size = 64
[models.teacher]
arch = "mlp"
[[stages]]
name = "teacher"
kind = "supervised"
model = "teacher"
epochs = [2]
lr = [1e-3]
"""

STUDENT = """
seed = 0
progress = false
[data]
name = "digits"
batch_size = 64
{data}
[models.teacher]
{teacher}
[models.student]
arch = "digits_cnn"
[[stages]]
name = "student"
kind = "distill"
model = "student"
teacher = "teacher"
pairs = [["{tap}", "fc1_relu"]]
epochs = [3]
lr = [1e-3]
[eval]
models = ["student"]
"""


def _write(path, text):
    path.write_text(text)
    return str(path)


def _losses(run):
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


@pytest.fixture(scope="module")
def trained_teacher(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("teacher")
    assert main(["run", _write(tmp / "t.toml", TEACHER), "--out", str(tmp / "run"), "--no-progress"]) == 0
    return tmp / "run" / "checkpoints" / "teacher.pt"


def _student_cfg(tmp_path, name, teacher, tap="fc2_relu", data=""):
    return _write(tmp_path / f"{name}.toml", STUDENT.format(teacher=teacher, tap=tap, data=data))


def test_exported_features_train_exactly_like_the_live_teacher(tmp_path, capsys, trained_teacher):
    live = _student_cfg(tmp_path, "live", f'arch = "mlp"\nweights = "{trained_teacher}"')
    assert main(["features", live, "--model", "teacher", "--taps", "fc2_relu", "fc1_relu",
                 "--out", str(tmp_path / "f.npz")]) == 0
    assert "1347 rows" in capsys.readouterr().out
    with np.load(tmp_path / "f.npz") as z:
        assert set(z.files) == {"fc2_relu", "fc1_relu", "labels"} and z["fc2_relu"].shape == (1347, 256)
    from_file = _student_cfg(tmp_path, "file", f'features = "{tmp_path / "f.npz"}"')
    cached = _student_cfg(tmp_path, "pre", f'arch = "mlp"\nweights = "{trained_teacher}"\nprecompute = true')
    for cfg, out in [(live, "a"), (from_file, "b"), (cached, "c")]:
        assert main(["run", cfg, "--out", str(tmp_path / out), "--no-progress"]) == 0
    a, b, c = (_losses(tmp_path / o) for o in "abc")
    assert len(a) == 3 and a[0] != a[-1]
    np.testing.assert_allclose(b, a, rtol=1e-5)
    np.testing.assert_allclose(c, a, rtol=1e-5)
    res = [json.loads((tmp_path / o / "results.json").read_text()) for o in "abc"]
    for r in res[1:]:
        assert abs(r["models"]["student"]["cosine"]["map"] - res[0]["models"]["student"]["cosine"]["map"]) < 0.05  # mAP points
    assert res[1]["stages"]["student"]["teacher_precomputed"] and not res[0]["stages"]["student"]["teacher_precomputed"]
    assert "teacher" not in res[1]["models"]


def test_a_subset_run_takes_its_rows_from_the_full_split_file(tmp_path):
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 1, 4, 4), dtype=torch.uint8, generator=gen)
    labels = torch.arange(40) % 4
    full = ArrayDataset(images, labels, list("abcd"))
    feats = torch.randn(40, 6, generator=gen)
    sub = full.subset([3, 7, 8, 20, 39]).subset([4, 0, 2])  # nested subsets keep the original rows
    assert sub.source_rows().tolist() == [39, 3, 8] and sub.source_len == 40
    bank = FeatureBank({"f": feats}, labels).align(sub)
    loader = Loader(sub, batch_size=2, shuffle=True, seed=1)
    seen = []
    for y, index in ((b.y, b.index) for b in loader):
        got = bank.lookup(index)["f"]
        for row, g, yy in zip(sub.source_rows()[index].tolist(), got, y):  # naive: the file's row, by hand
            assert torch.equal(g, feats[row]) and int(yy) == int(labels[row])
            seen.append(row)
    assert sorted(seen) == [3, 8, 39]


def test_loader_index_names_the_batch_samples():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 2, 2).contiguous()
    data = ArrayDataset(images, torch.zeros(10, dtype=torch.long), ["a"], mean=(0.0,), std=(1 / 255,))
    for x, index in ((b.x, b.index) for b in Loader(data, batch_size=3, shuffle=True, seed=4)):
        assert torch.equal(x[:, 0, 0, 0].round().long(), index)


def _digits_like(n=30):
    return ArrayDataset(torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.arange(n) % 3, list("abc"))


@pytest.mark.parametrize("make, message", [
    (lambda p: np.save(p / "f.npy", np.zeros((29, 4), np.float32)) or p / "f.npy", "29 rows but the training split has 30"),
    (lambda p: np.savez(p / "f.npz", f=np.zeros((30, 4), np.float32), labels=(np.arange(30) + 1) % 3) or p / "f.npz",
     "labels differ from the training split's at 30 of 30 rows"),
    (lambda p: np.save(p / "f.npy", np.zeros(30, np.float32)) or p / "f.npy", "expected one row per sample"),
    (lambda p: np.save(p / "f.npy", np.full((30, 2), np.nan, np.float32)) or p / "f.npy", "non-finite values (first at row 0)"),
    (lambda p: np.save(p / "f.npy", np.array([object()] * 30)) or p / "f.npy", "cannot read teacher features"),
    (lambda p: ((p / "f.csv").write_text("1,2"), p / "f.csv")[1], "unknown format '.csv'"),
    (lambda p: p / "missing.npy", "teacher features file not found"),
    (lambda p: np.savez(p / "f.npz", a=np.zeros((30, 2)), b=np.zeros((31, 2))) or p / "f.npz", "different row counts"),
])
def test_bad_feature_files_fail_with_one_clear_message(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(FlowKDError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_features(path).align(_digits_like())


def test_labels_in_the_right_order_pass_and_a_one_row_shift_is_caught(tmp_path):
    labels = np.array([0, 1, 2, 2, 1, 0, 1, 2, 0, 0])
    data = ArrayDataset(torch.zeros(10, 1, 2, 2, dtype=torch.uint8), torch.from_numpy(labels), list("abc"))
    np.savez(tmp_path / "ok.npz", f=np.random.rand(10, 3).astype(np.float32), labels=labels)
    load_features(tmp_path / "ok.npz").align(data)
    np.savez(tmp_path / "shift.npz", f=np.random.rand(10, 3).astype(np.float32), labels=np.roll(labels, 1))
    with pytest.raises(FlowKDError, match=r"at 7 of 10 rows \(first: row 1\); the rows are not in the dataset"):
        load_features(tmp_path / "shift.npz").align(data)


def test_unknown_tap_of_a_features_file_names_the_ones_it_holds(tmp_path):
    np.savez(tmp_path / "f.npz", layer3=np.zeros((5, 2), np.float32), layer4=np.zeros((5, 2), np.float32))
    bank = load_features(tmp_path / "f.npz")
    with pytest.raises(FlowKDError, match="unknown tap 'layer5'.*it holds: layer3, layer4|unknown tap 'layer5'.*layer4, layer3"):
        bank.check_taps(["layer5"])


def test_save_and_load_round_trip_npz_and_safetensors(tmp_path):
    pytest.importorskip("safetensors")
    bank = FeatureBank({"a": torch.randn(7, 3), "b": torch.randn(7, 2, 2, 2)}, torch.arange(7) % 2)
    for name in ("f.npz", "f.safetensors"):
        save_features(tmp_path / name, bank)
        back = load_features(tmp_path / name)
        assert list(back.features) == ["a", "b"] or set(back.features) == {"a", "b"}
        for k in ("a", "b"):
            assert torch.equal(back.features[k], bank.features[k])
        assert torch.equal(back.labels, bank.labels)
    with pytest.raises(FlowKDError, match="written as .npz or .safetensors"):
        save_features(tmp_path / "f.npy", bank)
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*tmp"))


def test_cli_mismatched_feature_rows_exit_2_and_write_nothing(tmp_path, capsys):
    np.save(tmp_path / "f.npy", np.random.rand(1000, 8).astype(np.float32))
    cfg = _student_cfg(tmp_path, "bad", f'features = "{tmp_path / "f.npy"}"', tap="features")
    code = main(["run", cfg, "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("flowkd: error: teacher features") and "1000 rows but the training split has 1347 images" in err
    assert not (tmp_path / "run" / "results.json").exists() and not list(tmp_path.rglob("*.tmp"))


def test_precomputed_teacher_turns_augmentation_off_unless_asked(tmp_path, capsys):
    np.save(tmp_path / "f.npy", np.random.rand(1347, 8).astype(np.float32))
    cfg = _student_cfg(tmp_path, "aug", f'features = "{tmp_path / "f.npy"}"', tap="features", data="augment = true")
    assert main(["run", cfg, "--out", str(tmp_path / "a"), "--no-progress", "--set", "stages.student.epochs=[1]"]) == 0
    assert "trains without augmentation" in capsys.readouterr().out
    assert main(["run", cfg, "--out", str(tmp_path / "b"), "--no-progress", "--set", "stages.student.epochs=[1]",
                 "--set", "stages.student.augment=true"]) == 0
    a, b = (json.loads((tmp_path / o / "results.json").read_text())["stages"]["student"] for o in "ab")
    assert a["augment"] is False and b["augment"] is True


@pytest.mark.parametrize("teacher, message", [
    ('features = "x.npy"\narch = "mlp"', "excludes arch"),
    ('features = "x.npy"\nprecompute = true', "excludes precompute"),
])
def test_features_config_conflicts(tmp_path, capsys, teacher, message):
    cfg = _student_cfg(tmp_path, "c", teacher)
    assert main(["run", cfg, "--out", str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err


def test_precomputed_model_cannot_be_trained_or_evaluated(tmp_path, capsys):
    np.save(tmp_path / "f.npy", np.zeros((1347, 2), np.float32))
    cfg = _student_cfg(tmp_path, "c", f'features = "{tmp_path / "f.npy"}"', tap="features")
    assert main(["run", cfg, "--out", str(tmp_path / "r1"), "--set", "eval.models=['teacher']"]) == 2
    assert "no test-set features" in capsys.readouterr().err
    assert main(["run", cfg, "--out", str(tmp_path / "r2"), "--set", "stages.student.model=teacher"]) == 2
    assert "cannot be trained" in capsys.readouterr().err


def test_exporting_an_untrained_network_warns(tmp_path, capsys):
    cfg = _write(tmp_path / "t.toml", TEACHER)
    assert main(["features", cfg, "--model", "teacher", "--out", str(tmp_path / "f.npz")]) == 0
    assert "random initialisation" in capsys.readouterr().err
    assert main(["features", cfg, "--model", "nope", "--out", str(tmp_path / "g.npz")]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err and not (tmp_path / "g.npz").exists()


def test_a_switched_off_stage_of_a_precomputed_teacher_is_skipped(tmp_path, capsys):
    """The demo's teacher stage at 0 epochs (what `--set stages.teacher.epochs=[0]` gives) with the teacher
    given as a file: nothing to train, so the stage is skipped, not an error; at 1 epoch it is refused."""
    demo = str(resources.files("flowkd").joinpath("configs/digits_demo.toml"))
    assert main(["features", demo, "--model", "teacher", "--taps", "fc2_relu", "--out", str(tmp_path / "f.npz")]) == 0
    sets = [f"models.teacher.features={tmp_path / 'f.npz'}", "models.teacher.arch=''", "stages.teacher.epochs=[0]",
            "eval.models=['aux']"] + [f"stages.{s}.epochs=[1, 0]" for s in
                                      ("aux_labels", "aux_pkt", "student", "student_labels", "student_pkt")]

    def run(out, *extra):
        args = ["run", demo, "--out", str(tmp_path / out), "--no-progress"]
        for s in sets + list(extra):
            args += ["--set", s]
        return main(args)

    assert run("r") == 0
    assert "[teacher] skipped" in capsys.readouterr().out
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    assert "teacher" not in res["stages"] and res["stages"]["aux_pkt"]["teacher_precomputed"]
    assert run("r2", "stages.teacher.epochs=[1]") == 2
    assert "cannot be trained" in capsys.readouterr().err
