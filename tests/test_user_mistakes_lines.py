"""Issue 27: degenerate training refused, first-day tracebacks turned into one line, and unclear lines made
clear. The CLI prints one `flowkd: error:` line and exits 2; the API raises FlowKDError with the same words."""


import pytest
import torch
from torch import nn

import flowkd
from flowkd.cli import main
from helpers import DEMO, DEMO_TEXT, ZERO, one_error
from flowkd.config import config_from_toml
from flowkd.data.arrays import ArrayDataset
from flowkd.errors import FlowKDError
from flowkd.models import create_model




def run(out, *sets, extra=()):
    return main(["run", DEMO, "--out", str(out), "--no-progress", *extra, *sum((["--set", s] for s in sets), [])])


def image_folder(root, classes=("a", "b"), per_class=3, broken=None):
    from PIL import Image

    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.new("RGB", (8, 8), (40 * i, 100, 7)).save(root / split / c / f"{i}.png")
    if broken:
        (root / "train" / classes[0] / "0.png").write_bytes(b"not a png at all")
    return root


# ---- degenerate training ------------------------------------------------------------------------------

def test_batch_size_one_with_a_relational_loss_is_refused(tmp_path, capsys):
    one_error(capsys, run(tmp_path / "r", "data.batch_size=1"), "data.batch_size = 1", "a batch of one has no pairs",
              "data.batch_size >= 2")
    assert not (tmp_path / "r").exists()
    config_from_toml(DEMO_TEXT, ["data.batch_size=1", *ZERO])  # nothing distils: nothing to refuse


def test_a_model_teaching_itself_is_refused(capsys):
    with pytest.raises(FlowKDError, match="model 'student' is its own teacher"):
        config_from_toml(DEMO_TEXT, ["stages.student.teacher='student'"])
    s = create_model("digits_cnn", in_channels=1, in_size=8)
    flow = flowkd.InformationFlowLoss([("fc1_relu", "fc1_relu")])
    with pytest.raises(FlowKDError, match="the teacher is the student itself"):
        flowkd.DistillStep(s, s, flow)


def test_a_distill_stage_without_a_teacher_says_so():
    with pytest.raises(FlowKDError) as e:
        config_from_toml(DEMO_TEXT, ["stages.student.teacher=''"])
    assert "stage 'student' distils, and needs a teacher: add teacher = \"MODEL\"" in str(e.value)
    assert "unknown teacher ''" not in str(e.value)


def test_the_untrained_teacher_warning_says_truthfully_why(tmp_path, capsys):
    assert run(tmp_path / "r", *ZERO) == 0
    err = capsys.readouterr().err
    assert "its stage(s) aux_labels, aux_pkt before this one train 0 epochs" in err  # aux: trained, for 0 epochs
    assert "stage 'aux_pkt' learns from model 'teacher'" in err and "its stage(s) teacher before this one" in err


def test_one_class_data_is_refused(tmp_path, capsys):
    image_folder(tmp_path / "one", classes=("cats",))
    one_error(capsys, main(["init", "--data", str(tmp_path / "one"), "--teacher", "mlp", "--student", "digits_cnn",
                            "--out", str(tmp_path / "c.toml")]), "one class folder only", "two classes or more")
    cfg = tmp_path / "one.toml"
    cfg.write_text(f"[data]\nname = 'imagefolder'\nroot = '{tmp_path / 'one'}'\n[models.s]\narch = 'digits_cnn'\n"
                   "[[stages]]\nname = 's'\nmodel = 's'\nepochs = [1]\n")
    one_error(capsys, main(["run", str(cfg), "--out", str(tmp_path / "r"), "--no-progress"]),
              "holds one class only ('cats')", "every retrieval metric would read 100%")
    assert not (tmp_path / "r").exists() and not (tmp_path / "c.toml").exists()


# ---- tracebacks on first-day inputs ---------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["init", "--data", "digits", "--teacher", "mlp", "--student", "verytiny", "--out", "{tmp}/c.toml"],
    ["eval", "--model", "verytiny"],
    ["layers", "verytiny", "--in-size", "8"],
])
def test_the_readme_student_on_8x8_digits(tmp_path, capsys, args):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    one_error(capsys, main(args), "model 'verytiny': 8x8 images are too small", "at least 22x22", "digits_cnn")
    assert list(tmp_path.iterdir()) == []


def test_an_undecodable_image_when_init_inspects_the_folder(tmp_path, capsys):
    image_folder(tmp_path / "imgs", broken=True)
    one_error(capsys, main(["init", "--data", str(tmp_path / "imgs"), "--teacher", "mlp", "--student", "digits_cnn",
                            "--out", str(tmp_path / "c.toml")]), "cannot decode image", "0.png", "remove or replace it")


def test_a_py_factory_that_raises(tmp_path, capsys, monkeypatch):
    (tmp_path / "broken_factory.py").write_text("def make(num_classes=10, in_channels=3, in_size=32):\n"
                                                "    raise ValueError('depth must be even')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    one_error(capsys, main(["layers", "py:broken_factory:make"]), "model 'py:broken_factory:make'",
              "raised ValueError: depth must be even")


def test_features_of_a_model_built_for_other_images():
    model = create_model("digits_cnn", in_channels=1, in_size=8)
    data = ArrayDataset(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.tensor([0, 1, 0, 1]), ["a", "b"])
    with pytest.raises(FlowKDError, match="SmallCNN cannot run on these 3x8x8 images .*1 channels"):
        flowkd.evaluation.features_of(model, data)


def test_a_bug_of_ours_still_shows_its_traceback(monkeypatch):
    import flowkd.cli

    def bug(args):
        raise KeyError("internal")

    monkeypatch.setattr(flowkd.cli, "_models", bug)
    with pytest.raises(KeyError):
        main(["models"])


