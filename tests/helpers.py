"""What several test modules share: the embedded demo config and a `flowkd run` command line with overrides."""

from importlib import resources

DEMO = str(resources.files("flowkd").joinpath("configs/digits_demo.toml"))


def sets(overrides) -> list[str]:
    """``--set KEY=VALUE`` for each override."""
    return [a for s in overrides for a in ("--set", s)]


def run_args(out, overrides=(), *extra, config=DEMO) -> list[str]:
    """``flowkd run CONFIG --out OUT --no-progress --set ...`` (the demo config unless told)."""
    return ["run", str(config), "--out", str(out), "--no-progress", *sets(overrides), *extra]
