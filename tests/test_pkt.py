"""PKT against an independent, loop-based reference of docs/method.md §1."""

import math

import pytest
import torch

import flowkd
from flowkd import FlowKDError, pkt_loss

EPS = 1e-6


# ---- naive reference: plain Python loops over the N x N entries --------------------------------
def ref_dist(a, b):
    """Euclidean distance as the reference code takes it: sqrt(max(d^2, 0) + 1e-6)."""
    return math.sqrt(max(sum((u - v) ** 2 for u, v in zip(a, b)), 0) + EPS)


def ref_kernel_matrix(x, name, sigma=1.0):
    """The (N, N) kernel matrix, entry by entry."""
    n = len(x)
    rows = [[0.0] * n for _ in range(n)]
    if name == "adaptive_gaussian":  # 2 sigma^2 = mean off-diagonal squared distance
        d2s = [sum((a - b) ** 2 for a, b in zip(x[i], x[j])) for i in range(n) for j in range(n) if i != j]
        scale = sum(d2s) / len(d2s)
    if name == "adaptive_rbf":  # sigma = mean of the N x N distance matrix, diagonal included (reference code)
        sig = sum(ref_dist(x[i], x[j]) for i in range(n) for j in range(n)) / (n * n)
    for i in range(n):
        for j in range(n):
            a, b = x[i], x[j]
            if name == "cosine":
                na = math.sqrt(sum(v * v for v in a)) + EPS
                nb = math.sqrt(sum(v * v for v in b)) + EPS
                cos = sum((u / na) * (v / nb) for u, v in zip(a, b))
                rows[i][j] = (cos + 1) / 2
            elif name == "student_t":
                d2 = sum((u - v) ** 2 for u, v in zip(a, b))
                rows[i][j] = 1 / (1 + math.sqrt(max(d2, 0) + EPS))
            elif name == "rbf":  # reference: exp(-d / sigma), sigma = 1 by default
                rows[i][j] = math.exp(-ref_dist(a, b) / sigma)
            elif name == "adaptive_rbf":
                rows[i][j] = math.exp(-ref_dist(a, b) / sig)
            elif name == "gaussian":
                d2 = sum((u - v) ** 2 for u, v in zip(a, b))
                rows[i][j] = math.exp(-d2 / (2 * sigma * sigma))
            elif name == "adaptive_gaussian":
                d2 = sum((u - v) ** 2 for u, v in zip(a, b))
                rows[i][j] = math.exp(-d2 / (scale + EPS))
    return rows


def ref_kernel(x, name):
    # conditional probabilities: each row divided by its sum, diagonal included
    return [[v / sum(r) for v in r] for r in ref_kernel_matrix(x, name)]


def ref_div(p, q, name, eps=EPS):
    n = len(p)
    total = 0.0
    for i in range(n):
        for j in range(n):
            lp, lq = math.log(p[i][j] + eps), math.log(q[i][j] + eps)
            total += (p[i][j] - q[i][j]) * (lp - lq) if name == "jeffreys" else p[i][j] * (lp - lq)
    return total / (n * n)


def ref_pkt(t, s, kernel, divergence):
    t, s = t.double().tolist(), s.double().tolist()
    names = ["cosine", "student_t"] if kernel == "combined" else [kernel]
    return sum(ref_div(ref_kernel(t, k), ref_kernel(s, k), divergence) for k in names)


KERNELS = ["combined", "cosine", "student_t", "rbf", "adaptive_rbf", "gaussian", "adaptive_gaussian"]


