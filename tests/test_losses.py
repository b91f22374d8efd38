"""
Tests of losses.py: golden values worked out by hand (math.exp / math.log, never the function under test), gradient
directions, an independent loop-by-loop reimplementation of every loss x constraint, the ranking form against the
binary form, padding invariance and numerical stability. Every loss returns one value per question, (B,).
"""

import inspect
import math

import pytest
import torch

import losses as L

BETA = 0.5  # boundary beta used in the hand computations below (round numbers), not the default L.BETA
NAMES = ("aft", "aft_rank", "rrhf", "pro", "dpo")
BASELINES = {"rrhf": L.rrhf_loss, "pro": L.pro_loss}


def leaf(rows):
    """A float64 leaf (1, K) or (B, K) for golden values to 1e-12."""
    return torch.tensor(rows, dtype=torch.float64, requires_grad=True)


def mask(rows):
    return torch.tensor(rows, dtype=torch.bool)


def logsig(x):
    return -math.log(1 + math.exp(-x))


def sig(x):
    return 1 / (1 + math.exp(-x))


def preference_loss(name, scores, grades, valid, constraint, reference=None):
    """Every preference loss behind one call, assembled the way the trainer does (docs/method.md section 7): AFT
    takes the constraint; a baseline's dc is detach_worse and its bc adds boundary_loss. For "aft" the grades must be
    0/1. DPO gets policy S = 4 * s (a 4-token response) and, unless given, a reference of -3 per candidate."""
    if name == "aft":
        return L.alignment_loss(scores, grades, valid, constraint, beta=BETA)
    if name == "aft_rank":
        return L.ranking_alignment_loss(scores, grades, valid, constraint, beta=BETA)
    if name == "dpo":
        reference = torch.full_like(scores, -3.0).detach() if reference is None else reference
        loss = L.dpo_loss(4 * scores, reference, grades, valid, beta_dpo=0.1, detach_worse=constraint == "dc")
    else:
        loss = BASELINES[name](scores, grades, valid, detach_worse=constraint == "dc")
    return loss + L.boundary_loss(scores, grades, valid, beta=BETA) if constraint == "bc" else loss


ALL = [(name, c) for name in NAMES for c in L.CONSTRAINTS]


def value_and_grad(name, scores, grades, valid, constraint, reference=None):
    """Per-question values (B,) and the gradient of their sum w.r.t. the scores (B, K)."""
    scores = scores.detach().clone().requires_grad_(True)
    loss = preference_loss(name, scores, grades, valid, constraint, reference)
    assert loss.shape == scores.shape[:1]
    loss.sum().backward()
    return loss.detach(), scores.grad


# -----------------------------------------------------------------------------
# sequence_logprobs / mean_logprob


def test_sequence_logprobs_matches_float64_loop():
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(3, 5, 7, generator=g)
    targets = torch.randint(0, 7, (3, 5), generator=g)
    m = mask([[0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 0, 0, 1, 0]])
    sum_logp, n_tokens = L.sequence_logprobs(logits, targets, m)
    x, y = logits.double().tolist(), targets.tolist()
    for n in range(3):
        expected = 0.0
        for t in range(5):
            if m[n, t]:
                expected += x[n][t][y[n][t]] - math.log(sum(math.exp(v) for v in x[n][t]))
        assert sum_logp[n].item() == pytest.approx(expected, abs=1e-5)
        assert n_tokens[n].item() == m[n].sum().item()
    s = L.mean_logprob(sum_logp, n_tokens)
    assert s[2].item() == pytest.approx(sum_logp[2].item())  # one token: s = S
    assert s[0].item() == pytest.approx(sum_logp[0].item() / 3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sequence_logprobs_low_precision_logits_give_float32(dtype):
    g = torch.Generator().manual_seed(1)
    logits = (4 * torch.randn(2, 6, 11, generator=g)).to(dtype)
    logits[0, 2, 3] = 6e4 if dtype == torch.float16 else 1e30  # near the dtype's top: must not turn into NaN
    targets = torch.randint(0, 11, (2, 6), generator=g)
    m = torch.ones(2, 6, dtype=torch.bool)
    sum_logp, n_tokens = L.sequence_logprobs(logits, targets, m)
    assert sum_logp.dtype == torch.float32 and n_tokens.dtype == torch.float32
    assert torch.isfinite(sum_logp).all()
    logp64 = torch.log_softmax(logits.double(), dim=-1)  # the same values, upcast further
    expected = logp64.gather(-1, targets[:, :, None]).squeeze(-1).sum(dim=-1)
    torch.testing.assert_close(sum_logp.double(), expected, rtol=1e-6, atol=1e-4)


def test_sequence_logprobs_leaves_inputs_untouched_and_accepts_minus_100():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 4, 5, generator=g)
    targets = torch.tensor([[-100, 3, 1, -100], [2, -100, 4, 0]])
    m = torch.tensor([[0, 1, 1, 0], [1, 0, 1, 1]])  # 0/1 ints are accepted as well as bools
    before = (logits.clone(), targets.clone(), m.clone())
    sum_logp, n_tokens = L.sequence_logprobs(logits, targets, m)
    assert torch.equal(logits, before[0]) and torch.equal(targets, before[1]) and torch.equal(m, before[2])
    logp = torch.log_softmax(logits, dim=-1)
    expected = torch.stack([logp[0, 1, 3] + logp[0, 2, 1], logp[1, 0, 2] + logp[1, 2, 4] + logp[1, 3, 0]])
    torch.testing.assert_close(sum_logp, expected)
    assert n_tokens.tolist() == [2.0, 3.0]


