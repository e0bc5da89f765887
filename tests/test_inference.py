"""flowkd.inference: the measured choice of an inference setting."""

import pytest
import torch
from torch import nn

from flowkd import FlowKDError
from flowkd.inference import bf16_supported, fastest_setting


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 5))


def test_the_choice_is_among_the_measured_and_eligible_settings():
    net, x = _net(), torch.randn(20, 3, 8, 8)
    s = fastest_setting(net, x, "cpu", batches=(8, 16), repeats=1)
    combos = {(t["bf16"], t["channels_last"]) for t in s.tried}
    assert {(False, False), (False, True)} <= combos
    assert any(t["bf16"] for t in s.tried) == bf16_supported(torch.device("cpu"))
    chosen = [t for t in s.tried if (t["batch"], t["bf16"], t["channels_last"]) == (s.batch, s.bf16, s.channels_last)]
    assert chosen and chosen[0]["eligible"] and s.images_per_s > 0
    eligible = [t for t in s.tried if t["eligible"] and t["batch"] == 8]
    assert s.images_per_s >= max(t["images_per_s"] for t in eligible) * 0.999 or s.batch != 8
    # the float32 NCHW setting is the reference: exactly zero error
    assert next(t for t in s.tried if not t["bf16"] and not t["channels_last"])["rel_error"] == 0.0


def test_outputs_under_the_setting_match_float32_within_the_tolerance():
    net, x = _net(), torch.randn(40, 3, 8, 8)
    s = fastest_setting(net, x[:16], "cpu", batches=(8,), repeats=1, tolerance=5e-2)
    with torch.inference_mode():
        want = net.to(memory_format=torch.contiguous_format)(x)
        s.apply(net)
        with s.context():
            got = torch.cat([net(s.prepare(b)) for b in s.batches(x)]).float()
    assert got.shape == want.shape
    assert float((got - want).norm() / want.norm()) <= 5e-2


def test_threads_are_a_candidate_and_the_context_restores_them():
    net, x = _net(), torch.randn(8, 3, 8, 8)
    before = torch.get_num_threads()
    s = fastest_setting(net, x, "cpu", batches=(4,), repeats=1, bf16=False, channels_last=False, threads=(1, 2))
    assert {t["threads"] for t in s.tried} == {1, 2} and s.threads in (1, 2)
    with s.context():
        assert torch.get_num_threads() == s.threads
    assert torch.get_num_threads() == before


def test_zero_tolerance_keeps_float32_and_options_can_be_left_out():
    net, x = _net(), torch.randn(8, 3, 8, 8)
    s = fastest_setting(net, x, "cpu", batches=(4,), repeats=1, tolerance=0.0, channels_last=False)
    assert not s.bf16 and not s.channels_last
    assert all(not t["channels_last"] for t in s.tried)
    s = fastest_setting(net, x, "cpu", batches=(4,), repeats=1, bf16=False)
    assert all(not t["bf16"] for t in s.tried)


def test_rejects_bad_arguments():
    with pytest.raises(FlowKDError, match="sample"):
        fastest_setting(_net(), torch.randn(0, 3, 8, 8), "cpu")
    with pytest.raises(FlowKDError, match="tolerance"):
        fastest_setting(_net(), torch.randn(4, 3, 8, 8), "cpu", tolerance=-1)