@pytest.fixture
def feats():
    g = torch.Generator().manual_seed(0)
    return torch.randn(7, 5, generator=g), torch.randn(7, 3, generator=g) * 2  # Dt != Ds


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("divergence", ["jeffreys", "kl"])
def test_matches_naive_reference(feats, kernel, divergence):
    t, s = feats
    got = pkt_loss(t, s, kernel=kernel, divergence=divergence)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(ref_pkt(t, s, kernel, divergence), rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("name, opts", [("rbf", {}), ("rbf", {"sigma": 2.5}), ("adaptive_rbf", {}),
                                         ("gaussian", {}), ("gaussian", {"sigma": 2.5}), ("adaptive_gaussian", {})])
def test_kernel_matrices_match_naive_loops(feats, name, opts):
    for x in feats:
        got = flowkd.losses.KERNELS.get(name)(x.double(), **opts)
        want = torch.tensor(ref_kernel_matrix(x.double().tolist(), name, **opts), dtype=torch.float64)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_rbf_is_the_reference_exp_of_minus_distance_not_the_gaussian(feats):
    """On these features the two definitions are far apart: the names must give the reference's values."""
    x = feats[0].double()
    d = torch.cdist(x, x)
    for sigma in (1.0, 2.5):
        rbf = flowkd.losses.rbf(x, sigma=sigma)
        torch.testing.assert_close(rbf, torch.exp(-torch.sqrt(d * d + EPS) / sigma), rtol=1e-9, atol=1e-12)
        gauss = flowkd.losses.gaussian(x, sigma=sigma)
        off = ~torch.eye(len(x), dtype=torch.bool)
        assert ((rbf - gauss).abs() / gauss)[off].min() > 0.05  # every off-diagonal entry differs by > 5 %
    sigma = torch.sqrt(d * d + EPS).mean()  # the mean distance, diagonal included
    torch.testing.assert_close(flowkd.losses.adaptive_rbf(x), torch.exp(-torch.sqrt(d * d + EPS) / sigma))
    assert not torch.allclose(flowkd.losses.adaptive_rbf(x), flowkd.losses.adaptive_gaussian(x), rtol=0.05)


def test_adaptive_bandwidths_are_held_constant_for_gradients(feats):
    x = feats[1].double().requires_grad_()
    w = torch.arange(49.0, dtype=torch.float64).view(7, 7)  # an asymmetric weighting of the entries

    def dist():
        return torch.sqrt(((x[:, None] - x[None]) ** 2).sum(-1) + EPS)

    (g,) = torch.autograd.grad((flowkd.losses.adaptive_rbf(x) * w).sum(), x)
    (want,) = torch.autograd.grad((torch.exp(-dist() / dist().detach().mean()) * w).sum(), x)
    torch.testing.assert_close(g, want)
    (g_full,) = torch.autograd.grad((torch.exp(-dist() / dist().mean()) * w).sum(), x)
    assert not torch.allclose(g, g_full)  # the test can tell a detached sigma from a differentiated one


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("divergence", ["jeffreys", "kl"])
def test_no_gradient_reaches_the_teacher(feats, kernel, divergence):
    t = feats[0].clone().requires_grad_()
    s = feats[1].clone().requires_grad_()
    pkt_loss(t, s, kernel=kernel, divergence=divergence).backward()
    assert t.grad is None
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    # through a computation that produced the teacher's features too (a teacher network's parameters)
    w = torch.randn(5, 5, requires_grad=True)
    flowkd.PKTLoss(kernel, divergence)(feats[0] @ w, feats[1].clone().requires_grad_()).backward()
    assert w.grad is None


@pytest.mark.parametrize("kernel", KERNELS)
def test_dtype_is_what_the_docstring_says(feats, kernel):
    t, s = feats
    assert pkt_loss(t, s, kernel=kernel).dtype == torch.float32
    assert pkt_loss(t.bfloat16(), s.bfloat16(), kernel=kernel).dtype == torch.float32
    want64 = torch.float64 if kernel == "combined" else torch.float32  # combined keeps float64, single kernels not
    assert pkt_loss(t.double(), s.double(), kernel=kernel).dtype == want64
    assert pkt_loss(t.double(), s, kernel=kernel).dtype == want64


def test_zero_for_identical_and_positive_otherwise(feats):
    t, s = feats
    assert pkt_loss(t, t).item() == pytest.approx(0.0, abs=1e-7)
    assert pkt_loss(t, s).item() > 1e-4
    # a scaled copy keeps the cosine similarities: cosine PKT is ~0, Student-t is not
    assert pkt_loss(t, 3 * t, kernel="cosine").item() == pytest.approx(0.0, abs=1e-7)
    assert pkt_loss(t, 3 * t, kernel="student_t").item() > 1e-4


def test_plain_logs_match_reference_without_eps(feats):
    t, s = feats
    got = pkt_loss(t, s, kernel="cosine", log_eps=None)
    p, q = ref_kernel(t.double().tolist(), "cosine"), ref_kernel(s.double().tolist(), "cosine")
    assert got.item() == pytest.approx(ref_div(p, q, "jeffreys", eps=0.0), rel=1e-4)


def test_conv_maps_are_flattened():
    g = torch.Generator().manual_seed(1)
    t, s = torch.randn(6, 2, 3, 3, generator=g), torch.randn(6, 4, generator=g)
    assert pkt_loss(t, s).item() == pytest.approx(ref_pkt(t.flatten(1), s, "combined", "jeffreys"), rel=1e-4)


@pytest.mark.parametrize("seed", range(12))  # seed 2 broke a cosine taken from the distances' Gram matrix
def test_finite_loss_and_grads_for_duplicates_and_zero_rows(seed):
    torch.manual_seed(seed)
    t = torch.randn(6, 4)
    t[1] = t[0]  # duplicate sample
    t[2] = 0.0  # zero vector
    s = torch.randn(6, 3)
    s[3] = s[4]
    s[5] = 0.0
    s.requires_grad_(True)
    for kernel in KERNELS:
        loss = pkt_loss(t, s, kernel=kernel)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(s.grad).all(), kernel
        s.grad = None
    both = flowkd.losses.pkt_pairs([t, t[:, :2]], [s, s[:, 1:]])
    assert torch.isfinite(both).all()
    z = torch.zeros(4, 3, requires_grad=True)
    loss = pkt_loss(torch.zeros(4, 5), z)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-7) and torch.isfinite(z.grad).all()