def test_empty_row_scores_zero_with_finite_gradient():
    logits = torch.randn(2, 3, 4, requires_grad=True)
    targets = torch.full((2, 3), -100)
    targets[1] = torch.tensor([0, 1, 2])
    m = mask([[0, 0, 0], [1, 1, 1]])
    s = L.mean_logprob(*L.sequence_logprobs(logits, targets, m))
    assert s[0].item() == 0.0 and torch.isfinite(s).all()
    s.sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert torch.count_nonzero(logits.grad[0]) == 0  # nothing scored, nothing learned
    assert torch.count_nonzero(logits.grad[1]) > 0


# -----------------------------------------------------------------------------
# The one beta, the constraint switch, wrong inputs


def test_one_beta_default_and_no_second_losses_tuple():
    assert L.BETA == 0.05
    for fn in (L.alignment_loss, L.ranking_alignment_loss, L.boundary_loss):
        assert inspect.signature(fn).parameters["beta"].default == L.BETA, fn.__name__
    for fn in (L.rrhf_loss, L.pro_loss, L.dpo_loss):  # baselines keep their published signature + detach_worse
        assert "constraint" not in inspect.signature(fn).parameters and "beta" not in inspect.signature(fn).parameters
    assert not hasattr(L, "LOSSES") and not hasattr(L, "BOUNDARY_BETA")


def test_detach_worse_is_keyword_only():
    # a constraint name passed where the old signature took it would be a truthy string: refused, not detached
    s, g, v = torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]), mask([[1, 1]])
    for call in (lambda: L.rrhf_loss(s, g, v, "none"), lambda: L.pro_loss(s, g, v, "none"),
                 lambda: L.dpo_loss(s, s, g, v, 0.1, "none")):
        with pytest.raises(TypeError):
            call()


def test_unknown_constraints_are_named():
    s, g, v = torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]), mask([[1, 1]])
    for fn in (L.alignment_loss, L.ranking_alignment_loss):
        with pytest.raises(ValueError, match="none, dc, bc"):
            fn(s, g, v, "boundary")


def test_alignment_loss_refuses_labels_that_are_not_0_or_1():
    s, v = torch.zeros(2, 3), mask([[1, 1, 1], [1, 1, 0]])
    for grades in ([[2.0, 1.0, 0.0], [1.0, 0.0, 0.0]], [[1.0, 0.5, 0.0], [1.0, 0.0, 0.0]],
                   [[1.0, 0.0, 0.0], [1.0, -1.0, 0.0]], [[1.0, 0.0, 0.0], [1.0, torch.nan, 0.0]]):
        with pytest.raises(ValueError, match="ranking_alignment_loss"):
            L.alignment_loss(s, torch.tensor(grades), v)
    # padding may hold anything; bool labels are 0/1 too
    L.alignment_loss(s, torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, torch.nan]]), v)
    L.alignment_loss(s, mask([[1, 0, 0], [1, 0, 1]]), v)


def test_ordered_pairs_need_two_valid_candidates_of_different_grades():
    grades = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [2.0, 1.0, 0.0], [1.0, 0.0, torch.nan]])
    valid = mask([[1, 1, 1], [1, 1, 1], [1, 0, 0], [1, 0, 0]])
    assert L._ordered_pairs(grades, valid).flatten(1).any(dim=1).tolist() == [True, False, False, False]


# -----------------------------------------------------------------------------
# Golden values, by hand


def test_nll_golden_per_question():
    scores = leaf([[-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0], [torch.nan, -1.0, -1.0]])
    loss = L.nll_loss(scores, mask([[1, 0, 1], [0, 1, 0], [0, 0, 0]]))
    assert loss.tolist() == pytest.approx([(1.0 + 3.0) / 2, 5.0, 0.0], abs=1e-12)  # mean of -s over the selected
    loss.sum().backward()
    assert scores.grad.flatten().tolist() == [-0.5, 0, -0.5, 0, -1.0, 0, 0, 0, 0]


