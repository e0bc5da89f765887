"""What several test modules share: the embedded demo config, a `flowkd run` command line with overrides, and the
check that a command failed with one error line."""

from importlib import resources

DEMO = str(resources.files("flowkd").joinpath("configs/digits_demo.toml"))
DEMO_TEXT = resources.files("flowkd").joinpath("configs/digits_demo.toml").read_text()
# the demo's stages switched off: what checks before any training need, at no training cost
ZERO = ["stages.teacher.epochs=[0]", "stages.aux_labels.epochs=[0, 0]", "stages.aux_pkt.epochs=[0, 0]",
        "stages.student.epochs=[0, 0]", "stages.student_labels.epochs=[0, 0]", "stages.student_pkt.epochs=[0, 0]"]


def sets(overrides) -> list[str]:
    """``--set KEY=VALUE`` for each override."""
    return [a for s in overrides for a in ("--set", s)]


def run_args(out, overrides=(), *extra, config=DEMO) -> list[str]:
    """``flowkd run CONFIG --out OUT --no-progress --set ...`` (the demo config unless told)."""
    return ["run", str(config), "--out", str(out), "--no-progress", *sets(overrides), *extra]


def one_error(capsys, code, *fragments):
    """Exit 2 and exactly one stderr line ``flowkd: error: ...`` holding every fragment (warnings aside)."""
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if not ln.startswith("flowkd: warning:")]
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("flowkd: error: "), err
    for f in fragments:
        assert f in err[0], (f, err[0])
    return err[0]