def test_bf16_inputs_and_autocast_are_computed_in_fp32(feats):
    t, s = feats
    ref = pkt_loss(t.bfloat16().float(), s.bfloat16().float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = pkt_loss(t.bfloat16(), s.bfloat16())
        assert got.dtype == torch.float32
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)


def test_errors():
    with pytest.raises(FlowKDError, match="unknown kernel 'gauss'"):
        pkt_loss(torch.randn(3, 2), torch.randn(3, 2), kernel="gauss")
    with pytest.raises(FlowKDError, match="unknown divergence"):
        pkt_loss(torch.randn(3, 2), torch.randn(3, 2), divergence="js")
    with pytest.raises(FlowKDError, match="same batch"):
        pkt_loss(torch.randn(3, 2), torch.randn(4, 2))
    with pytest.raises(FlowKDError, match="unknown kernel"):
        flowkd.PKTLoss(kernel="x")


def test_gradient_decreases_loss(feats):
    t, s = feats
    s = s.clone().requires_grad_(True)
    opt = torch.optim.Adam([s], lr=0.05)
    first = pkt_loss(t, s).item()
    for _ in range(200):
        opt.zero_grad()
        pkt_loss(t, s).backward()
        opt.step()
    assert pkt_loss(t, s).item() < 0.5 * first


# ---- all layer pairs at once (pkt_pairs: stacked, with a hand-written backward) --------------------
def separate_autograd(t, s, divergence, log_eps):
    """The combined PKT through autograd of the plain single kernels (in the inputs' dtype): an independent
    implementation."""
    div = flowkd.losses.DIVERGENCES.get(divergence)
    cond = flowkd.losses.conditional
    return sum(div(cond(k(t)), cond(k(s)), eps=log_eps) for k in (flowkd.losses.cosine, flowkd.losses.student_t))


@pytest.mark.parametrize("divergence, log_eps", [("jeffreys", 1e-6), ("kl", 1e-6), ("jeffreys", None), ("kl", None)])
def test_pkt_pairs_values_and_gradients_match_autograd_of_the_separate_kernels(divergence, log_eps):
    g = torch.Generator().manual_seed(3)
    widths = [(40, 7), (12, 30), (5, 5), (64, 2)]
    ts = [torch.randn(16, dt, generator=g).relu() for dt, _ in widths]
    ss = [torch.randn(16, ds, generator=g) for _, ds in widths]
    ts[2][3] = 0.0                 # a zero row
    ts[1][5] = ts[1][6]            # duplicate rows
    ss[0][4] = 0.0                 # a zero student row: its gradient is finite (norm's subgradient 0)
    ss[3] = ss[3] + 50.0           # a large common offset (the centring's reason)
    w = torch.tensor([100.0, 10.0, 1.0, 0.5])
    for dtype, rtol in ((torch.float64, 1e-9), (torch.float32, 2e-3)):
        t = [x.to(dtype) for x in ts]
        s = [x.to(dtype).requires_grad_() for x in ss]
        got = flowkd.losses.pkt_pairs(t, s, divergence, log_eps)
        want = torch.stack([separate_autograd(a, b, divergence, log_eps) for a, b in zip(t, s)])
        assert got.dtype == dtype
        torch.testing.assert_close(got, want, rtol=rtol * 1e-2, atol=1e-12)
        g1 = torch.autograd.grad((got * w).sum(), s)
        g2 = torch.autograd.grad((want * w).sum(), s)
        for a, b in zip(g1, g2):
            assert torch.isfinite(a).all()
            torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * 1e-3 * b.abs().max().item())
    # and the first pair against the loop reference
    if log_eps is not None:
        assert got[0].item() == pytest.approx(ref_pkt(ts[0], ss[0], "combined", divergence), rel=1e-4)


@pytest.mark.parametrize("divergence, log_eps", [("jeffreys", 1e-6), ("kl", None)])
def test_pkt_pairs_backward_passes_finite_differences(divergence, log_eps):
    g = torch.Generator().manual_seed(5)
    ts = [torch.randn(6, d, generator=g, dtype=torch.float64) for d in (4, 3)]
    ss = [torch.randn(6, d, generator=g, dtype=torch.float64, requires_grad=True) for d in (3, 2)]
    assert torch.autograd.gradcheck(lambda *s: flowkd.losses.pkt_pairs(ts, list(s), divergence, log_eps), ss)