def test_alignment_loss_golden():
    # p1 = -1.0, p2 = -1.5 (positives), n1 = -1.2, n2 = -2.0 (negatives)
    # s_n - s_p: (p1, n1) -0.2, (p1, n2) -1.0, (p2, n1) 0.3, (p2, n2) -0.5
    pref = [math.exp(-0.2), math.exp(-1.0), math.exp(0.3), math.exp(-0.5)]
    # bc: B = min(p1, p2) - 0.5 = -2.0; T_p1 = 2B - p1 = -3.0; T_p2 = 2B - p2 = -2.5
    # T_p - s_n: (p1, n1) -1.8, (p1, n2) -1.0, (p2, n1) -1.3, (p2, n2) -0.5
    bound = [math.exp(-1.8), math.exp(-1.0), math.exp(-1.3), math.exp(-0.5)]
    z_a = 1 + sum(pref)
    z_bc = 1 + sum(pref) + sum(bound)
    labels = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    valid = mask([[1, 1, 1, 1]])
    got = {}
    for constraint in L.CONSTRAINTS:
        scores = leaf([[-1.0, -1.5, -1.2, -2.0]])
        loss = L.alignment_loss(scores, labels, valid, constraint, beta=BETA)
        assert loss.shape == (1,)
        loss.sum().backward()
        got[constraint] = (loss.item(), scores.grad[0].tolist())
    assert got["none"][0] == pytest.approx(math.log(z_a), abs=1e-12)
    assert got["dc"][0] == pytest.approx(math.log(z_a), abs=1e-12)
    assert got["bc"][0] == pytest.approx(math.log(z_bc), abs=1e-12)
    # none: d/dn1 = (e^{n1-p1} + e^{n1-p2}) / Z, d/dp1 = -(e^{n1-p1} + e^{n2-p1}) / Z
    assert got["none"][1] == pytest.approx([-(pref[0] + pref[1]) / z_a, -(pref[2] + pref[3]) / z_a,
                                            (pref[0] + pref[2]) / z_a, (pref[1] + pref[3]) / z_a], abs=1e-12)
    # dc: the same for positives, exactly 0 for negatives
    assert got["dc"][1] == pytest.approx([-(pref[0] + pref[1]) / z_a, -(pref[2] + pref[3]) / z_a, 0.0, 0.0],
                                         abs=1e-12)
    assert got["dc"][1][2:] == [0.0, 0.0]
    # bc: d/dp1 = -(e^{n1-p1} + e^{n2-p1} + e^{T_p1-n1} + e^{T_p1-n2}) / Z (B is detached);
    #     d/dn1 = (e^{n1-p1} + e^{n1-p2} - e^{T_p1-n1} - e^{T_p2-n1}) / Z > 0 (n1 = -1.2 is above B = -2.0);
    #     d/dn2 = (e^{-1.0} + e^{-0.5} - e^{-1.0} - e^{-0.5}) / Z = 0 (n2 sits exactly on B)
    assert got["bc"][1] == pytest.approx([-(pref[0] + pref[1] + bound[0] + bound[1]) / z_bc,
                                          -(pref[2] + pref[3] + bound[2] + bound[3]) / z_bc,
                                          (pref[0] + pref[2] - bound[0] - bound[2]) / z_bc,
                                          0.0], abs=1e-12)


def test_ranking_alignment_loss_golden():
    # s = (-1.0, -1.3, -1.6), grades (2, 1, 0): pairs (0,1), (0,2), (1,2)
    # s_j - s_i: (0,1) -0.3, (0,2) -0.6, (1,2) -0.3
    pref = [math.exp(-0.3), math.exp(-0.6), math.exp(-0.3)]
    # B_1 = s0 - 0.5 = -1.5; B_2 = min(s0, s1) - 0.5 = -1.8
    # T_01 - s1 = 2(-1.5) + 1.0 + 1.3 = -0.7; T_02 - s2 = 2(-1.8) + 1.0 + 1.6 = -1.0
    # T_12 - s2 = 2(-1.8) + 1.3 + 1.6 = -0.7
    bound = [math.exp(-0.7), math.exp(-1.0), math.exp(-0.7)]
    z, z_bc = 1 + sum(pref), 1 + sum(pref) + sum(bound)
    grades, valid = torch.tensor([[2.0, 1.0, 0.0]]), mask([[1, 1, 1]])
    expected_value = {"none": math.log(z), "dc": math.log(z), "bc": math.log(z_bc)}
    expected_grad = {
        # none: s0 is better in (0,1), (0,2); s1 better in (1,2), worse in (0,1); s2 worse in (0,2), (1,2)
        "none": [-(pref[0] + pref[1]) / z, (pref[0] - pref[2]) / z, (pref[1] + pref[2]) / z],
        # dc: worse scores detached, so only the "better" side moves
        "dc": [-(pref[0] + pref[1]) / z, -pref[2] / z, 0.0],
        # bc: d/ds0 = -(e^{-0.3} + e^{-0.6} + e^{T_01-s1} + e^{T_02-s2}) / Z
        #     d/ds1 = (e^{s1-s0} - e^{T_01-s1} - e^{s2-s1} - e^{T_12-s2}) / Z   (s1 is in T_12, B's are detached)
        #     d/ds2 = (e^{s2-s0} + e^{s2-s1} - e^{T_02-s2} - e^{T_12-s2}) / Z
        "bc": [-(pref[0] + pref[1] + bound[0] + bound[1]) / z_bc,
               (pref[0] - bound[0] - pref[2] - bound[2]) / z_bc,
               (pref[1] + pref[2] - bound[1] - bound[2]) / z_bc],
    }
    for constraint in L.CONSTRAINTS:
        scores = leaf([[-1.0, -1.3, -1.6]])
        loss = L.ranking_alignment_loss(scores, grades, valid, constraint, beta=BETA)
        loss.sum().backward()
        assert loss.item() == pytest.approx(expected_value[constraint], abs=1e-12), constraint
        assert scores.grad[0].tolist() == pytest.approx(expected_grad[constraint], abs=1e-12), constraint


