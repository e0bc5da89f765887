"""Issue 27, numbers out of range and untyped options: every numeric option (TOML, --set, a CLI flag, an API
argument) is checked where it enters, and the one line names the option and its range. Nothing trains."""


import pytest

from flowkd.checks import Range, check_number
from flowkd.cli import main
from helpers import DEMO, DEMO_TEXT, one_error
from flowkd.config import config_from_toml
from flowkd.errors import FlowKDError




@pytest.mark.parametrize("override, message", [
    ("models.student.width=-1.0", "models.student.width must be a number > 0, got -1.0"),
    ("models.student.width=0", "models.student.width must be a number > 0, got 0"),
    ("stages.student.schedule={ name = 'critical_period', init = -5.0, decay = 2.0 }",
     "stages.student.schedule.init must be a number >= 0, got -5.0"),
    ("stages.student.schedule={ name = 'critical_period', decay = 2.0 }",
     "stages.student.schedule.decay must be a number in [0, 1], got 2.0"),
    ("stages.student.schedule={ name = 'critical_period', decay = 'abc' }",
     "stages.student.schedule.decay must be a number in [0, 1], got 'abc'"),
    ("stages.student.schedule={ name = 'adaptive', patience = 0.5 }",
     "stages.student.schedule.patience must be a whole number >= 1, got 0.5"),
    ("stages.student.schedule={ name = 'constant', weight = -1.0 }",
     "stages.student.schedule.weight must be a number >= 0, got -1.0"),
    ("stages.student.ce_weight=-1.0", "stages.student.ce_weight must be a number >= 0, got -1.0"),
    ("stages.student.weight_decay=-0.1", "stages.student.weight_decay must be a number >= 0"),
    ("stages.student.log_eps=-1e-6", "stages.student.log_eps must be a number >= 0"),
    ("stages.student_pkt.loss='kd'", None),
    ("data.train_subset=-5", "data.train_subset must be a whole number >= 0, got -5"),
    ("data.test_subset=-1", "data.test_subset must be a whole number >= 0, got -1"),
    ("data.batch_size=0", "data.batch_size must be a whole number >= 1, got 0"),
    ("data.eval_batch_size=-3", "data.eval_batch_size must be a whole number >= 1, got -3"),
    ("data.test_fraction=1.0", "data.test_fraction must be a number in (0, 1), got 1.0"),
    ("data.validation=1.0", "data.validation must be a number in [0, 1), got 1.0"),
    ("eval.k=[10, 0]", "eval.k must be a list of whole numbers, each >= 1, got [10, 0]"),
    ("eval.cost_budget_s=0", "eval.cost_budget_s must be a number > 0"),
    ("analysis.probe_size=1", "analysis.probe_size must be a whole number >= 2, got 1"),
    ("seed=-1", "seed must be a whole number >= 0, got -1"),
    ("stages.student.lr=[nan, 1e-4]", "learning rates must be finite numbers > 0"),
])
def test_every_config_number_has_a_range_named_in_the_message(override, message):
    if message is None:  # a valid change, for contrast
        config_from_toml(DEMO_TEXT, [override])
        return
    with pytest.raises(FlowKDError) as e:
        config_from_toml(DEMO_TEXT, [override])
    assert message in str(e.value), str(e.value)


@pytest.mark.parametrize("stage, fragment", [
    ("loss = 'kd'\nloss_options = { temperature = 0.0 }", "stages.s.loss_options.temperature must be a number > 0"),
    ("loss = 'kd'\nloss_options = { temperature = 'hot' }", "stages.s.loss_options.temperature must be a number > 0, got 'hot'"),
    ("loss = 'fitnet'\nloss_options = { kernel_size = 0 }", "stages.s.loss_options.kernel_size must be a whole number >= 1"),
    ("loss = 'at'\nloss_options = { p = -2.0 }", "stages.s.loss_options.p must be a number > 0"),
    ("loss_options = { log_eps = -1.0 }", "stages.s.loss_options.log_eps must be a number >= 0"),
    ("loss_options = { kernel = 3 }", "stages.s.loss_options.kernel must be a string, got 3"),
])
def test_loss_options_are_typed_by_the_losss_parameters(stage, fragment):
    text = ("[models.t]\narch = 'mlp'\n[models.s]\narch = 'digits_cnn'\n[[stages]]\nname = 's'\nkind = 'distill'\n"
            f"model = 's'\nteacher = 't'\n{stage}\n")
    with pytest.raises(FlowKDError) as e:
        config_from_toml(text)
    assert fragment in str(e.value), str(e.value)


