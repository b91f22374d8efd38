"""
The losses of Alignment Fine-Tuning (AFT) and its baselines, in the order of docs/method.md: the score (section 2),
the likelihood term (3), AFT's L_A / DC / BC (4), the ranking form (5), the boundary term and the baselines (6);
helpers last. Pure functions, each docstring with its formula, its tag ([paper] = stated by the paper, [ours] = our
choice where the paper is silent) and shapes. For B questions of K candidates, every preference loss takes scores
(B, K) float s (`mean_logprob`), grades (B, K) float (higher is better, ties allowed; binary: 1 = correct, 0 = not)
and valid (B, K) bool (False = padding or masked out), and returns one value per question, (B,), which the trainer
averages over the batch (docs/method.md section 7). An ordered pair (i, j) is two valid candidates of one question
with r_i > r_j; a question without one gives 0, still attached to the graph. Invalid scores become 0 before any
arithmetic and pair terms -inf before any exp, so padding never puts NaN in a value or a gradient. Inputs stay as given.
"""

import torch
import torch.nn.functional as F

CONSTRAINTS = ("none", "dc", "bc")  # the one switch of the AFT losses: L_A, DC, BC (docs/method.md section 4)
# [ours] The boundary margin, in nats of mean log-prob per token: a negative is pushed down until its score is beta
# below the worst positive's, and no further. Right and wrong chains of a question share most tokens, so their scores
# lie close; 0.05 is where the constraint bites at that scale (checked on the validation split, docs/method.md 4.4).
# With 0.5 the boundary lay far below the negatives, was never reached, and bc behaved like none.
BETA = 0.05

# -----------------------------------------------------------------------------
# The score (docs/method.md section 2)


def sequence_logprobs(logits, targets, mask):
    """Sum and count of the scored tokens' log-probs, in float32.

        S(c) = sum_j log p_theta(c_j | q, c_<j)   and   |c|                 [paper] (docs/method.md section 2)

    logits (N, T, V) any float dtype, logits[:, t] predicts targets[:, t]; targets (N, T) long, already shifted, any
    value (e.g. -100) where mask is 0; mask (N, T) bool or 0/1, 1 = a scored response token (prompt, padding: 0)
    -> sum_logp (N,) float32, n_tokens (N,) float32.
    """
    mask = mask.bool()  # (N, T)
    # gather needs an index in range everywhere; torch.where makes a copy, so the caller's targets stay as they were
    safe_targets = torch.where(mask, targets, 0)  # (N, T)
    # float32 before log_softmax: fp16/bf16 log-probs lose precision and can overflow into NaN
    logp = F.log_softmax(logits.float(), dim=-1)  # (N, T, V)
    token_logp = logp.gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)  # (N, T)
    sum_logp = torch.where(mask, token_logp, 0.0).sum(dim=-1)  # (N,)
    n_tokens = mask.sum(dim=-1).float()  # (N,)
    return sum_logp, n_tokens


def mean_logprob(sum_logp, n_tokens):
    """The paper's score, the length-normalised log-likelihood:

        s(c) = S(c) / |c|,   PPL(c) = exp(-s(c))                             [paper] (docs/method.md section 2)

    sum_logp, n_tokens (N,) from `sequence_logprobs` -> s (N,). [ours] |c| is clamped to >= 1, so an empty response
    scores 0 with finite gradients."""
    return sum_logp / n_tokens.clamp(min=1)


# -----------------------------------------------------------------------------
# The likelihood term (docs/method.md section 3)


def nll_loss(scores, selected):
    """L_NLL per question: the mean of -s over the question's selected candidates.

        L_VFT(c) = -(1/|c|) sum_j log p(c_j | q, c_<j) = -s(c)            [paper] (docs/method.md section 3)
        L_NLL(q) = (1/|sel(q)|) sum_{c in sel(q)} -s(c)                     [ours]  (docs/method.md section 7)

    AFT selects the gold and positive chains (or the gold only); RFT is this loss alone. Every selected chain weighs
    the same whatever its length. scores (B, K) float s, selected (B, K) bool -> (B,); 0 where nothing is selected.
    """
    s = torch.where(selected, scores, 0.0)  # (B, K) unselected entries may be padding holding NaN
    return -s.sum(dim=1) / selected.sum(dim=1).clamp(min=1)