def test_boundary_loss_golden():
    # the pairs and T_ij of the ranking golden above: s = (-1.0, -1.3, -1.6), grades (2, 1, 0), beta 0.5
    # T_01 - s1 = -0.7, T_02 - s2 = -1.0, T_12 - s2 = -0.7; a second question has no pair and gives 0
    e = [math.exp(-0.7), math.exp(-1.0), math.exp(-0.7)]
    z = 1 + sum(e)
    scores = leaf([[-1.0, -1.3, -1.6], [0.4, -0.2, 9.0]])
    loss = L.boundary_loss(scores, torch.tensor([[2.0, 1.0, 0.0], [1.0, 1.0, 0.0]]), mask([[1, 1, 1], [1, 1, 0]]),
                           beta=BETA)
    assert loss.tolist() == pytest.approx([math.log(z), 0.0], abs=1e-12)
    loss.sum().backward()
    # every term has d/ds_j = -1 and d/ds_i = -1 (through T_ij = 2 B_j - s_i; B_j is detached): all are lifted
    # d/ds0 = -(e01 + e02) / Z, d/ds1 = -(e01 + e12) / Z (worse in (0,1), better in (1,2)), d/ds2 = -(e02 + e12) / Z
    assert scores.grad[0].tolist() == pytest.approx([-(e[0] + e[1]) / z, -(e[0] + e[2]) / z, -(e[1] + e[2]) / z],
                                                    abs=1e-12)
    assert scores.grad[1].tolist() == [0.0, 0.0, 0.0]
    # with the default beta the boundary of the single pair (0, 1) sits at s0 - L.BETA
    two = leaf([[0.0, -L.BETA]])
    L.boundary_loss(two, torch.tensor([[1.0, 0.0]]), mask([[1, 1]])).sum().backward()
    assert two.grad[0].tolist() == pytest.approx([-math.exp(-L.BETA) / (1 + math.exp(-L.BETA))] * 2, abs=1e-7)


def test_rrhf_golden():
    # s = (-1.0, -0.8, -2.0), grades (2, 1, 0)
    # hinges: (0,1) max(0, -0.8 + 1.0) = 0.2; (0,2) max(0, -2.0 + 1.0) = 0; (1,2) max(0, -2.0 + 0.8) = 0
    # L_NLL(best) = -s0 = 1.0  ->  none = dc = 1.2
    # bc: B_1 = s0 - 0.5 = -1.5, B_2 = min(s0, s1) - 0.5 = -1.5
    #     T_01 - s1 = -3 + 1.0 + 0.8 = -1.2; T_02 - s2 = -3 + 1.0 + 2.0 = 0.0; T_12 - s2 = -3 + 0.8 + 2.0 = -0.2
    boundary = math.log(1 + math.exp(-1.2) + math.exp(0.0) + math.exp(-0.2))
    expected_value = {"none": 1.2, "dc": 1.2, "bc": 1.2 + boundary}  # bc: the former rrhf_loss(constraint="bc")
    # d/ds0: -1 (hinge 0,1) - 1 (NLL); d/ds1: +1 (hinge, as the worse one); d/ds2: 0 (no active hinge)
    expected_grad = {"none": [-2.0, 1.0, 0.0], "dc": [-2.0, 0.0, 0.0]}
    grades, valid = torch.tensor([[2.0, 1.0, 0.0]]), mask([[1, 1, 1]])
    for constraint in L.CONSTRAINTS:
        value, grad = value_and_grad("rrhf", torch.tensor([[-1.0, -0.8, -2.0]], dtype=torch.float64), grades, valid,
                                     constraint)
        assert value.item() == pytest.approx(expected_value[constraint], abs=1e-12), constraint
        if constraint in expected_grad:
            assert grad[0].tolist() == pytest.approx(expected_grad[constraint], abs=1e-12), constraint


def test_rrhf_tie_for_best_goes_to_the_first():
    # grades (1, 1, 0), s = (-2.0, -1.0, -1.5): best = candidate 0 -> L_NLL = 2.0
    # hinges: (0,2) max(0, -1.5 + 2.0) = 0.5; (1,2) max(0, -1.5 + 1.0) = 0; the tie (0,1) is no pair
    loss = L.rrhf_loss(leaf([[-2.0, -1.0, -1.5]]), torch.tensor([[1.0, 1.0, 0.0]]), mask([[1, 1, 1]]))
    assert loss.tolist() == pytest.approx([2.5], abs=1e-12)


