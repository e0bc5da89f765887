"""The reading of results/compare_cifar10.md is computed, not written: each of the paper's claims compares two rows
of one run seed by seed (benchmarks/compare_cifar10_table.py). Checked here on made-up rows whose verdicts are
known."""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def table():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("compare_cifar10_table", BENCH / "compare_cifar10_table.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.path.remove(str(BENCH))


def _row(*values):
    return {"legacy cos mAP": {"values": list(values), "mean": sum(values) / len(values)}}


def test_a_claim_holds_only_when_the_row_is_above_on_every_seed(table):
    models = {"flow": _row(52.0, 51.0, 53.0), "labels": _row(37.0, 37.5, 36.0),
              "flow_constant": _row(51.0, 51.5, 52.0),   # above on two seeds of three: in part
              "aux_last": _row(53.0, 52.0, 54.0),        # always above the proposed: does not hold
              "kd": _row(40.0, 40.0, 40.0), "flow_direct": _row(50.0, 49.0, 52.5)}
    got = {c["claim"].split(" (")[0].split(":")[0]: c for c in table.claims(models)}
    labels = next(c for k, c in got.items() if k.startswith("distillation"))
    assert labels["verdict"] == "holds on every seed"
    assert labels["comparisons"][0]["diff"] == pytest.approx((15 + 13.5 + 17) / 3)
    assert next(c for k, c in got.items() if k.startswith("the critical period"))["verdict"] == "holds in part"
    assert next(c for k, c in got.items() if k.startswith("the intermediate"))["verdict"] == "does not hold"
    hetero = next(c for k, c in got.items() if k.startswith("heterogeneous"))
    assert [v["b"] for v in hetero["comparisons"]] == ["kd", "flow_direct"]  # only the rows the run has
    assert hetero["verdict"] == "holds on every seed"
    assert not any(k.startswith("flowkd's default mode") for k in got)  # no flow_default row: no claim


def test_the_comparison_is_seed_by_seed_not_of_means(table):
    v = table._versus({"a": _row(10.0, 30.0), "b": _row(20.0, 10.0)}, "a", "b")
    assert v["diff"] == pytest.approx(5.0) and v["above"] == 1 and v["seeds"] == 2


def test_the_searched_at_row_pairs_by_seed_and_replaces_at_in_the_heterogeneous_claim(table):
    """The AT row of its own run (only AT trained) joins the primary run by seed number, whatever the order of the
    seeds in either run, and the heterogeneous claim reads it instead of the digits-weight AT row."""
    at_doc = {"seeds": [2, 0, 1], "config": "configs/compare_cifar10.toml",
              "overrides": ['stages.at.schedule={name="constant",weight=10.0,final=10.0}'],
              "models": {"at": _row(30.0, 10.0, 20.0)}}
    row = table._at_searched({"seeds": [0, 2]}, at_doc)
    assert row["legacy cos mAP"]["values"] == [10.0, 30.0] and row["legacy cos mAP"]["mean"] == 20.0
    assert "weight 10 from the validation search" in row["label"]
    assert table._at_searched({"seeds": [0, 3]}, at_doc) is None  # a seed the AT run lacks: not joined
    models = {"flow": _row(50.0, 51.0), "at": _row(5.0, 5.0), "at_searched": row,
              **{d: _row(40.0, 40.0) for d in ("kd", "fitnet", "sp", "pkt_last", "flow_direct")}}
    het = next(c for c in table.claims(models) if c["claim"].startswith("heterogeneous"))
    assert {v["b"] for v in het["comparisons"]} == {"kd", "fitnet", "at_searched", "sp", "pkt_last", "flow_direct"}