# -----------------------------------------------------------------------------
# AFT: constraint alignment (docs/method.md sections 4 and 5)


def alignment_loss(scores, labels, valid, constraint="bc", beta=BETA):
    """AFT's constraint alignment loss with binary feedback, G_P positives and G_N negatives of one question:
        none  L_A  = log(1 + sum_{p in G_P} sum_{n in G_N} exp(s_n - s_p))                        [paper]
        dc    L_DC = log(1 + sum_p sum_n exp(sg(s_n) - s_p))                                       [paper]
        bc    L_BC = log(1 + sum_p sum_n [exp(s_n - s_p) + exp(T_p - s_n)]),                       [paper]
              B = min_{p in G_P} s_p - beta,   T_p = 2B - s_p
              B is computed from sg(s_p); s_p inside T_p is not detached                           [ours]

    (docs/method.md section 4.) The (p, n) part of dL_BC/ds_n is zero exactly at s_n = B: a negative is pushed down
    above the boundary and pulled back up below it. scores (B, K) float s; labels (B, K) 1 = positive, 0 = negative
    (else ValueError: grades go to `ranking_alignment_loss`); valid (B, K) bool -> (B,); 0 without a (p, n) pair.
    """
    _check_constraint(constraint)
    if not ((labels[valid] == 0) | (labels[valid] == 1)).all():
        raise ValueError("losses.py alignment_loss: labels must be 0 or 1; use ranking_alignment_loss for grades")
    s = torch.where(valid, scores, 0.0)  # (B, K)
    positive, negative = valid & (labels == 1), valid & (labels == 0)  # (B, K) G_P, G_N
    pair = positive[:, :, None] & negative[:, None, :]  # (B, K, K) pair[b, p, n]
    s_p = s[:, :, None]  # (B, K, 1)
    s_n = (s.detach() if constraint == "dc" else s)[:, None, :]  # (B, 1, K)
    terms = [torch.where(pair, s_n - s_p, -torch.inf)]  # (B, K, K) s_n - s_p
    if constraint == "bc":
        worst_positive = torch.where(positive, s.detach(), torch.inf).amin(dim=1)  # (B,)
        boundary = torch.where(positive.any(dim=1), worst_positive, 0.0) - beta  # (B,) B; 0 keeps no-pair rows finite
        target = 2 * boundary[:, None] - s  # (B, K) T_p
        terms.append(torch.where(pair, target[:, :, None] - s_n, -torch.inf))  # (B, K, K) T_p - s_n
    return _log_one_plus_sum_exp(*terms)


def ranking_alignment_loss(scores, grades, valid, constraint="bc", beta=BETA):
    """AFT's constraint alignment loss with ranking feedback (RBC), over the ordered pairs (i, j), r_i > r_j:
        bc    L_RBC = log(1 + sum_{r_i > r_j} [exp(s_j - s_i) + exp(T_ij - s_j)]),     [paper idea; formula ours]
              B_j = sg(min_{i: r_i > r_j} s_i) - beta,   T_ij = 2 B_j - s_i
        dc    log(1 + sum_{r_i > r_j} exp(sg(s_j) - s_i))                                [ours]
        none  log(1 + sum_{r_i > r_j} exp(s_j - s_i))                                    [ours]

    (docs/method.md section 5.) On two grade levels it is exactly `alignment_loss` (each pair is a (positive, negative)
    one and B_j = B). scores (B, K) float s, grades (B, K) float, valid (B, K) bool -> (B,); 0 without an ordered pair.
    """
    _check_constraint(constraint)
    s = torch.where(valid, scores, 0.0)  # (B, K)
    better = _ordered_pairs(grades, valid)  # (B, K, K) better[b, i, j]: r_i > r_j
    s_worse = s.detach() if constraint == "dc" else s  # (B, K)
    preference = torch.where(better, s_worse[:, None, :] - s[:, :, None], -torch.inf)  # (B, K, K) s_j - s_i
    if constraint == "bc":
        return _log_one_plus_sum_exp(preference, _boundary_logits(s, better, beta))
    return _log_one_plus_sum_exp(preference)