def test_pkt_pairs_gradients_reach_students_only():
    t = torch.randn(8, 4, requires_grad=True)
    s = torch.randn(8, 3, requires_grad=True)
    frozen = torch.randn(8, 2)
    out = flowkd.losses.pkt_pairs([t, t], [s, frozen])
    out.sum().backward()
    assert t.grad is None and s.grad is not None and torch.isfinite(s.grad).all()


def test_pkt_pairs_rejects_mismatched_batches():
    with pytest.raises(FlowKDError, match="same batch"):
        flowkd.losses.pkt_pairs([torch.randn(8, 3), torch.randn(8, 3)], [torch.randn(8, 3), torch.randn(7, 3)])


def test_information_flow_batches_its_pairs_and_matches_the_per_pair_loss():
    g = torch.Generator().manual_seed(4)
    pairs = [("a", "x"), ("b", "y"), ("c", "z")]
    t = {"a": torch.randn(12, 3, 4, 4, generator=g), "b": torch.randn(12, 20, generator=g), "c": torch.randn(12, 6, generator=g)}
    s = {k: torch.randn(12, d, generator=g, requires_grad=True) for k, d in (("x", 9), ("y", 5), ("z", 6))}
    flow = flowkd.InformationFlowLoss(pairs, flowkd.CriticalPeriod())
    assert flow.batched
    fast = flow(t, s, 2)
    flow.batched = False
    slow = flow(t, s, 2)
    assert fast.keys() == slow.keys()
    for k in slow:
        torch.testing.assert_close(fast[k], slow[k], rtol=1e-5, atol=1e-9)
    # baselines and custom kernels keep the per-pair path
    assert not flowkd.InformationFlowLoss(pairs, kernel="cosine").batched


def test_pkt_pairs_float32_at_the_student_stage_shapes_matches_the_float64_reference():
    # the four pairs of the student stage (batch 128), ReLU features with a dead row and a student far from the
    # origin: the float32 fused chain against the float64 autograd of the separate kernels
    g = torch.Generator().manual_seed(11)
    ts = [torch.randn(128, d, generator=g, dtype=torch.float64).relu() for d in (3600, 1152, 256, 128)]
    ss = [torch.randn(128, d, generator=g, dtype=torch.float64).relu() for d in (1800, 576, 128, 64)]
    ts[2][7] = 0.0
    ss[1][9] = 0.0
    ss[3] = ss[3] + 5.0
    s64 = [s.clone().requires_grad_() for s in ss]
    want = torch.stack([separate_autograd(t, s, "jeffreys", 1e-6) for t, s in zip(ts, s64)])
    w = torch.tensor([100.0, 70.0, 49.0, 1.0], dtype=torch.float64)
    g64 = torch.autograd.grad((want * w).sum(), s64)
    s32 = [s.float().requires_grad_() for s in ss]
    got = flowkd.losses.pkt_pairs([t.float() for t in ts], s32)
    torch.testing.assert_close(got.double(), want.detach(), rtol=1e-4, atol=1e-9)
    for a, b in zip(torch.autograd.grad((got * w.float()).sum(), s32), g64):
        torch.testing.assert_close(a.double(), b, rtol=1e-3, atol=1e-4 * b.abs().max().item())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_pkt_pairs_on_cuda_matches_the_float64_reference():
    g = torch.Generator().manual_seed(7)
    ts = [torch.randn(128, d, generator=g, dtype=torch.float64).relu() for d in (3600, 1152, 256, 128)]
    ss = [torch.randn(128, d, generator=g, dtype=torch.float64).relu() for d in (1800, 576, 128, 64)]
    s64 = [s.clone().requires_grad_() for s in ss]
    want = torch.stack([separate_autograd(t, s, "jeffreys", 1e-6) for t, s in zip(ts, s64)])
    w = torch.tensor([100.0, 70.0, 49.0, 1.0], dtype=torch.float64)
    g64 = torch.autograd.grad((want * w).sum(), s64)
    scuda = [s.float().cuda().requires_grad_() for s in ss]
    with torch.autocast("cuda", dtype=torch.bfloat16):  # PKT stays fp32 under autocast
        got = flowkd.losses.pkt_pairs([t.float().cuda() for t in ts], scuda)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double().cpu(), want.detach(), rtol=1e-4, atol=1e-9)
    gcuda = torch.autograd.grad((got * w.float().cuda()).sum(), scuda)
    for a, b in zip(gcuda, g64):
        torch.testing.assert_close(a.double().cpu(), b, rtol=2e-3, atol=2e-3 * b.abs().max().item())