def test_pro_golden():
    # s = (a, b, c, d) = (-1.0, -0.5, -1.5, -2.0), grades (2, 1, 1, 0): b and c tie
    a, b, c, d = -1.0, -0.5, -1.5, -2.0
    e = math.exp
    listwise = (math.log(e(a) + e(b) + e(c) + e(d)) - a   # m = a: everything is at or below it
                + math.log(e(b) + e(d)) - b               # m = b: itself and the strictly worse d, not c
                + math.log(e(c) + e(d)) - c               # m = c: likewise
                + 0.0)                                    # m = d: only itself
    nll_best = -a
    # bc pairs (0,1) (0,2) (0,3) (1,3) (2,3); B_1 = B_2 = a - 0.5 = -1.5; B_3 = min(a, b, c) - 0.5 = -2.0
    # T_01 - s1 = -3 + 1 + 0.5 = -1.5; T_02 - s2 = -3 + 1 + 1.5 = -0.5; T_03 - s3 = -4 + 1 + 2 = -1.0
    # T_13 - s3 = -4 + 0.5 + 2 = -1.5; T_23 - s3 = -4 + 1.5 + 2 = -0.5
    boundary = math.log(1 + e(-1.5) + e(-0.5) + e(-1.0) + e(-1.5) + e(-0.5))
    expected_value = {"none": listwise + nll_best, "dc": listwise + nll_best, "bc": listwise + nll_best + boundary}
    z0, zb = e(a) + e(b) + e(c) + e(d), e(b) + e(d)
    # d/db: none = e^b/z0 (in a's denominator) + e^b/zb - 1 (its own term); dc: a's denominator is detached
    expected_grad_b = {"none": e(b) / z0 + e(b) / zb - 1, "dc": e(b) / zb - 1}
    grades, valid = torch.tensor([[2.0, 1.0, 1.0, 0.0]]), mask([[1, 1, 1, 1]])
    for constraint in L.CONSTRAINTS:
        value, grad = value_and_grad("pro", torch.tensor([[a, b, c, d]], dtype=torch.float64), grades, valid,
                                     constraint)
        assert value.item() == pytest.approx(expected_value[constraint], abs=1e-12), constraint
        if constraint in expected_grad_b:
            assert grad[0, 1].item() == pytest.approx(expected_grad_b[constraint], abs=1e-12)
        if constraint == "dc":
            assert grad[0, 3].item() == 0.0  # the worst one only ever sits in (detached) denominators


def test_dpo_golden():
    # S = (-10, -12, -9), S_ref = (-11, -11, -10): rewards S - S_ref = (1, -1, 1); grades (1, 0, 0)
    # margins: (0,1) 0.1 * (1 - (-1)) = 0.2; (0,2) 0.1 * (1 - 1) = 0
    # loss = mean over the 2 pairs of -log sigmoid(margin)
    pairs = [-logsig(0.2), -logsig(0.0)]
    # bc on s = (-1.0, -1.2, -2.0): B_1 = B_2 = s0 - 0.5 = -1.5, T_0j = 2B - s0 = -2.0
    # boundary = log(1 + e^{T_01 - s1} + e^{T_02 - s2}) = log(1 + e^{-0.8} + e^{0})
    boundary = math.log(1 + math.exp(-0.8) + math.exp(0.0))
    expected_value = {"none": sum(pairs) / 2, "dc": sum(pairs) / 2, "bc": sum(pairs) / 2 + boundary}
    # d/dS_l of -log sigmoid(beta (r_w - r_l)) = beta * sigmoid(-margin); each pair weighs 1/2
    grad_loser_1 = 0.5 * 0.1 * sig(-0.2)
    grad_winner = -0.5 * 0.1 * (sig(-0.2) + sig(0.0))
    grades, valid = torch.tensor([[1.0, 0.0, 0.0]]), mask([[1, 1, 1]])
    reference = torch.tensor([[-11.0, -11.0, -10.0]], dtype=torch.float64)
    for constraint in L.CONSTRAINTS:
        policy = leaf([[-10.0, -12.0, -9.0]])
        scores = leaf([[-1.0, -1.2, -2.0]])
        loss = L.dpo_loss(policy, reference, grades, valid, beta_dpo=0.1, detach_worse=constraint == "dc")
        if constraint == "bc":  # the trainer's bc: DPO + the boundary on the length-normalised scores
            loss = loss + L.boundary_loss(scores, grades, valid, beta=BETA)
        loss.sum().backward()
        assert loss.item() == pytest.approx(expected_value[constraint], abs=1e-12), constraint
        assert policy.grad[0, 0].item() == pytest.approx(grad_winner, abs=1e-12)
        assert policy.grad[0, 1].item() == pytest.approx(0.0 if constraint == "dc" else grad_loser_1, abs=1e-12)
        assert reference.grad is None


def test_dpo_two_candidates_is_the_textbook_formula():
    # K = 2, one pair per question: -log sigmoid(0.1 * ((S_w - S_w^ref) - (S_l - S_l^ref))), row by row;
    # rewards S - S_ref: (-1, 1) winner second, (1, -1) winner first, (-1, 1) winner first (margin -0.2)
    policy = leaf([[-12.0, -10.0], [-5.0, -7.0], [-3.0, -3.0]])
    reference = torch.tensor([[-11.0, -11.0], [-6.0, -6.0], [-2.0, -4.0]], dtype=torch.float64)
    grades = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    loss = L.dpo_loss(policy, reference, grades, mask([[1, 1], [1, 1], [1, 1]]), beta_dpo=0.1)
    assert loss.tolist() == pytest.approx([-logsig(0.2), -logsig(0.2), -logsig(-0.2)], abs=1e-12)


@pytest.mark.parametrize("detach_worse", [False, True])
def test_dpo_is_log2_when_policy_equals_reference(detach_worse):
    g = torch.Generator().manual_seed(3)
    for K, grades in [(2, [[1.0, 0.0], [0.0, 1.0]]), (4, [[2.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 1.0]])]:
        policy = -50 * torch.rand(2, K, generator=g)
        loss = L.dpo_loss(policy, policy.clone(), torch.tensor(grades), torch.ones(2, K, dtype=torch.bool),
                          detach_worse=detach_worse)
        assert loss.tolist() == pytest.approx([math.log(2)] * 2, abs=1e-6)