# -----------------------------------------------------------------------------
# The baselines (docs/method.md section 6) and the boundary term their bc variant adds


def boundary_loss(scores, grades, valid, beta=BETA):
    """The boundary term alone, which the trainer adds to a baseline for its bc variant:

        log(1 + sum_{r_i > r_j} exp(T_ij - s_j)),   B_j, T_ij as in L_RBC               [ours] (docs/method.md 6.5)

    Its gradient lifts each worse candidate towards its boundary B_j, which stops a baseline from pushing negatives
    down without bound. For DPO pass the length-normalised s, not DPO's summed S. scores, grades (B, K) float,
    valid (B, K) bool -> (B,); 0 without a pair.
    """
    s = torch.where(valid, scores, 0.0)  # (B, K)
    return _log_one_plus_sum_exp(_boundary_logits(s, _ordered_pairs(grades, valid), beta))


def rrhf_loss(scores, grades, valid, *, detach_worse=False):
    """RRHF (Yuan et al. 2023), per question:

        sum_{r_i > r_j} max(0, s_j - s_i) + L_NLL(best),   L_NLL(best) = -s(best)         [paper] (docs/method.md 6.2)
        detach_worse: max(0, sg(s_j) - s_i), the dc variant                                [ours]

    best = the highest-graded valid candidate, ties to the first [ours]. The hinge sums over ordered pairs, not padded
    slots; s stays length-normalised (the RRHF release lost that by overwriting its labels in place). Shapes as above.
    """
    s = torch.where(valid, scores, 0.0)  # (B, K)
    better = _ordered_pairs(grades, valid)  # (B, K, K) better[b, i, j]: r_i > r_j
    s_worse = s.detach() if detach_worse else s  # (B, K)
    hinge = torch.where(better, F.relu(s_worse[:, None, :] - s[:, :, None]), 0.0)  # (B, K, K) max(0, s_j - s_i)
    per_question = hinge.sum(dim=(1, 2)) + _nll_of_best(s, grades, valid)  # (B,)
    return torch.where(better.flatten(1).any(dim=1), per_question, 0.0)


def pro_loss(scores, grades, valid, *, detach_worse=False):
    """PRO (Song et al. 2023), per question, candidates sorted best first:

        -sum_m log(exp(s_m) / sum_{i ranked at or below m} exp(s_i)) + L_NLL(best)  [paper] (docs/method.md 6.3)
        ties: m's denominator holds m itself and every strictly worse candidate       [paper]
        detach_worse: the strictly worse scores in each denominator are sg()'d, the dc variant   [ours]

    Each term is a log-softmax, logsumexp(s_m, worse s_i) - s_m, never log(eps + sum exp), which overflows; the "at
    or below" sets come from the pair mask, so nothing is sorted. L_NLL(best) and shapes as in `rrhf_loss`.
    """
    s = torch.where(valid, scores, 0.0)  # (B, K)
    better = _ordered_pairs(grades, valid)  # (B, K, K) better[b, m, i]: i is strictly worse than m
    s_worse = s.detach() if detach_worse else s  # (B, K)
    worse_logits = torch.where(better, s_worse[:, None, :], -torch.inf)  # (B, K, K) s_i for i worse than m
    denominator = torch.logsumexp(torch.cat([s[:, :, None], worse_logits], dim=2), dim=2)  # (B, K)
    listwise = torch.where(valid, denominator - s, 0.0).sum(dim=1)  # (B,) -sum_m log softmax
    per_question = listwise + _nll_of_best(s, grades, valid)  # (B,)
    return torch.where(better.flatten(1).any(dim=1), per_question, 0.0)


