"""KD baselines (Hinton KD, FitNets, AT, SP) against independent loop-based float64 references."""

import math

import numpy as np
import pytest
import torch

from flowkd import FlowKDError, pkt_loss
from flowkd.losses.baselines import (
    PAIR_LOSSES, AttentionTransfer, FitNetHint, HintonKD, SimilarityPreserving, make_pair_loss,
)


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ---- naive references: plain Python loops in float64 ------------------------------------------
def ref_kd(t, s, T):
    t, s = t.double().tolist(), s.double().tolist()
    total = 0.0
    for tr, sr in zip(t, s):
        zt = sum(math.exp(v / T) for v in tr)
        zs = sum(math.exp(v / T) for v in sr)
        p = [math.exp(v / T) / zt for v in tr]
        q = [math.exp(v / T) / zs for v in sr]
        total += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
    return T * T * total / len(t)


def ref_softmax(row, T):
    z = sum(math.exp(v / T) for v in row)
    return [math.exp(v / T) / z for v in row]


def ref_pool(a, out_h, out_w):
    """Adaptive average pooling of a 2-D list: window [floor(i*H/O), ceil((i+1)*H/O))."""
    h, w = len(a), len(a[0])
    out = [[0.0] * out_w for _ in range(out_h)]
    for i in range(out_h):
        r0, r1 = (i * h) // out_h, -((-(i + 1) * h) // out_h)
        for j in range(out_w):
            c0, c1 = (j * w) // out_w, -((-(j + 1) * w) // out_w)
            vals = [a[r][c] for r in range(r0, r1) for c in range(c0, c1)]
            out[i][j] = sum(vals) / len(vals)
    return out


def ref_conv(x, w):
    """'same' zero-padded cross-correlation of one sample x[Cin][H][W] with w[Cout][Cin][k][k]."""
    cin, h, wd = len(x), len(x[0]), len(x[0][0])
    k = len(w[0][0])
    pad = k // 2
    out = [[[0.0] * wd for _ in range(h)] for _ in range(len(w))]
    for o in range(len(w)):
        for i in range(h):
            for j in range(wd):
                acc = 0.0
                for c in range(cin):
                    for di in range(k):
                        for dj in range(k):
                            r, q = i + di - pad, j + dj - pad
                            if 0 <= r < h and 0 <= q < wd:
                                acc += w[o][c][di][dj] * x[c][r][q]
                out[o][i][j] = acc
    return out


def ref_fitnet_maps(t, s, w):
    t, s, w = t.double().tolist(), s.double().tolist(), w.double().tolist()
    total, count = 0.0, 0
    for tn, sn in zip(t, s):
        r = ref_conv(sn, w)
        oh, ow = min(len(tn[0]), len(r[0])), min(len(tn[0][0]), len(r[0][0]))
        for tc, rc in zip(tn, r):
            tp, rp = ref_pool(tc, oh, ow), ref_pool(rc, oh, ow)
            for i in range(oh):
                for j in range(ow):
                    total += (rp[i][j] - tp[i][j]) ** 2
                    count += 1
    return total / count


def ref_attention(x, p):
    """Per-sample attention map: channel mean of |x|^p, as a 2-D list."""
    c, h, w = len(x), len(x[0]), len(x[0][0])
    return [[sum(abs(x[k][i][j]) ** p for k in range(c)) / c for j in range(w)] for i in range(h)]


def ref_at(t, s, p):
    t, s = t.double().tolist(), s.double().tolist()
    total, count = 0.0, 0
    for tn, sn in zip(t, s):
        at, as_ = ref_attention(tn, p), ref_attention(sn, p)
        oh, ow = min(len(at), len(as_)), min(len(at[0]), len(as_[0]))
        vt = [v for row in ref_pool(at, oh, ow) for v in row]
        vs = [v for row in ref_pool(as_, oh, ow) for v in row]
        nt, ns = math.sqrt(sum(v * v for v in vt)), math.sqrt(sum(v * v for v in vs))
        for a, b in zip(vt, vs):
            total += (b / ns - a / nt) ** 2
            count += 1
    return total / count


