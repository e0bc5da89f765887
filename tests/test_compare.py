"""`flowkd compare`: several seeds of one config, aggregated as mean ± std, table + JSON + chart."""

import json
import statistics

import pytest

from flowkd.cli import main
from flowkd.compare import aggregate
from flowkd.config import load_config

CONFIG = """
title = "tiny comparison"
device = "cpu"
progress = false
[data]
name = "digits"
batch_size = 128
[models.teacher]
arch = "mlp"
[models.labels]
arch = "digits_cnn"
label = "labels only"
[models.kd]
arch = "digits_cnn"
label = "Hinton KD"
[models.at]
arch = "digits_cnn"
[[stages]]
name = "teacher"
model = "teacher"
epochs = [1]
[[stages]]
name = "labels"
model = "labels"
epochs = [1]
[[stages]]
name = "kd"
kind = "distill"
model = "kd"
teacher = "teacher"
pairs = [["head", "fc2"]]
loss = "kd"
loss_options = { temperature = 4.0 }
schedule = { name = "constant", final = 0.9 }
ce_weight = 0.1
epochs = [1]
[[stages]]
name = "at"
kind = "distill"
model = "at"
teacher = "labels"
pairs = [["pool1@map", "pool1@map"], ["pool2@map", "pool2@map"]]
loss = "at"
schedule = { name = "constant", weight = 1000.0, final = 1000.0 }
ce_weight = 1.0
epochs = [1]
"""


def test_aggregate_mean_and_std():
    def res(v):
        return {"models": {"m": {"label": "M", "params": 3, "cosine": {"map": v, "precision_at": {10: v + 1}},
                                 "euclidean": {"map": v - 1}, "ncm_acc": 50.0}}}
    agg = aggregate([res(10.0), res(14.0), res(15.0)])["m"]
    assert agg["cos mAP"]["mean"] == pytest.approx(13.0)
    assert agg["cos mAP"]["std"] == pytest.approx(statistics.stdev([10, 14, 15]))
    assert agg["cos P@10"]["values"] == [11.0, 15.0, 16.0]
    assert "head acc" not in agg and agg["NCM acc"]["std"] == 0.0


def test_a_model_the_same_on_every_seed_shows_no_spread_and_the_table_says_how_it_was_made(tmp_path):
    from flowkd.compare import render

    def res(v, w):
        row = lambda x: {"label": "x", "params": 3, "cosine": {"map": x, "legacy": {"map": x - 1}},  # noqa: E731
                         "euclidean": {"map": x - 2}, "ncm_acc": 50.0}
        return {"models": {"aux": row(v), "student": row(w)}}
    doc = {"title": "t", "config": "configs/c.toml", "overrides": ["mode=paper"], "mode": "paper", "seeds": [0, 1, 2],
           "machine": {"device": "cpu"}, "wall_s": 9.0, "stage_wall_s": {"a": [5.0, 6.0, 7.0], "b": [5.0, 6.0, 7.0]},
           "models": aggregate([res(60.0, 50.0), res(60.0, 50.4), res(60.0000001, 50.9)])}
    table = render(doc, tmp_path / "compare_t")
    aux, student = (next(line for line in table.splitlines() if line.startswith(f"| x | 3 | {v}")) for v in ("60.00", "50.43"))
    assert "60.00 ¹" in aux and "±" not in aux and "50.43 ± 0.45" in student and "\n¹ the same values" in table
    assert "NCM acc" in table and "50.00 ± 0.00" in student  # one equal column alone is not "one model"
    assert "mode: paper" in table and "seed 0: 5 s, seed 1: 6 s, seed 2: 7 s" in table
    assert (tmp_path / "compare_t.md").read_text() == table and (tmp_path / "compare_t.png").is_file()


def test_compare_cli_runs_every_method_over_seeds(tmp_path, capsys):
    cfg = tmp_path / "compare_tiny.toml"
    cfg.write_text(CONFIG)
    load_config(cfg)  # valid as a plain pipeline config too
    code = main(["compare", str(cfg), "--seeds", "0", "1", "--out", str(tmp_path / "runs"),
                 "--results-dir", str(tmp_path / "results"), "--quiet"])
    assert code == 0
    doc = json.loads((tmp_path / "results" / "compare_tiny.json").read_text())
    assert doc["seeds"] == [0, 1] and set(doc["models"]) == {"teacher", "labels", "kd", "at"}
    for seed in (0, 1):
        one = json.loads((tmp_path / "runs" / f"seed{seed}" / "results.json").read_text())
        assert doc["models"]["kd"]["cos mAP"]["values"][seed] == one["models"]["kd"]["cosine"]["map"]
    # different seeds give different students
    assert len(set(doc["models"]["labels"]["cos mAP"]["values"])) == 2
    md = (tmp_path / "results" / "compare_tiny.md").read_text()
    assert "| Hinton KD |" in md and "±" in md
    assert (tmp_path / "results" / "compare_tiny.png").stat().st_size > 1000
    assert "| labels only |" in capsys.readouterr().out


def test_the_provenance_says_how_each_stage_trained_when_the_runs_record_it():
    from flowkd.compare import provenance_line

    on = lambda w, t, r=False: {"workers": w, "threads_per_worker": t, "resumed": r, "load_avg": [0.1, 0.1, 0.1]}  # noqa: E731
    doc = {"config": "c.toml", "seeds": [0, 1], "stage_wall_s": {"aux": [100.4, 90.0], "off": [0.0, 0.0], "s": [5.2, 6.0]},
           "stage_trained_on": {"aux": [on(1, 2), on(1, 1, True)], "off": [on(1, 2), on(1, 2)], "s": [on(2, 1), None]}}
    line = provenance_line(doc)
    assert ("seed 0: aux 100 s (2 threads) + s 5 s (2 side by side x 1 thread), "
            "seed 1: aux 90 s (1 thread, resumed) + s 6 s") in line
    assert "off" not in line and "counts all its parts" in line
    doc["stage_trained_on"] = {"aux": [None, None]}  # runs made before stages recorded it: the old wording
    assert "seed 0: 0 s + 5 s + 100 s" in provenance_line(doc)