# -----------------------------------------------------------------------------
# An independent reimplementation: one question at a time, pair by pair, in Python loops over scalar tensors


def loop_loss(name, constraint, s, r, v, reference=None, beta=BETA):
    """The loss of one question, written from docs/method.md without any of losses.py's masking or broadcasting.
    s (K,) float64 with grad, r (K,) grades as floats, v (K,) bools; bc of a baseline = the former one-function form
    baseline + log(1 + sum exp(T_ij - s_j)). Returns a scalar tensor (0 without a pair)."""
    idx = [k for k in range(len(v)) if v[k]]
    pairs = [(i, j) for i in idx for j in idx if r[i] > r[j]]
    if not pairs:
        return torch.zeros((), dtype=torch.float64)
    worse = {j: (s[j].detach() if constraint == "dc" else s[j]) for j in idx}
    boundary_terms = []
    for i, j in pairs:
        if name == "aft":  # the paper's binary form: B from the worst positive
            b = min(s[p].item() for p in idx if r[p] == 1) - beta
        else:
            b = min(s[k].item() for k in idx if r[k] > r[j]) - beta
        boundary_terms.append(torch.exp(2 * b - s[i] - s[j]))
    boundary = torch.log(1 + sum(boundary_terms)) if constraint == "bc" else 0.0
    if name in ("aft", "aft_rank"):
        terms = [torch.exp(worse[j] - s[i]) for i, j in pairs]
        return torch.log(1 + sum(terms) + (sum(boundary_terms) if constraint == "bc" else 0.0))
    best = max(idx, key=lambda k: (r[k], -k))  # highest grade, the first on ties
    if name == "rrhf":
        hinge = sum(torch.clamp(worse[j] - s[i], min=0.0) for i, j in pairs)
        return hinge - s[best] + boundary
    if name == "pro":
        listwise = 0.0
        for m in idx:
            listwise = listwise + torch.log(torch.exp(s[m]) + sum(torch.exp(worse[k]) for k in idx if r[k] < r[m])) - s[m]
        return listwise - s[best] + boundary
    reward = [4 * s[k] - reference[k] for k in range(len(v))]
    loser = [4 * worse[k] - reference[k] if k in worse else None for k in range(len(v))]
    dpo = sum(torch.log(1 + torch.exp(-0.1 * (reward[i] - loser[j]))) for i, j in pairs) / len(pairs)
    return dpo + boundary