def ref_sp(t, s):
    def gram(x):
        f = [list(np.asarray(row, dtype=np.float64).ravel()) for row in x.double().tolist()]
        n = len(f)
        g = [[sum(a * b for a, b in zip(f[i], f[j])) for j in range(n)] for i in range(n)]
        return [[v / math.sqrt(sum(u * u for u in row)) for v in row] for row in g]

    gt, gs = gram(t), gram(s)
    n = len(gt)
    return sum((gt[i][j] - gs[i][j]) ** 2 for i in range(n) for j in range(n)) / (n * n)


# ---- Hinton KD ---------------------------------------------------------------------------------
@pytest.mark.parametrize("T", [1.0, 2.5, 4.0])
def test_kd_matches_reference(T):
    g = gen(0)
    t, s = torch.randn(4, 3, generator=g) * 3, torch.randn(4, 3, generator=g) * 3
    got = HintonKD(temperature=T)(t, s)
    assert got.dtype == torch.float32 and got.ndim == 0
    assert got.item() == pytest.approx(ref_kd(t, s, T), rel=1e-5, abs=1e-8)


def test_kd_default_temperature_and_t2_scaling():
    g = gen(1)
    t, s = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    assert HintonKD().temperature == 4.0
    assert HintonKD()(t, s).item() == pytest.approx(ref_kd(t, s, 4.0), rel=1e-5)
    # the T^2 factor: the loss is 16x the plain KL at T=4
    plain = ref_kd(t, s, 4.0) / 16.0
    assert HintonKD(4.0)(t, s).item() == pytest.approx(16.0 * plain, rel=1e-5)
    assert HintonKD(4.0)(t, s).item() > 10.0 * plain


def test_kd_zero_when_equal_and_positive_otherwise():
    g = gen(2)
    t = torch.randn(3, 4, generator=g)
    assert HintonKD()(t, t.clone()).item() == pytest.approx(0.0, abs=1e-7)
    # softmax is shift-invariant per row: adding a constant to the student's logits changes nothing
    assert HintonKD()(t, t + 5.0).item() == pytest.approx(0.0, abs=1e-6)
    assert HintonKD()(t, torch.randn(3, 4, generator=g)).item() > 1e-4


def test_kd_gradient_matches_closed_form_and_reduces_loss():
    g = gen(3)
    T = 2.0
    t, s0 = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    s = s0.clone().requires_grad_(True)
    loss = HintonKD(T)(t, s)
    loss.backward()
    # d/ds [T^2 * mean_n KL] = T * (softmax(s/T) - softmax(t/T)) / N
    n = len(t)
    want = [[T * (q - p) / n for p, q in zip(ref_softmax(tr, T), ref_softmax(sr, T))]
            for tr, sr in zip(t.double().tolist(), s0.double().tolist())]
    assert np.allclose(s.grad.double().numpy(), np.array(want), rtol=1e-4, atol=1e-7)
    stepped = HintonKD(T)(t, s0 - 0.5 * s.grad)
    assert stepped.item() < loss.item() - 1e-4


# ---- FitNets -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "t_shape,s_shape,k",
    [
        ((3, 4, 4), (2, 4, 4), 1),  # same size, 1x1 regressor
        ((3, 3, 3), (2, 3, 3), 3),  # same size, 3x3 regressor with zero padding
        ((2, 2, 2), (4, 4, 4), 1),  # regressed student is larger: pooled to the teacher's 2x2
        ((2, 2, 2), (3, 4, 4), 3),  # 3x3 regression first, then pooling (the order matters for k > 1)
        ((3, 4, 4), (2, 2, 2), 3),  # teacher is larger: pooled to the student's 2x2
        ((2, 2, 3), (3, 3, 4), 1),  # non-divisible sizes: overlapping adaptive windows
    ],
)
def test_fitnet_maps_match_reference(t_shape, s_shape, k):
    g = gen(4)
    t, s = torch.randn(3, *t_shape, generator=g), torch.randn(3, *s_shape, generator=g)
    loss = FitNetHint(t_shape, s_shape, kernel_size=k)
    w = torch.randn(t_shape[0], s_shape[0], k, k, generator=g)
    with torch.no_grad():
        loss.regressor.weight.copy_(w)
    got = loss(t, s)
    assert got.dtype == torch.float32 and got.ndim == 0
    assert got.item() == pytest.approx(ref_fitnet_maps(t, s, w), rel=1e-5)