def test_the_api_checks_the_same_ranges():
    from flowkd import losses, schedules
    from flowkd.models import create_model

    with pytest.raises(FlowKDError, match=r"CriticalPeriod.init must be a number >= 0, got -5.0"):
        schedules.CriticalPeriod(init=-5.0)
    with pytest.raises(FlowKDError, match=r"CriticalPeriod.decay must be a number in \[0, 1\], got 'abc'"):
        schedules.CriticalPeriod(decay="abc")
    with pytest.raises(FlowKDError, match="AdaptiveCriticalPeriod.patience must be a whole number >= 1"):
        schedules.AdaptiveCriticalPeriod(patience=0)
    with pytest.raises(FlowKDError, match="kd.temperature must be a number > 0"):
        losses.HintonKD(temperature=-1.0)
    with pytest.raises(FlowKDError, match="pkt.log_eps must be a number >= 0"):
        losses.PKTLoss(log_eps=-1.0)
    with pytest.raises(FlowKDError, match="kd.temperature must be a number > 0"):
        losses.make_pair_loss("kd", temperature=0)
    with pytest.raises(FlowKDError, match="model 'verytiny': width must be a number > 0, got -1.0"):
        create_model("verytiny", width=-1.0)
    assert schedules.CriticalPeriod(init=5).init == 5  # a whole number is a number
    assert losses.PKTLoss(log_eps=None).log_eps is None


@pytest.mark.parametrize("value, ok", [(0, False), (1, True), (2.5, False), (True, False), (float("nan"), False)])
def test_check_number_and_its_range_text(value, ok):
    if ok:
        assert check_number("n", value, ">= 1", whole=True) == value
    else:
        with pytest.raises(FlowKDError, match="n must be a whole number >= 1"):
            check_number("n", value, ">= 1", whole=True)
    assert 0.0 in Range("[0, 1)") and 1.0 not in Range("[0, 1)") and 0.0 not in Range("> 0") and 1 in Range("<= 1")


@pytest.mark.parametrize("args, fragment", [
    (["init", "--data", "digits", "--teacher", "mlp", "--student", "digits_cnn", "--out", "{tmp}/c.toml", "--epochs", "0"],
     "--epochs must be a whole number >= 1, got 0"),
    (["export", "{tmp}", "--model", "student", "--out", "{tmp}/s.onnx", "--queries", "0"],
     "--queries must be a whole number >= 1, got 0"),
    (["export", "{tmp}", "--model", "student", "--out", "{tmp}/s.onnx", "--database", "-5"],
     "--database must be a whole number >= 1, got -5"),
    (["export", "{tmp}", "--model", "student", "--out", "{tmp}/s.onnx", "--atol", "-1"], "--atol must be a number >= 0"),
    (["export", "{tmp}", "--model", "student", "--out", "{tmp}/s.onnx", "--calibration", "0"], "--calibration must be"),
    (["layers", "digits_cnn", "--width", "-1"], "model 'digits_cnn': width must be a number > 0, got -1.0"),
    (["layers", "digits_cnn", "--in-channels", "0"], "in_channels must be a whole number >= 1, got 0"),
    (["layers", "digits_cnn", "--num-classes", "0"], "num_classes must be a whole number >= 1, got 0"),
    (["data", "fetch", "cifar10", "--root", "{tmp}/d", "--timeout", "0"], "--timeout must be a number > 0"),
    (["run", DEMO, "--out", "{tmp}/run", "--set", "data.batch_size=-1"], "data.batch_size must be a whole number >= 1"),
    (["demo", "--seed", "-1", "--out", "{tmp}/demo"], "seed must be a whole number >= 0, got -1"),
])
def test_cli_flags_out_of_range_fail_before_any_file(tmp_path, capsys, args, fragment):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    one_error(capsys, main(args), fragment)
    assert list(tmp_path.iterdir()) == []