def random_groups(seed, B=6, K=5, levels=(0.25, 1.5)):
    """Random scores with NaN in padding, grades drawn from `levels`, some candidates invalid."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(B, K, generator=g, dtype=torch.float64)
    grades = torch.tensor(levels, dtype=torch.float64)[torch.randint(0, len(levels), (B, K), generator=g)]
    valid = torch.rand(B, K, generator=g) < 0.8
    valid[0] = True
    grades[0] = torch.tensor(levels, dtype=torch.float64)[torch.arange(K) % len(levels)]  # one group surely has pairs
    scores = torch.where(valid, scores, torch.nan)
    return scores, grades, valid


def grades_for(name, grades):
    """Binary AFT takes 0/1 labels; the others take the multi-level grades as they are."""
    return (grades > grades.nan_to_num().min()).double() if name == "aft" else grades


@pytest.mark.parametrize("name,constraint", ALL)
def test_matches_the_loop_reimplementation(name, constraint):
    for seed in range(3):
        scores, grades, valid = random_groups(20 + seed, B=5, K=5, levels=(0.0, 0.5, 1.0, 1.5))
        grades = grades_for(name, grades)
        reference = torch.where(valid, -3.0 + 0.5 * torch.randn(scores.shape, dtype=torch.float64), torch.nan)
        value, grad = value_and_grad(name, scores, grades, valid, constraint, reference)
        for b in range(scores.shape[0]):
            s = scores[b].clone().requires_grad_(True)
            expected = loop_loss(name, constraint, s, grades[b].tolist(), valid[b].tolist(), reference[b])
            expected_grad = torch.autograd.grad(expected, s)[0] if expected.requires_grad else torch.zeros_like(s)
            assert value[b].item() == pytest.approx(expected.item(), abs=1e-12), (seed, b)
            torch.testing.assert_close(grad[b], expected_grad.nan_to_num(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["rrhf", "pro", "dpo"])
def test_baseline_plus_boundary_loss_is_the_former_bc_variant(name):
    scores, grades, valid = random_groups(5, B=4, K=5, levels=(0.0, 1.0, 2.0))
    reference = torch.where(valid, -3.0 + 0 * scores, torch.nan)
    s = scores.clone().requires_grad_(True)
    if name == "dpo":
        baseline = L.dpo_loss(4 * s, reference, grades, valid)
    else:
        baseline = BASELINES[name](s, grades, valid)
    assembled = baseline + L.boundary_loss(s, grades, valid, beta=BETA)  # what the trainer adds for bc
    for b in range(4):
        former = loop_loss(name, "bc", scores[b].clone(), grades[b].tolist(), valid[b].tolist(), reference[b])
        assert assembled[b].item() == pytest.approx(former.item(), abs=1e-12)


# -----------------------------------------------------------------------------
# Gradient directions


# negatives (label 0) all score above at least one positive, so every hinge of RRHF is active too
DIRECTION_SCORES = [[-1.0, -1.2, -0.5, -0.8, -1.1]]
DIRECTION_LABELS = torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.0]])


@pytest.mark.parametrize("name", NAMES)
def test_none_pushes_negatives_down_and_positives_up(name):
    _, grad = value_and_grad(name, torch.tensor(DIRECTION_SCORES), DIRECTION_LABELS, mask([[1] * 5]), "none")
    assert (grad[0, :2] < 0).all() and (grad[0, 2:] > 0).all(), grad


@pytest.mark.parametrize("name", NAMES)
def test_dc_gives_negatives_exactly_zero_gradient(name):
    _, grad = value_and_grad(name, torch.tensor(DIRECTION_SCORES), DIRECTION_LABELS, mask([[1] * 5]), "dc")
    assert (grad[0, :2] < 0).all(), grad
    assert torch.count_nonzero(grad[0, 2:]) == 0, grad


@pytest.mark.parametrize("name", ["rrhf", "pro", "dpo"])
def test_detach_worse_gives_the_worst_candidate_no_gradient(name):
    # three levels: the worst (grade 0) is only ever the worse one, the middle one is both
    scores, grades = torch.tensor([[-1.0, -0.6, -0.7, -0.4]]), torch.tensor([[2.0, 1.0, 1.0, 0.0]])
    _, grad = value_and_grad(name, scores, grades, mask([[1, 1, 1, 1]]), "dc")
    assert grad[0, 3].item() == 0.0 and grad[0, 0] < 0, grad
    _, grad_none = value_and_grad(name, scores, grades, mask([[1, 1, 1, 1]]), "none")
    assert grad_none[0, 3] > 0, grad_none  # without the detach, the worst one is pushed down


@pytest.mark.parametrize("name", ["aft", "aft_rank"])
def test_bc_gradient_vanishes_at_the_boundary(name):
    # one pair, s_p = 0: B = -0.5. Above B the negative is pushed down, below it pulled up, at B left alone.
    grads = {}
    for s_n in (0.3, -0.2, -0.5, -0.8, -3.0):
        scores = torch.tensor([[0.0, s_n]], dtype=torch.float64)
        _, grad = value_and_grad(name, scores, torch.tensor([[1.0, 0.0]]), mask([[1, 1]]), "bc")
        assert grad[0, 0] < 0  # the positive is always pulled up
        grads[s_n] = grad[0, 1].item()
    assert grads[0.3] > 0 and grads[-0.2] > 0
    assert abs(grads[-0.5]) < 1e-12
    assert grads[-0.8] < 0 and grads[-3.0] < 0


@pytest.mark.parametrize("name", NAMES)
def test_bc_pushes_down_far_above_and_up_far_below_for_every_loss(name):
    # s_p = 0 and B = -0.5: a negative at +1 outranks the positive, one at -3 sits far under the boundary
    for s_n, sign in ((1.0, 1), (-3.0, -1)):
        _, grad = value_and_grad(name, torch.tensor([[0.0, s_n]]), torch.tensor([[1.0, 0.0]]), mask([[1, 1]]), "bc")
        assert grad[0, 0] < 0
        assert sign * grad[0, 1] > 0, (s_n, grad)


def test_bc_boundary_uses_the_worst_positive():
    # positives 0.0 and -1.0: B = -1.5, so a negative at -1.2 (above B, below both positives) is still pushed down
    _, grad = value_and_grad("aft", torch.tensor([[0.0, -1.0, -1.2]]), torch.tensor([[1.0, 1.0, 0.0]]),
                             mask([[1, 1, 1]]), "bc")
    assert grad[0, 2] > 0
    _, grad = value_and_grad("aft", torch.tensor([[0.0, -1.0, -1.7]]), torch.tensor([[1.0, 1.0, 0.0]]),
                             mask([[1, 1, 1]]), "bc")
    assert grad[0, 2] < 0


# -----------------------------------------------------------------------------
# Ranking form against binary form


@pytest.mark.parametrize("constraint", L.CONSTRAINTS)
def test_ranking_form_equals_binary_form_on_two_levels(constraint):
    for seed in range(4):
        scores, grades, valid = random_groups(seed)
        labels = (grades == 1.5).double()
        binary = scores.clone().requires_grad_(True)
        ranking = scores.clone().requires_grad_(True)
        value_binary = L.alignment_loss(binary, labels, valid, constraint, beta=BETA)
        value_ranking = L.ranking_alignment_loss(ranking, grades, valid, constraint, beta=BETA)
        value_binary.sum().backward()
        value_ranking.sum().backward()
        assert value_binary[0].item() > 0
        torch.testing.assert_close(value_ranking, value_binary, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ranking.grad, binary.grad, rtol=1e-12, atol=1e-12)


# -----------------------------------------------------------------------------
# Stability, padding and batching (every loss, every constraint)


@pytest.mark.parametrize("name,constraint", ALL)
def test_extreme_scores_stay_finite(name, constraint):
    scores = torch.tensor([[1e4, -1e4, 5e3, -1e4], [-1e4, 1e4, 0.0, 1e4]])
    grades = grades_for(name, torch.tensor([[2.0, 0.0, 1.0, 0.0], [2.0, 0.0, 0.0, 1.0]]))
    value, grad = value_and_grad(name, scores, grades, mask([[1, 1, 1, 1], [1, 1, 1, 1]]), constraint)
    assert torch.isfinite(value).all() and torch.isfinite(grad).all(), (value, grad)


@pytest.mark.parametrize("name,constraint", ALL)
def test_padding_and_masked_candidates_change_nothing(name, constraint):
    scores, grades, valid = random_groups(7, B=3, K=4, levels=(0.0, 0.5, 1.0, 1.5))
    grades = grades_for(name, grades)
    reference = torch.where(valid, -3.0 + 0 * scores, torch.nan)
    value, grad = value_and_grad(name, scores, grades, valid, constraint, reference)
    # insert a masked-out candidate that would be the best and highest scoring, and garbage padding after it
    garbage_scores = torch.tensor([[1e3, torch.nan, torch.inf, -torch.inf]], dtype=torch.float64).expand(3, 4)
    garbage_grades = torch.tensor([[1.0, torch.nan, 5.0, -torch.inf]], dtype=torch.float64).expand(3, 4)
    padded_scores = torch.cat([scores[:, :2], garbage_scores[:, :1], scores[:, 2:], garbage_scores[:, 1:]], dim=1)
    padded_grades = torch.cat([grades[:, :2], garbage_grades[:, :1], grades[:, 2:], garbage_grades[:, 1:]], dim=1)
    padded_valid = torch.cat([valid[:, :2], torch.zeros(3, 1, dtype=torch.bool), valid[:, 2:],
                              torch.zeros(3, 3, dtype=torch.bool)], dim=1)
    padded_reference = torch.cat([reference[:, :2], garbage_scores[:, :1], reference[:, 2:], garbage_scores[:, 1:]],
                                 dim=1)
    inputs = [t.clone() for t in (padded_scores, padded_grades, padded_valid, padded_reference)]
    padded_value, padded_grad = value_and_grad(name, padded_scores, padded_grades, padded_valid, constraint,
                                               padded_reference)
    for before, after in zip(inputs, (padded_scores, padded_grades, padded_valid, padded_reference)):
        assert torch.equal(before.nan_to_num(), after.nan_to_num())  # no input was written to
    kept = [0, 1, 3, 4]
    torch.testing.assert_close(padded_value, value, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(padded_grad[:, kept], grad.nan_to_num(), rtol=1e-12, atol=1e-12)
    assert torch.count_nonzero(padded_grad[~padded_valid]) == 0  # and no NaN either
    assert torch.count_nonzero(grad.nan_to_num(1.0)[~valid]) == 0


@pytest.mark.parametrize("name,constraint", ALL)
def test_questions_without_pairs_give_an_attached_zero(name, constraint):
    good_scores = [0.3, -0.4, 0.1]
    good_grades = [1.0, 0.0, 0.0]
    scores = torch.tensor([good_scores, [0.5, -1.0, 2.0], [0.5, -1.0, 2.0], [0.7, 9.0, 9.0], [9.0, 9.0, 9.0]],
                          dtype=torch.float64)
    grades = torch.tensor([good_grades,
                           [0.0, 0.0, 0.0],     # no positive
                           [1.0, 1.0, 1.0],     # no negative
                           [1.0, 0.0, 0.0],     # one valid candidate
                           [1.0, 0.0, 0.0]],    # nothing valid
                          dtype=torch.float64)
    valid = mask([[1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 0, 0], [0, 0, 0]])
    value, grad = value_and_grad(name, scores, grades, valid, constraint)
    alone_value, alone_grad = value_and_grad(name, scores[:1], grades[:1], valid[:1], constraint)
    torch.testing.assert_close(value[:1], alone_value, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad[:1], alone_grad, rtol=1e-12, atol=1e-12)
    assert value[1:].tolist() == [0.0] * 4
    assert torch.count_nonzero(grad[1:]) == 0
    # with no pair anywhere: exact zeros that can still be backpropagated through
    s = scores[1:].clone().requires_grad_(True)
    loss = preference_loss(name, s, grades[1:], valid[1:], constraint)
    assert loss.tolist() == [0.0] * 4 and loss.grad_fn is not None
    loss.sum().backward()
    assert torch.count_nonzero(s.grad) == 0


@pytest.mark.parametrize("name,constraint", ALL)
def test_each_question_is_computed_alone(name, constraint):
    scores, grades, valid = random_groups(11, B=4, K=5, levels=(0.0, 1.0, 2.0))
    valid[:] = True  # every group gets pairs below
    grades[:, 0], grades[:, 1] = 2.0, 0.0
    scores = scores.nan_to_num()
    grades = grades_for(name, grades)
    batch = preference_loss(name, scores, grades, valid, constraint)
    per_question = [preference_loss(name, scores[b:b + 1], grades[b:b + 1], valid[b:b + 1], constraint)
                    for b in range(4)]
    torch.testing.assert_close(batch, torch.cat(per_question), rtol=1e-12, atol=1e-12)
