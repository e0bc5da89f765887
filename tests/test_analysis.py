"""Quadratic MI against a loop reference, and orderings known in advance on synthetic data."""

import math

import pytest
import torch

from flowkd import FlowKDError
from flowkd.analysis import quadratic_mi


def naive_qmi(x, y, kernel):
    x = x.double().tolist()
    n = len(x)
    if kernel == "cosine":
        def k(a, b):
            na = math.sqrt(sum(v * v for v in a)) + 1e-6
            nb = math.sqrt(sum(v * v for v in b)) + 1e-6
            return (sum((u / na) * (v / nb) for u, v in zip(a, b)) + 1) / 2
    else:
        d2s = [sum((u - v) ** 2 for u, v in zip(x[i], x[j])) for i in range(n) for j in range(n) if i != j]
        s2 = sum(d2s) / len(d2s)

        def k(a, b):
            return math.exp(-sum((u - v) ** 2 for u, v in zip(a, b)) / (2 * s2))
    classes = sorted(set(y))
    p = {c: y.count(c) / n for c in classes}
    v_in = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if y[i] == y[j]) / n**2
    total = sum(k(x[i], x[j]) for i in range(n) for j in range(n))
    v_all = sum(p[c] ** 2 for c in classes) * total / n**2
    v_btw = sum(p[y[i]] * k(x[i], x[j]) for i in range(n) for j in range(n)) / n**2
    return v_in + v_all - 2 * v_btw


@pytest.mark.parametrize("kernel", ["gaussian", "cosine"])
def test_matches_loop_reference(kernel):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(9, 4, generator=g), [0, 1, 2, 0, 1, 2, 0, 0, 1]
    assert quadratic_mi(x, torch.tensor(y), kernel) == pytest.approx(naive_qmi(x, y, kernel), rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("kernel", ["gaussian", "cosine"])
def test_labels_plus_growing_noise_give_decreasing_mi(kernel):
    g = torch.Generator().manual_seed(1)
    y = torch.arange(200) % 5
    onehot = torch.nn.functional.one_hot(y).float() * 3
    noise = torch.randn(200, 5, generator=g)
    mis = [quadratic_mi(onehot + s * noise, y, kernel) for s in (0.1, 0.5, 1.0, 2.0, 4.0)]
    assert all(a > b for a, b in zip(mis, mis[1:])), mis
    shuffled = y[torch.randperm(200, generator=g)]
    assert quadratic_mi(onehot, shuffled, kernel) < 0.1 * mis[0]  # features unrelated to these labels
    assert min(mis) >= 0


def test_errors():
    with pytest.raises(FlowKDError, match="unknown MI kernel"):
        quadratic_mi(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]), "laplace")
    with pytest.raises(FlowKDError, match="one label each"):
        quadratic_mi(torch.randn(4, 2), torch.tensor([0, 1]))


def test_flow_log_and_render(tmp_path, capsys):
    import json
    from importlib import resources

    from flowkd.cli import main

    demo = str(resources.files("flowkd").joinpath("configs/digits_demo.toml"))
    sets = ["stages.teacher.epochs=[2]", "stages.aux_labels.epochs=[1, 1]", "stages.aux_pkt.epochs=[1, 1]",
            "stages.student.epochs=[2, 1]", "stages.student_labels.epochs=[1, 1]", "stages.student_pkt.epochs=[1, 1]",
            "analysis.flow_log=true", "analysis.probe_size=200"]
    args = ["run", demo, "--out", str(tmp_path / "run"), "--no-progress"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    recs = [json.loads(x) for x in (tmp_path / "run" / "flow.jsonl").read_text().splitlines()]
    student = [r for r in recs if r["stage"] == "student"]
    assert [r["epoch"] for r in student] == [0, 1, 2]
    assert set(student[0]["mi"]) == {"pool1", "pool2", "pool3", "fc1_relu"}
    assert student[0]["weights"]["pool1~pool1"] == 100.0 and student[2]["weights"]["pool1~pool1"] == pytest.approx(49.0)
    assert set(student[0]["divergence"]) == {"pool1~pool1", "pool2~pool2", "pool3~pool3", "fc1_relu~fc1_relu"}
    assert all(v >= 0 for r in recs for v in r["mi"].values())
    assert main(["flow", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "flow_student.png").stat().st_size > 5000
    html = (tmp_path / "run" / "flow_report.html").read_text()
    assert "data:image/png;base64," in html and "fc1_relu" in html
    code = main(["flow", str(tmp_path)])
    assert code == 2 and "flow.jsonl not found" in capsys.readouterr().err