# ---- unclear lines ----------------------------------------------------------------------------------------

def test_resume_names_the_key_that_changed_and_ignores_evaluation_keys(tmp_path, capsys):
    assert run(tmp_path / "r", *ZERO) == 0
    capsys.readouterr()
    one_error(capsys, run(tmp_path / "r", *ZERO, "stages.student.lr=[0.02, 0.001]", extra=["--resume"]),
              "cannot resume with another config: stages.student.lr was [0.01, 0.001] when the run started and "
              "is [0.02, 0.001] now")
    assert run(tmp_path / "r", *ZERO, "eval.cost='none'", "eval.k=[5]", extra=["--resume"]) == 0


@pytest.mark.parametrize("save, fragment", [
    (lambda m, p: torch.save(m, p), "holds pickled Python objects (a whole model saved with torch.save(model)?)"),
    (lambda m, p: torch.save({"epoch": 3, "optimizer": {}}, p), "holds a dict ('epoch', 'optimizer') with no state_dict"),
])
def test_weights_files_that_are_not_a_state_dict_say_what_they_are(tmp_path, capsys, save, fragment):
    save(create_model("digits_cnn", in_channels=1, in_size=8), tmp_path / "w.pt")
    one_error(capsys, main(["eval", "--model", "digits_cnn", "--weights", str(tmp_path / "w.pt")]), fragment)


@pytest.mark.parametrize("wrap", [
    lambda sd: {"state_dict": sd, "epoch": 7, "optimizer": {"lr": 0.1}},
    lambda sd: {f"module.{k}": v for k, v in sd.items()},
    lambda sd: {"model_state_dict": {f"model.{k}": v for k, v in sd.items()}},
])
def test_training_script_checkpoints_and_wrapped_names_load(tmp_path, capsys, wrap):
    from flowkd.io import load_into

    src = create_model("digits_cnn", in_channels=1, in_size=8)
    torch.save(wrap(src.state_dict()), tmp_path / "w.pt")
    dst = create_model("digits_cnn", in_channels=1, in_size=8)
    load_into(dst, tmp_path / "w.pt", "digits_cnn")
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))


def test_a_tap_on_a_module_returning_a_tuple_is_refused():
    class Pair(nn.Module):
        def forward(self, x):
            return x, x * 2

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pair, self.fc = Pair(), nn.Linear(4, 2)

        def forward(self, x):
            a, b = self.pair(x)
            return self.fc(a + b)

    with pytest.raises(FlowKDError, match=r"tap 'pair': Pair returns a tuple of 2, not one tensor"):
        with flowkd.taps.Taps(Net(), ["pair"]) as taps:
            taps(torch.zeros(2, 4))
    with flowkd.taps.Taps(Net(), ["fc:input"]) as taps:  # what the message suggests works
        assert taps(torch.zeros(2, 4))[1]["fc:input"].shape == (2, 4)


def test_compare_repeated_seeds_name_the_seed_not_resume(tmp_path, capsys):
    one_error(capsys, main(["compare", DEMO, "--seeds", "0", "0", "--out", str(tmp_path / "c"),
                            "--results-dir", str(tmp_path / "res")]), "--seeds lists seed 0 twice")
    assert not (tmp_path / "c").exists()


def test_a_schedule_whose_weights_are_all_zero_is_refused():
    with pytest.raises(FlowKDError, match="every pair weight of its schedule is 0 at every epoch and ce_weight is 0"):
        config_from_toml(DEMO_TEXT, ["stages.student.schedule={ name = 'constant', weight = 0.0, final = 0.0 }"])
    config_from_toml(DEMO_TEXT, ["stages.student.schedule={ name = 'constant', weight = 0.0, final = 0.0 }",
                                "stages.student.ce_weight=1.0"])  # labels alone: a choice, not a mistake


def test_a_test_split_of_one_class_is_refused(tmp_path, capsys):
    one_error(capsys, run(tmp_path / "r", *ZERO, "data.test_subset=1"), "the test data (digits) holds one class only")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("damaged", ["state.json", "config.json"])
def test_a_damaged_run_folder_is_one_line(tmp_path, capsys, damaged):
    assert run(tmp_path / "r", *ZERO) == 0
    (tmp_path / "r" / damaged).write_text('{"completed": {')  # cut short
    capsys.readouterr()
    if damaged == "state.json":
        one_error(capsys, run(tmp_path / "r", *ZERO, extra=["--resume"]), "cannot read", "state.json",
                  "the run folder is damaged")
    else:
        one_error(capsys, main(["export", str(tmp_path / "r"), "--model", "student", "--out", str(tmp_path / "s.pt")]),
                  "cannot read", "config.json", "the run folder is damaged")


def test_a_command_line_mistake_is_one_line_too(capsys):
    with pytest.raises(SystemExit) as e:
        main(["init", "--epochs", "x", "--data", "digits"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["flowkd: error: argument --epochs: invalid int value: 'x' (see `flowkd init --help`)"]


def test_a_model_with_too_few_outputs_for_the_labels_in_the_api():
    model = create_model("digits_cnn", in_channels=1, in_size=8, num_classes=4)
    data = ArrayDataset(torch.zeros(20, 1, 8, 8, dtype=torch.uint8), torch.arange(20) % 10, [str(c) for c in range(10)])
    with pytest.raises(FlowKDError, match="SmallCNN gives 4 outputs per image, but the labels go up to 9"):
        flowkd.train(model, flowkd.Loader(data, 10), flowkd.SupervisedStep(model), epochs=[1], lr=[1e-3],
                     show_progress=False)