def test_fitnet_vectors_match_reference():
    g = gen(5)
    t, s = torch.randn(4, 3, generator=g), torch.randn(4, 5, generator=g)
    loss = FitNetHint((3,), (5,))
    assert isinstance(loss.regressor, torch.nn.Linear) and loss.regressor.bias is None
    w = torch.randn(3, 5, generator=g)
    with torch.no_grad():
        loss.regressor.weight.copy_(w)
    tt, ss, ww = t.double().tolist(), s.double().tolist(), w.double().tolist()
    total = 0.0
    for tn, sn in zip(tt, ss):
        for o in range(3):
            total += (sum(ww[o][i] * sn[i] for i in range(5)) - tn[o]) ** 2
    assert loss(t, s).item() == pytest.approx(total / (4 * 3), rel=1e-5)


def test_fitnet_regressor_is_a_bias_free_conv_and_trainable():
    loss = FitNetHint((3, 4, 4), (2, 4, 4), kernel_size=3)
    conv = loss.regressor
    assert isinstance(conv, torch.nn.Conv2d) and conv.bias is None
    assert conv.in_channels == 2 and conv.out_channels == 3 and conv.kernel_size == (3, 3)
    params = list(loss.parameters())
    assert len(params) == 1 and params[0] is conv.weight and params[0].requires_grad
    g = gen(6)
    t, s = torch.randn(3, 3, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    s.requires_grad_(True)
    loss(t, s).backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    assert s.grad is not None and s.grad.abs().sum() > 0
    # optimising the regressor alone lowers the hint loss
    first = loss(t, s.detach()).item()
    for _ in range(20):
        conv.weight.grad = None
        loss(t, s.detach()).backward()
        with torch.no_grad():
            conv.weight -= 0.1 * conv.weight.grad
    assert loss(t, s.detach()).item() < 0.9 * first


def test_fitnet_zero_when_regression_is_exact():
    g = gen(7)
    s = torch.randn(3, 2, 3, 3, generator=g)
    loss = FitNetHint((2, 3, 3), (2, 3, 3))
    with torch.no_grad():
        loss.regressor.weight.copy_(torch.eye(2).reshape(2, 2, 1, 1))
    assert loss(s, s).item() == pytest.approx(0.0, abs=1e-10)
    assert loss(s + 1.0, s).item() == pytest.approx(1.0, rel=1e-6)


# ---- attention transfer ------------------------------------------------------------------------
@pytest.mark.parametrize("p", [1, 2, 3])
@pytest.mark.parametrize(
    "t_shape,s_shape",
    [((3, 4, 4), (2, 4, 4)), ((2, 4, 4), (3, 2, 2)), ((2, 2, 2), (4, 4, 4)), ((2, 3, 2), (2, 2, 3))],
)
def test_at_matches_reference(p, t_shape, s_shape):
    g = gen(8)
    t, s = torch.randn(3, *t_shape, generator=g), torch.randn(3, *s_shape, generator=g)
    got = AttentionTransfer(p=p)(t, s)
    assert got.dtype == torch.float32 and got.ndim == 0
    assert got.item() == pytest.approx(ref_at(t, s, p), rel=1e-5, abs=1e-9)


def test_at_scale_invariant_and_zero_for_same_attention():
    g = gen(9)
    t = torch.randn(3, 2, 4, 4, generator=g)
    at = AttentionTransfer()
    assert at.p == 2
    assert at(t, 3.0 * t).item() == pytest.approx(0.0, abs=1e-9)
    assert at(t, -t).item() == pytest.approx(0.0, abs=1e-9)  # |x|^p ignores the sign
    assert at(t, torch.randn(3, 2, 4, 4, generator=g)).item() > 1e-4


# ---- similarity preserving ---------------------------------------------------------------------
@pytest.mark.parametrize("t_shape,s_shape", [((5,), (3,)), ((2, 3, 3), (4, 2, 2)), ((2, 2, 2), (6,))])
def test_sp_matches_reference(t_shape, s_shape):
    g = gen(10)
    t, s = torch.randn(4, *t_shape, generator=g), torch.randn(4, *s_shape, generator=g)
    got = SimilarityPreserving()(t, s)
    assert got.dtype == torch.float32 and got.ndim == 0
    assert got.item() == pytest.approx(ref_sp(t, s), rel=1e-5)


def test_sp_scale_invariant_and_divides_by_n_squared():
    g = gen(11)
    t, s = torch.randn(4, 5, generator=g), torch.randn(4, 3, generator=g)
    sp = SimilarityPreserving()
    assert sp(t, 2.0 * t).item() == pytest.approx(0.0, abs=1e-9)
    # duplicating the batch: each Gram row appears twice, so its norm grows by sqrt(2) and every
    # squared normalised entry halves; there are 4x the entries and N^2 grows 4x, so the loss halves
    # (dividing by N instead of N^2 would leave it unchanged)
    assert sp(torch.cat([t, t]), torch.cat([s, s])).item() == pytest.approx(sp(t, s).item() / 2, rel=1e-5)


# ---- precision ---------------------------------------------------------------------------------
CASES = {
    "kd": (lambda: HintonKD(), (4, 3), (4, 3)),
    "fitnet": (lambda: FitNetHint((3, 2, 2), (2, 4, 4), kernel_size=3), (4, 3, 2, 2), (4, 2, 4, 4)),
    "at": (lambda: AttentionTransfer(), (4, 3, 4, 4), (4, 2, 2, 2)),
    "sp": (lambda: SimilarityPreserving(), (4, 5), (4, 2, 2, 2)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bf16_inputs_and_autocast_give_fp32(name):
    build, t_shape, s_shape = CASES[name]
    torch.manual_seed(12)
    loss = build()
    g = gen(12)
    t, s = torch.randn(*t_shape, generator=g).bfloat16(), torch.randn(*s_shape, generator=g).bfloat16()
    ref = loss(t.float(), s.float())
    got = loss(t, s)
    assert got.dtype == torch.float32 and torch.isfinite(got)
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = loss(t, s)
    assert auto.dtype == torch.float32 and auto.item() == pytest.approx(ref.item(), rel=1e-6)


# ---- errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "loss,t,s,match",
    [
        (HintonKD(), (3, 4), (3, 5), "same shape"),
        (HintonKD(), (3, 4, 2), (3, 4, 2), r"\(N, C\)"),
        (AttentionTransfer(), (3, 4), (3, 2, 2, 2), "4-D"),
        (AttentionTransfer(), (3, 2, 2, 2), (4, 2, 2, 2), "same batch"),
        (SimilarityPreserving(), (3, 4), (4, 4), "same batch"),
        (FitNetHint((3, 2, 2), (2, 2, 2)), (3, 3, 2, 2), (3, 5, 2, 2), "built for"),
        (FitNetHint((3, 2, 2), (2, 2, 2)), (3, 3, 2, 2), (3, 2), "built for"),
        (FitNetHint((3, 2, 2), (2, 2, 2)), (3, 3, 2, 2), (4, 2, 2, 2), "same batch"),
        (FitNetHint((3,), (2,)), (3, 3), (3, 4), "built for"),
    ],
)
def test_shape_errors(loss, t, s, match):
    with pytest.raises(FlowKDError, match=match):
        loss(torch.randn(*t), torch.randn(*s))


def test_construction_errors():
    with pytest.raises(FlowKDError, match="map and a vector"):
        FitNetHint((3, 2, 2), (4,))
    with pytest.raises(FlowKDError, match="map and a vector"):
        make_pair_loss("fitnet", (4,), (3, 2, 2))
    with pytest.raises(FlowKDError, match=r"\(C, H, W\) maps or \(D,\) vectors"):
        FitNetHint((3, 2), (3, 2))
    with pytest.raises(FlowKDError, match="per-sample shapes"):
        make_pair_loss("fitnet", None, None)
    with pytest.raises(FlowKDError, match="kernel_size"):
        FitNetHint((3, 2, 2), (2, 2, 2), kernel_size=2)
    with pytest.raises(FlowKDError, match="temperature"):
        HintonKD(temperature=0)
    with pytest.raises(FlowKDError, match="p must be"):
        AttentionTransfer(p=-1)


# ---- registry ----------------------------------------------------------------------------------
SHAPES = {  # per-sample teacher / student shapes each loss accepts
    "kd": ((4,), (4,)),
    "fitnet": ((3, 2, 2), (2, 4, 4)),
    "at": ((3, 4, 4), (2, 2, 2)),
    "sp": ((5,), (2, 2, 2)),
    "pkt": ((5,), (3,)),
}


def test_registered_names():
    assert PAIR_LOSSES.names() == sorted(SHAPES)
    assert PAIR_LOSSES.kind == "pair loss"


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_every_registered_loss_is_finite_and_backpropagates(name):
    t_shape, s_shape = SHAPES[name]
    loss = make_pair_loss(name, t_shape, s_shape)
    assert isinstance(loss, torch.nn.Module)
    g = gen(13)
    t = torch.randn(5, *t_shape, generator=g)
    s = torch.randn(5, *s_shape, generator=g, requires_grad=True)
    value = loss(t, s)
    assert value.ndim == 0 and torch.isfinite(value)
    value.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_options_reach_the_module():
    g = gen(14)
    t, s = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    kd = make_pair_loss("kd", (3,), (3,), temperature=2.0)
    assert isinstance(kd, HintonKD) and kd(t, s).item() == pytest.approx(ref_kd(t, s, 2.0), rel=1e-5)
    fit = make_pair_loss("fitnet", (3, 4, 4), (2, 4, 4), kernel_size=3)
    assert isinstance(fit, FitNetHint) and fit.regressor.kernel_size == (3, 3)
    at = make_pair_loss("at", None, None, p=1)
    assert isinstance(at, AttentionTransfer) and at.p == 1
    assert isinstance(make_pair_loss("sp", None, None), SimilarityPreserving)
    pkt = make_pair_loss("pkt", None, None, kernel="cosine", divergence="kl", log_eps=None)
    want = pkt_loss(t, s, kernel="cosine", divergence="kl", log_eps=None)
    assert pkt(t, s).item() == pytest.approx(want.item(), rel=1e-6)
    assert pkt(t, s).item() != pytest.approx(pkt_loss(t, s).item(), rel=1e-3)


def test_parameters_only_for_fitnet():
    assert len(list(make_pair_loss("fitnet", (3,), (2,)).parameters())) == 1
    for name in ["kd", "at", "sp"]:
        t_shape, s_shape = SHAPES[name]
        assert list(make_pair_loss(name, t_shape, s_shape).parameters()) == [], name


VALID_OPTIONS = {
    "kd": "temperature", "fitnet": "kernel_size", "at": "p", "sp": "(none)", "pkt": "kernel, divergence, log_eps",
}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_unknown_option_lists_exactly_the_valid_ones(name):
    t_shape, s_shape = SHAPES[name]
    with pytest.raises(FlowKDError) as info:
        make_pair_loss(name, t_shape, s_shape, bogus=1)
    assert str(info.value) == (
        f"pair loss {name!r} takes no option 'bogus'; it takes: {VALID_OPTIONS[name]}"
    )


def test_unknown_name_and_option():
    with pytest.raises(FlowKDError, match=r"unknown pair loss 'hinton'; valid: at, fitnet, kd, pkt, sp"):
        make_pair_loss("hinton", (3,), (3,))
    with pytest.raises(FlowKDError, match=r"pair loss 'kd' takes no option 'temp'; it takes: temperature"):
        make_pair_loss("kd", (3,), (3,), temp=2.0)
    with pytest.raises(FlowKDError, match=r"pair loss 'fitnet' takes no option 'p'; it takes: kernel_size"):
        make_pair_loss("fitnet", (3,), (3,), p=2)
    with pytest.raises(FlowKDError, match=r"pair loss 'pkt' takes no option 'kernel_size'; it takes: kernel, divergence, log_eps"):
        make_pair_loss("pkt", (3,), (3,), kernel_size=3)
    with pytest.raises(FlowKDError, match=r"pair loss 'sp' takes no option 'p'; it takes: \(none\)"):
        make_pair_loss("sp", (3,), (3,), p=2)


def test_fitnet_hint_takes_a_teacher_computed_in_inference_mode():
    """Frozen teachers run under torch.inference_mode; the hint's MSE keeps its target for the backward pass."""
    from flowkd.losses.baselines import make_pair_loss

    with torch.inference_mode():
        t = torch.randn(4, 6, 3, 3)
    s = torch.randn(4, 5, 3, 3, requires_grad=True)
    loss = make_pair_loss("fitnet", (6, 3, 3), (5, 3, 3))
    loss(t, s).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()