def dpo_loss(policy_logps, reference_logps, grades, valid, beta_dpo=0.1, *, detach_worse=False):
    """DPO (Rafailov et al. 2023), the mean over a question's ordered pairs (w better than l) of

        -log sigmoid(beta_dpo * ((S_w - S_w^ref) - (S_l - S_l^ref)))                [paper] (docs/method.md 6.4)
        detach_worse: the loser's policy S_l is sg()'d, the dc variant                 [ours]

    S = summed log-likelihood (DPO's convention); ref = the frozen VFT model (detached). [ours] A question's pairs are
    averaged, so K = 2 is the textbook DPO batch with no special code.
    policy_logps, reference_logps (B, K) float S, grades (B, K) float, valid (B, K) bool -> (B,); 0 without a pair.
    """
    better = _ordered_pairs(grades, valid)  # (B, K, K) better[b, w, l]: r_w > r_l
    policy = torch.where(valid, policy_logps, 0.0)  # (B, K) S
    reference = torch.where(valid, reference_logps, 0.0).detach()  # (B, K) S^ref
    policy_loser = policy.detach() if detach_worse else policy  # (B, K)
    margin = (policy - reference)[:, :, None] - (policy_loser - reference)[:, None, :]  # (B, K, K) w rows, l columns
    pair_loss = torch.where(better, -F.logsigmoid(beta_dpo * margin), 0.0)  # (B, K, K)
    return pair_loss.sum(dim=(1, 2)) / better.sum(dim=(1, 2)).clamp(min=1)


# -----------------------------------------------------------------------------
# Helpers


def _check_constraint(constraint):
    if constraint not in CONSTRAINTS:
        raise ValueError(f"losses.py: unknown constraint {constraint!r}; valid ones: {', '.join(CONSTRAINTS)}")


def _ordered_pairs(grades, valid):
    """better[b, i, j] is True when candidates i and j of question b are both valid and r_i > r_j. (B, K, K)"""
    grades = torch.where(valid, grades, 0.0)  # (B, K) padding may hold NaN
    both_valid = valid[:, :, None] & valid[:, None, :]  # (B, K, K)
    return both_valid & (grades[:, :, None] > grades[:, None, :])


def _log_one_plus_sum_exp(*logits):
    """log(1 + sum exp(x)) per question over every entry of the given (B, ...) tensors, as a logsumexp with a 0 entry:
    log(1 + sum(exp(x))) overflows once x passes ~88 in float32. -inf entries count for nothing. -> (B,)"""
    zero = logits[0].new_zeros(logits[0].shape[0], 1)  # (B, 1) the "1 +"
    return torch.logsumexp(torch.cat([zero] + [x.flatten(1) for x in logits], dim=1), dim=1)


def _boundary_logits(s, better, beta):
    """T_ij - s_j for every ordered pair (i, j), -inf elsewhere: (B, K, K), with B_j = sg(min_{i: r_i > r_j} s_i) -
    beta and T_ij = 2 B_j - s_i (docs/method.md section 5). s (B, K) sanitised scores, better from `_ordered_pairs`."""
    worst_better = torch.where(better, s.detach()[:, :, None], torch.inf).amin(dim=1)  # (B, K) indexed by j
    boundary = torch.where(better.any(dim=1), worst_better, 0.0) - beta  # (B, K) B_j; 0 where j has no better one
    target = 2 * boundary[:, None, :] - s[:, :, None]  # (B, K, K) T_ij, s_i not detached
    return torch.where(better, target - s[:, None, :], -torch.inf)


def _nll_of_best(s, grades, valid):
    """L_NLL(best) = -s of the highest-graded valid candidate of each question (ties: the first). (B,)"""
    best = torch.where(valid, grades, -torch.inf).argmax(dim=1)  # (B,) argmax returns the first maximum
    return -s.gather(1, best[:, None]).squeeze(1)
