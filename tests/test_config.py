"""Typed TOML configuration: parsing, unknown keys, wrong types, overrides and cross-field validation."""

from __future__ import annotations

import copy
import re
import tomllib
from importlib import resources

import pytest

from flowkd.config import (Config, ModelConfig, StageConfig, apply_overrides, config_from_dict,
                           load_config)
from flowkd.errors import FlowKDError

DEMO = resources.files("flowkd").joinpath("configs/digits_demo.toml").read_text()


def write(tmp_path, text: str, name: str = "cfg.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def edit(old: str, new: str, text: str = DEMO, count: int = 1) -> str:
    """Replace ``old`` in the demo config, failing loudly if the demo changed under the test."""
    assert text.count(old) >= count, f"{old!r} not in the demo config"
    return text.replace(old, new, count)


def raises_naming(tmp_path, text: str, *fragments: str):
    with pytest.raises(FlowKDError) as e:
        load_config(write(tmp_path, text))
    msg = str(e.value)
    for f in fragments:
        assert f in msg, f"{f!r} not in {msg!r}"
    return msg


# --- the demo config --------------------------------------------------------------------------------

def test_demo_config_parses(tmp_path):
    cfg = load_config(write(tmp_path, DEMO))
    assert isinstance(cfg, Config)
    assert cfg.seed == 0 and cfg.device == "cpu"
    assert cfg.title.startswith("flowkd demo")
    assert cfg.data.name == "digits" and cfg.data.batch_size == 64 and cfg.data.test_fraction == 0.25
    assert cfg.data.augment is False and cfg.data.eval_batch_size == 1024  # defaults
    assert list(cfg.models) == ["teacher", "student", "aux", "student_labels", "student_pkt"]
    assert cfg.models["teacher"] == ModelConfig(arch="mlp", width=2.0)
    assert cfg.models["student"].arch == "digits_cnn" and cfg.models["student"].width == 1.0
    assert cfg.models["aux"] == ModelConfig(arch="", width=2.0, auxiliary_of="student")
    assert [s.name for s in cfg.stages] == ["teacher", "aux_labels", "aux_pkt", "student", "student_labels",
                                            "student_pkt"]
    assert all(isinstance(s, StageConfig) for s in cfg.stages)
    st = {s.name: s for s in cfg.stages}
    assert st["teacher"].kind == "supervised" and st["teacher"].epochs == [20] and st["teacher"].lr == [1e-3]
    assert st["aux_labels"].epochs == [15, 5] and st["aux_labels"].lr == [1e-3, 1e-4]
    assert st["student"].kind == "distill" and st["student"].teacher == "aux" and st["student"].pairs_from == "flow"
    assert st["student"].schedule == {"name": "critical_period", "init": 100.0, "decay": 0.7}
    assert st["student"].epochs == [25, 10] and st["student"].lr == [1e-2, 1e-3]
    assert st["teacher"].schedule == {"name": "constant"}  # default
    assert st["student_pkt"].teacher == "teacher" and st["student_pkt"].optimizer == "adam"
    assert cfg.eval.k == [10, 100] and cfg.eval.metrics == ["cosine", "euclidean"]


def test_minimal_config(tmp_path):
    cfg = load_config(write(tmp_path, 'seed = 3\n[models.a]\narch = "verytiny"\n'
                                      '[[stages]]\nname = "s"\nmodel = "a"\n'))
    assert cfg.seed == 3
    assert cfg.stages == [StageConfig(name="s", model="a")]
    assert cfg.stages[0].epochs == [10] and cfg.stages[0].lr == [1e-3]


# --- unknown keys -------------------------------------------------------------------------------------

def test_unknown_top_level_key(tmp_path):
    msg = raises_naming(tmp_path, "bogus = 1\n" + DEMO, "unknown config key 'bogus'")
    assert "seed" in msg and "stages" in msg  # lists the valid keys


def test_unknown_nested_key(tmp_path):
    raises_naming(tmp_path, edit("batch_size = 64", "batchsize = 3"), "unknown config key 'data.batchsize'",
                  "batch_size")


def test_unknown_key_in_a_stage(tmp_path):
    text = edit('name = "aux_labels"\n', 'name = "aux_labels"\nepoch = [3]\n')
    raises_naming(tmp_path, text, "unknown config key 'stages.aux_labels.epoch'", "epochs")


def test_unknown_key_in_a_model_and_in_a_schedule(tmp_path):
    raises_naming(tmp_path, edit('arch = "mlp"', 'arch = "mlp"\ndepth = 3'), "'models.teacher.depth'")
    raises_naming(tmp_path, edit("decay = 0.7 }", "decay = 0.7, floor = 1 }"),
                  "stages.student.schedule: schedule 'critical_period' takes no option 'floor'", "it takes: init, decay, final")


SCHEDULE = 'schedule = { name = "critical_period", init = 100.0, decay = 0.7 }'
PKT_STAGE = 'name = "student_pkt"\n'


@pytest.mark.parametrize("old, new, fragments", [
    # an option of another schedule: constant has no decay
    (SCHEDULE, 'schedule = { name = "constant", decay = 0.5 }',
     ("stages.student.schedule", "schedule 'constant' takes no option 'decay'", "it takes: weight, final")),
    (SCHEDULE, 'schedule = { name = "adaptive", init = 100.0, window = 3 }',
     ("schedule 'adaptive' takes no option 'window'", "tol, patience")),
    (SCHEDULE, "schedule = { init = 100.0 }", ("stage 'student'", "schedule needs a name", "critical_period")),
    (SCHEDULE, 'schedule = { name = "cosine" }', ("unknown schedule 'cosine'", "valid: adaptive, constant")),
    # PKT's own options on another loss are not silently ignored
    (PKT_STAGE, PKT_STAGE + 'loss = "kd"\nkernel = "cosine"\n',
     ("stage 'student_pkt'", "kernel apply to loss 'pkt' only", "'kd'")),
    (PKT_STAGE, PKT_STAGE + 'loss = "at"\ndivergence = "kl"\nlog_eps = 0.0\n', ("divergence, log_eps apply to loss 'pkt'",)),
    (PKT_STAGE, PKT_STAGE + 'loss = "kd"\nloss_options = { temp = 4.0 }\n',
     ("pair loss 'kd' takes no option 'temp'", "it takes: temperature")),
    (PKT_STAGE, PKT_STAGE + 'loss = "hinton"\n', ("unknown pair loss 'hinton'", "valid: at, fitnet, kd, pkt, sp")),
    (PKT_STAGE, PKT_STAGE + 'restart_optimizer = "stage"\n', ("restart_optimizer must be one of never, phase, epoch",)),
    (PKT_STAGE, PKT_STAGE + 'lr_anneal = "linear"\n', ("stage 'student_pkt'", "lr_anneal must be one of none, cosine")),
    (PKT_STAGE, PKT_STAGE + 'average_last = 1000\n', ("stage 'student_pkt'", "average_last must be a whole number")),
    (PKT_STAGE, PKT_STAGE + 'average_last = 2.5\n', ("stages.student_pkt.average_last' must be int, got 2.5",)),
])
def test_an_option_the_chosen_class_does_not_take_is_an_error(tmp_path, old, new, fragments):
    raises_naming(tmp_path, edit(old, new), *fragments)


def test_each_schedule_and_loss_takes_its_own_options(tmp_path):
    cfg = load_config(write(tmp_path, edit(SCHEDULE, 'schedule = { name = "adaptive", init = 50.0, decay = 0.5, tol = 0.02, patience = 3 }')))
    assert {s.name: s for s in cfg.stages}["student"].schedule["patience"] == 3
    cfg = load_config(write(tmp_path, edit(PKT_STAGE, PKT_STAGE + 'kernel = "cosine"\nlog_eps = 0.0\n')))
    from flowkd.config import pair_loss_options
    assert pair_loss_options({s.name: s for s in cfg.stages}["student_pkt"]) == {"kernel": "cosine", "log_eps": 0.0}


# --- wrong types ------------------------------------------------------------------------------------

@pytest.mark.parametrize("old,new,fragments", [
    ("batch_size = 64", 'batch_size = "x"', ("'data.batch_size'", "int", "'x'")),
    ("batch_size = 64", "batch_size = true", ("'data.batch_size'", "int")),
    ("batch_size = 64", "batch_size = 64.0", ("'data.batch_size'", "int")),
    ("epochs = [20]", "epochs = 5", ("'stages.teacher.epochs'", "list")),
    ("epochs = [20]", 'epochs = ["5"]', ("'stages.teacher.epochs[0]'", "int")),
    ("lr = [1e-3]\n", 'lr = [1e-3, "x"]\n', ("'stages.teacher.lr[1]'", "float")),
    ("test_fraction = 0.25", "test_fraction = 0.25\naugment = 1", ("'data.augment'", "bool", "1")),
    ('name = "digits"', "name = 3", ("'data.name'", "str")),
    ("seed = 0", "seed = [0]", ("'seed'", "int")),
    ('arch = "mlp"', 'arch = ["mlp"]', ("'models.teacher.arch'", "str")),
])
def test_wrong_types_name_the_key(tmp_path, old, new, fragments):
    raises_naming(tmp_path, edit(old, new), *fragments)


def test_table_expected():
    data = tomllib.loads(DEMO)
    data["data"] = 3
    with pytest.raises(FlowKDError, match=r"config key 'data' must be a table"):
        config_from_dict(data)
    data = tomllib.loads(DEMO)
    data["models"]["teacher"] = "mlp"
    with pytest.raises(FlowKDError, match=r"config key 'models.teacher' must be a table"):
        config_from_dict(data)


def test_int_accepted_where_float_expected(tmp_path):
    text = edit("width = 2.0                      # 512", "width = 2                      # 512")
    text = edit("lr = [1e-3]\n", "lr = [1]\n", text)
    text = edit("test_fraction = 0.25", "test_fraction = 0.25\nvalidation = 0", text)
    cfg = load_config(write(tmp_path, text))
    assert cfg.models["teacher"].width == 2.0 and type(cfg.models["teacher"].width) is float
    assert cfg.stages[0].lr == [1.0] and type(cfg.stages[0].lr[0]) is float
    assert cfg.data.validation == 0.0 and type(cfg.data.validation) is float


def test_bool_not_accepted_as_float(tmp_path):
    raises_naming(tmp_path, edit("test_fraction = 0.25", "test_fraction = true"), "'data.test_fraction'", "float")


# --- overrides -----------------------------------------------------------------------------------------

def test_apply_overrides_on_raw_dict():
    raw = tomllib.loads(DEMO)
    before = copy.deepcopy(raw)
    out = apply_overrides(raw, ["data.batch_size=32", "stages.student.epochs=[3]",
                                "stages.student.schedule.decay=0.5", "title=hello",
                                "data.name = cifar10", "models.student.width=1.5", "data.augment=true"])
    assert out["data"]["batch_size"] == 32 and type(out["data"]["batch_size"]) is int
    student = [s for s in out["stages"] if s["name"] == "student"][0]
    assert student["epochs"] == [3]
    assert student["schedule"] == {"name": "critical_period", "init": 100.0, "decay": 0.5}
    assert out["title"] == "hello"
    assert out["data"]["name"] == "cifar10"
    assert out["models"]["student"]["width"] == 1.5
    assert out["data"]["augment"] is True
    # untouched parts stay as they were
    assert [s for s in out["stages"] if s["name"] == "student_labels"][0] == \
        [s for s in before["stages"] if s["name"] == "student_labels"][0]
    assert out["data"]["test_fraction"] == before["data"]["test_fraction"]


def test_overrides_through_load_config(tmp_path):
    path = write(tmp_path, DEMO)
    cfg = load_config(path, ["data.batch_size=32", "stages.student.epochs=[3]", "stages.student.lr=[0.01]",
                             "stages.student.schedule.decay=0.5", "title=hello world",
                             "stages.teacher.optimizer=sgd"])
    st = {s.name: s for s in cfg.stages}
    assert cfg.data.batch_size == 32
    assert st["student"].epochs == [3] and st["student"].lr == [0.01]
    assert st["student"].schedule == {"name": "critical_period", "init": 100.0, "decay": 0.5}
    assert cfg.title == "hello world"
    assert st["teacher"].optimizer == "sgd"
    assert st["aux_labels"].epochs == [15, 5]  # other stages untouched


def test_override_creates_a_new_section_entry(tmp_path):
    cfg = load_config(write(tmp_path, DEMO), ["models.extra.arch=tiny"])
    assert cfg.models["extra"] == ModelConfig(arch="tiny")


def test_override_errors(tmp_path):
    path = write(tmp_path, DEMO)
    with pytest.raises(FlowKDError, match=r"no entry named 'nope' in stages"):
        load_config(path, ["stages.nope.epochs=[3]"])
    with pytest.raises(FlowKDError, match=r"override 'data\.batch_size' must look like key\.path=value|"
                                          r"'data\.batch_size' must look like"):
        load_config(path, ["data.batch_size"])
    with pytest.raises(FlowKDError, match=r"must name a field of a list entry"):
        load_config(path, ["stages.student=3"])
    # the override's type is checked like the file's
    with pytest.raises(FlowKDError, match=r"'data\.batch_size' must be int, got 'big'"):
        load_config(path, ["data.batch_size=big"])
    with pytest.raises(FlowKDError, match=r"unknown config key 'data\.batchsize'"):
        load_config(path, ["data.batchsize=3"])
    # epochs changed without lr: the lengths disagree
    with pytest.raises(FlowKDError, match=r"stage 'student'.*epochs \[3\].*lr \[0\.01, 0\.001\]"):
        load_config(path, ["stages.student.epochs=[3]"])


def test_override_through_a_scalar_is_a_user_error(tmp_path):
    with pytest.raises(FlowKDError, match="seed"):
        load_config(write(tmp_path, DEMO), ["seed.x=1"])


# --- validation ------------------------------------------------------------------------------------

@pytest.mark.parametrize("old,new,pattern", [
    ('model = "teacher"\nepochs', 'model = "ghost"\nepochs',
     r"stage 'teacher': unknown model 'ghost'; models: teacher, student, aux"),
    ('teacher = "aux"', 'teacher = "ghost"', r"stage 'student': unknown teacher 'ghost'"),
    ('name = "aux_pkt"', 'name = "aux_labels"', r"stage name 'aux_labels' is used twice"),
    ('epochs = [15, 5]', 'epochs = [15]', r"stage 'aux_labels': epochs \[15\] and lr \[0\.001, 0\.0001\]"),
    ('epochs = [20]\nlr = [1e-3]', 'epochs = []\nlr = []', r"stage 'teacher': epochs \[\]"),
    ('epochs = [20]', 'epochs = [-1]', r"stage 'teacher': epochs must be whole numbers >= 0, got \[-1\]"),
    ('k = [10, 100]', 'k = [10, 100]\nmetrics = ["cosine", "manhattan"]', r"unknown metric 'manhattan'"),
    ('k = [10, 100]', 'k = [10]\nmodels = ["ghost"]', r"eval\.models: unknown model 'ghost'"),
    ('kind = "supervised"\nmodel = "teacher"', 'kind = "finetune"\nmodel = "teacher"',
     r"stage 'teacher': unknown kind 'finetune'"),
    ('pairs_from = "flow"', 'pairs_from = "all"', r"stage 'student': pairs_from must be"),
    ('pairs_from = "flow"', 'pairs = [["fc1_relu"]]', r"stage 'student': each of pairs"),
    ('auxiliary_of = "student"', 'auxiliary_of = "ghost"', r"model 'aux': auxiliary_of names unknown model 'ghost'"),
    ('auxiliary_of = "student"', 'auxiliary_of = ""', r"model 'aux' needs an arch"),
    ('name = "teacher"\nkind', 'kind', r"every \[\[stages\]\] entry needs a name"),
])
def test_validation_errors(tmp_path, old, new, pattern):
    with pytest.raises(FlowKDError, match=pattern):
        load_config(write(tmp_path, edit(old, new)))


def test_missing_config_file(tmp_path):
    missing = tmp_path / "nowhere" / "cfg.toml"
    with pytest.raises(FlowKDError, match=r"config file not found: .*" + re.escape(str(missing))):
        load_config(missing)
    with pytest.raises(FlowKDError, match="config file not found"):
        load_config(tmp_path)  # a directory is not a file


def test_invalid_toml(tmp_path):
    path = write(tmp_path, DEMO + "\n[data\nbatch_size = \n")
    with pytest.raises(FlowKDError, match=r"cfg\.toml: invalid TOML") as e:
        load_config(path)
    assert "\n" not in str(e.value)
