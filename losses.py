"""
The losses of Alignment Fine-Tuning (AFT) and of the baselines it is compared with, plus the one float32
log-prob primitive that training, scoring and evaluation all share.

Pure functions, one per equation of ../shared/PAPER.md (sections 2-6). Each docstring carries the formula as
written there and its tag: [paper] = stated by the paper, [ours] = this project's choice where it is silent.

Every preference loss takes the same three tensors for a batch of B questions with K candidates each:
    scores (B, K) float  s = length-normalised log-likelihood of each candidate (see `mean_logprob`)
    grades (B, K) float  higher is better, ties allowed; binary feedback uses 1 = correct, 0 = incorrect
    valid  (B, K) bool   False = padding or a masked-out candidate: it changes nothing, values or gradients
An ordered pair (i, j) is two valid candidates of one question with r_i > r_j ("i is better than j").
[ours] Each loss is computed per question and the result is the mean over the questions that have at least
one ordered pair; the others contribute nothing (so a batch without any pair gives a zero that is still
attached to the graph). Scores at invalid positions are replaced by 0 before any arithmetic and pair terms
are masked to -inf before any exp, so NaN or inf in padding never reaches a value or a gradient.

`constraint` picks the variant of every pairwise or listwise loss (PAPER 4 and 6):
    none  the loss as published (for AFT: L_A, which pushes negatives down without bound)
    dc    detached constraint: the worse candidate's score is sg()'d in the preference term
    bc    boundary constraint: negatives are pushed down only until they reach the boundary B
"""

import torch
import torch.nn.functional as F

CONSTRAINTS = ("none", "dc", "bc")                    # PAPER 4; every preference loss accepts each of them
LOSSES = ("aft", "aft_rank", "rrhf", "pro", "dpo")    # preference losses: alignment_loss, ranking_alignment_loss, ...
# [ours] beta of the boundary constraint, in nats of length-normalised log-prob (per token): a negative is pushed
# down until its score is 0.5 below the worst positive's, i.e. until its perplexity is e^0.5 ~ 1.65x higher.
# Far enough to separate right from wrong, close enough that the model is never taught to make its own tokens
# unlikely. The paper reports that AFT is sensitive to beta: to be tuned.
BOUNDARY_BETA = 0.5

# -----------------------------------------------------------------------------
# The score: log-probs of a response under the model


def sequence_logprobs(logits, targets, mask):
    """Sum and count of the scored tokens' log-probs, in float32.

        S(c) = sum_j log p_theta(c_j | q, c_<j)   and   |c|                  [paper] (PAPER 2)

    logits  (N, T, V) any float dtype; logits[:, t] predicts targets[:, t]
    targets (N, T) long, already shifted; any value (e.g. -100) where mask is 0
    mask    (N, T) bool or 0/1: 1 = response token that is scored; prompt and padding tokens are 0
    returns sum_logp (N,) float32 and n_tokens (N,) float32. No input is written to.
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
    """The paper's score: length-normalised log-likelihood.

        s(c) = (1/|c|) * sum_j log p_theta(c_j | q, c_<j),   PPL(c) = exp(-s(c))      [paper] (PAPER 2)

    sum_logp (N,), n_tokens (N,) from `sequence_logprobs` -> s (N,).
    [ours] |c| is clamped to >= 1, so an empty response scores 0 with finite gradients.
    """
    return sum_logp / n_tokens.clamp(min=1)


# -----------------------------------------------------------------------------
# Small shared pieces


def _check_constraint(constraint):
    if constraint not in CONSTRAINTS:
        raise ValueError(f"losses.py: unknown constraint {constraint!r}; valid ones: {', '.join(CONSTRAINTS)}")


def _ordered_pairs(grades, valid):
    """better[b, i, j] is True when candidates i and j of question b are both valid and r_i > r_j. (B, K, K)"""
    grades = torch.where(valid, grades, 0.0)  # (B, K) padding may hold NaN
    both_valid = valid[:, :, None] & valid[:, None, :]  # (B, K, K)
    return both_valid & (grades[:, :, None] > grades[:, None, :])


def questions_with_pair(grades, valid):
    """(B,) bool: the questions holding at least one ordered pair, the ones each preference loss here averages
    over (a trainer that splits a batch weighs its parts by these counts). Binary labels are grades 1 / 0."""
    return _ordered_pairs(grades, valid).flatten(1).any(dim=1)


def _mean_over_groups(group_loss, has_pair):
    """Mean of group_loss (B,) over the questions where has_pair (B,) is True; a graph-attached 0 if there are none."""
    return torch.where(has_pair, group_loss, 0.0).sum() / has_pair.sum().clamp(min=1)


def _log_one_plus_sum_exp(*logits):
    """log(1 + sum exp(x)) per question over every entry of the given (B, ...) tensors: a logsumexp with a 0 entry,
    which never overflows (log(1 + sum(exp(x))) does once x passes ~88 in float32). -inf entries count for nothing."""
    zero = logits[0].new_zeros(logits[0].shape[0], 1)  # (B, 1) the "1 +"
    return torch.logsumexp(torch.cat([zero] + [x.flatten(1) for x in logits], dim=1), dim=1)  # (B,)


def _boundary_logits(s, better, beta):
    """The boundary terms of BC on rankings, T_ij - s_j for every ordered pair (i, j), -inf elsewhere: (B, K, K).

        B_j = sg(min_{i: r_i > r_j} s_i) - beta,   T_ij = 2 B_j - s_i              [ours] (PAPER 5)

    s (B, K) sanitised scores, better (B, K, K) from `_ordered_pairs`.
    """
    worst_better = torch.where(better, s.detach()[:, :, None], torch.inf).amin(dim=1)  # (B, K) indexed by j
    # a j with nothing better has no boundary; 0 keeps the (masked) arithmetic free of inf
    boundary = torch.where(better.any(dim=1), worst_better, 0.0) - beta  # (B, K) B_j
    target = 2 * boundary[:, None, :] - s[:, :, None]  # (B, K, K) T_ij, s_i not detached
    return torch.where(better, target - s[:, None, :], -torch.inf)


# -----------------------------------------------------------------------------
# Likelihood


def nll_loss(scores, mask):
    """Negative log-likelihood of the selected candidates, each length-normalised.

        L_VFT = -(1/|c|) sum_j log p(c_j | q, c_<j)   (mean over response tokens)   [paper] (PAPER 3, step 1)
        L_NLL = mean over the selected candidates c of -s(c)                          [ours]  (PAPER 3, step 3)

    [ours] In AFT L_NLL selects the gold and positive COTs (or the gold only); RFT is this loss alone on gold and
    positives. Every selected candidate weighs the same whatever its length (a mean of per-sequence means).
    scores (...) float s, mask (...) bool, same shape -> scalar; 0 (graph-attached) if nothing is selected.
    """
    s = torch.where(mask, scores, 0.0)  # unselected entries may be padding holding NaN
    return -s.sum() / mask.sum().clamp(min=1)


# -----------------------------------------------------------------------------
# AFT: constraint alignment losses


def alignment_loss(scores, labels, valid, constraint="bc", beta=BOUNDARY_BETA):
    """AFT's constraint alignment loss with binary feedback (PAPER 4), for G_P positives and G_N negatives:

        none [paper]  L_A  = log(1 + sum_{p in G_P} sum_{n in G_N} exp(s_n - s_p))
        dc   [paper]  L_DC = log(1 + sum_p sum_n exp(sg(s_n) - s_p))
        bc   [paper]  L_BC = log(1 + sum_p sum_n [exp(s_n - s_p) + exp(T_p - s_n)]),
                      B = min_{p in G_P} s_p - beta,   T_p = 2B - s_p
                      [ours] B is computed from sg(s_p) (the min is not differentiated); s_p inside T_p is not
                      detached. The gradient of a (p, n) part w.r.t. s_n is zero exactly at s_n = B.

    scores (B, K) float s, labels (B, K) 1 = positive / 0 = negative, valid (B, K) bool -> scalar: the mean over
    questions with at least one positive and one negative [ours]. beta > 0 (default BOUNDARY_BETA, [ours]).
    """
    _check_constraint(constraint)
    s = torch.where(valid, scores, 0.0)  # (B, K)
    positive = valid & (labels == 1)  # (B, K) G_P
    negative = valid & (labels == 0)  # (B, K) G_N
    pair = positive[:, :, None] & negative[:, None, :]  # (B, K, K) pair[b, p, n]
    s_p = s[:, :, None]  # (B, K, 1)
    s_n = (s.detach() if constraint == "dc" else s)[:, None, :]  # (B, 1, K)
    pair_terms = [torch.where(pair, s_n - s_p, -torch.inf)]  # (B, K, K) s_n - s_p
    if constraint == "bc":
        worst_positive = torch.where(positive, s.detach(), torch.inf).amin(dim=1)  # (B,)
        boundary = torch.where(positive.any(dim=1), worst_positive, 0.0) - beta  # (B,) B; 0 - beta if no positive
        target = 2 * boundary[:, None] - s  # (B, K) T_p
        pair_terms.append(torch.where(pair, target[:, :, None] - s_n, -torch.inf))  # (B, K, K) T_p - s_n
    zero = s.new_zeros(s.shape[0], 1)  # (B, 1) the "1 +" of log(1 + sum exp)
    group_loss = torch.logsumexp(torch.cat([zero] + [t.flatten(1) for t in pair_terms], dim=1), dim=1)  # (B,)
    return _mean_over_groups(group_loss, pair.flatten(1).any(dim=1))


def ranking_alignment_loss(scores, grades, valid, constraint="bc", beta=BOUNDARY_BETA):
    """AFT's constraint alignment loss with ranking feedback, RBC (PAPER 5) [paper idea; exact formula ours]:

        bc    L_RBC = log(1 + sum_{(i,j): r_i > r_j} [exp(s_j - s_i) + exp(T_ij - s_j)]),
              B_j = sg(min_{i: r_i > r_j} s_i) - beta,   T_ij = 2 B_j - s_i
        dc    log(1 + sum_{(i,j): r_i > r_j} exp(sg(s_j) - s_i))
        none  log(1 + sum_{(i,j): r_i > r_j} exp(s_j - s_i))

    With two grade levels it is exactly `alignment_loss` (B_j is then the worst positive's score minus beta).
    scores (B, K) float s, grades (B, K) float, valid (B, K) bool -> scalar: mean over questions with a pair.
    """
    _check_constraint(constraint)
    s = torch.where(valid, scores, 0.0)  # (B, K)
    better = _ordered_pairs(grades, valid)  # (B, K, K) better[b, i, j]: r_i > r_j
    s_worse = s.detach() if constraint == "dc" else s  # (B, K)
    preference = torch.where(better, s_worse[:, None, :] - s[:, :, None], -torch.inf)  # (B, K, K) s_j - s_i
    if constraint == "bc":
        group_loss = _log_one_plus_sum_exp(preference, _boundary_logits(s, better, beta))  # (B,)
    else:
        group_loss = _log_one_plus_sum_exp(preference)  # (B,)
    return _mean_over_groups(group_loss, better.flatten(1).any(dim=1))


# -----------------------------------------------------------------------------
# Baselines (PAPER 6), each with the same none | dc | bc switch [ours]


def _nll_of_best(s, grades, valid):
    """L_NLL(best) = -s of the highest-graded valid candidate of each question (ties: the first). (B,)"""
    best = torch.where(valid, grades, -torch.inf).argmax(dim=1)  # (B,) argmax returns the first maximum
    return -s.gather(1, best[:, None]).squeeze(1)


def rrhf_loss(scores, grades, valid, constraint="none", beta=BOUNDARY_BETA):
    """RRHF (Yuan et al. 2023), per question:

        sum_{r_i > r_j} max(0, s_j - s_i) + L_NLL(best)                            [paper] (PAPER 6)
        dc: max(0, sg(s_j) - s_i) in the hinge;
        bc: + log(1 + sum_{i better than j} exp(T_ij - s_j)), T_ij as in L_RBC     [ours]

    The hinge is a sum over ordered pairs, never an average over padded slots. s is already length-normalised,
    and L_NLL(best) = -s(best) is the mean over the best candidate's response tokens [ours: best = the
    highest-graded valid candidate, ties to the first]. (The RRHF release overwrote its label tensor in place and
    so lost this length normalisation; nothing here writes to an input.)
    scores (B, K) float s, grades (B, K) float, valid (B, K) bool -> scalar: mean over questions with a pair.
    """
    _check_constraint(constraint)
    s = torch.where(valid, scores, 0.0)  # (B, K)
    better = _ordered_pairs(grades, valid)  # (B, K, K) better[b, i, j]: r_i > r_j
    s_worse = s.detach() if constraint == "dc" else s  # (B, K)
    hinge = F.relu(s_worse[:, None, :] - s[:, :, None])  # (B, K, K) max(0, s_j - s_i)
    group_loss = torch.where(better, hinge, 0.0).sum(dim=(1, 2)) + _nll_of_best(s, grades, valid)  # (B,)
    if constraint == "bc":
        group_loss = group_loss + _log_one_plus_sum_exp(_boundary_logits(s, better, beta))
    return _mean_over_groups(group_loss, better.flatten(1).any(dim=1))


def pro_loss(scores, grades, valid, constraint="none", beta=BOUNDARY_BETA):
    """PRO (Song et al. 2023), per question, candidates sorted best first:

        -sum_m log(exp(s_m) / sum_{i ranked at or below m} exp(s_i)) + L_NLL(best)  [paper] (PAPER 6)
        ties: m's denominator holds m itself and every strictly worse candidate       [paper]
        dc: the strictly worse scores in each denominator are sg()'d;
        bc: + log(1 + sum_{i better than j} exp(T_ij - s_j)), T_ij as in L_RBC        [ours]

    Each term is a log-softmax, logsumexp(s_m, worse s_i) - s_m, never log(eps + sum exp), which overflows. The
    "ranked at or below" sets come from the pair mask, so no sort is needed; a term whose denominator holds only
    s_m is 0. L_NLL(best) as in `rrhf_loss`.
    scores (B, K) float s, grades (B, K) float, valid (B, K) bool -> scalar: mean over questions with a pair.
    """
    _check_constraint(constraint)
    s = torch.where(valid, scores, 0.0)  # (B, K)
    better = _ordered_pairs(grades, valid)  # (B, K, K) better[b, m, i]: i is strictly worse than m
    s_worse = s.detach() if constraint == "dc" else s  # (B, K)
    worse_logits = torch.where(better, s_worse[:, None, :], -torch.inf)  # (B, K, K) s_i for i worse than m
    denominator = torch.logsumexp(torch.cat([s[:, :, None], worse_logits], dim=2), dim=2)  # (B, K) log sum exp
    listwise = torch.where(valid, denominator - s, 0.0).sum(dim=1)  # (B,) -sum_m log softmax
    group_loss = listwise + _nll_of_best(s, grades, valid)  # (B,)
    if constraint == "bc":
        group_loss = group_loss + _log_one_plus_sum_exp(_boundary_logits(s, better, beta))
    return _mean_over_groups(group_loss, better.flatten(1).any(dim=1))


def dpo_loss(policy_logps, reference_logps, grades, valid, beta_dpo=0.1, constraint="none", scores=None,
             beta=BOUNDARY_BETA):
    """DPO (Rafailov et al. 2023) over ordered pairs (w better than l):

        -log sigmoid(beta_dpo * ((S_w - S_w^ref) - (S_l - S_l^ref)))              [paper] (PAPER 6)
        S = sum log-likelihood (DPO's own convention, PAPER 2); ref = the frozen VFT model
        dc: the loser's policy S_l is sg()'d;
        bc: + log(1 + sum_{i better than j} exp(T_ij - s_j)) on the length-normalised `scores`, T_ij as in
            L_RBC                                                                   [ours]

    Reduction [ours]: the mean over a question's ordered pairs, then the mean over questions with a pair; with
    K = 2 (one pair per question, the usual DPO batch) it is the plain mean over pairs. K = 2 needs no special
    code. The reference is detached: it is a frozen model's output.
    policy_logps (B, K), reference_logps (B, K) float S; grades (B, K) float; valid (B, K) bool;
    scores (B, K) float s, required when constraint="bc" -> scalar.
    """
    _check_constraint(constraint)
    if constraint == "bc" and scores is None:
        raise ValueError("losses.py dpo_loss: constraint='bc' needs `scores` (length-normalised s) for the boundary")
    better = _ordered_pairs(grades, valid)  # (B, K, K) better[b, w, l]: r_w > r_l
    policy = torch.where(valid, policy_logps, 0.0)  # (B, K) S
    reference = torch.where(valid, reference_logps, 0.0).detach()  # (B, K) S^ref
    policy_loser = policy.detach() if constraint == "dc" else policy  # (B, K)
    margin = (policy - reference)[:, :, None] - (policy_loser - reference)[:, None, :]  # (B, K, K) w rows, l columns
    pair_loss = torch.where(better, -F.logsigmoid(beta_dpo * margin), 0.0)  # (B, K, K)
    n_pairs = better.sum(dim=(1, 2))  # (B,)
    group_loss = pair_loss.sum(dim=(1, 2)) / n_pairs.clamp(min=1)  # (B,)
    if constraint == "bc":
        s = torch.where(valid, scores, 0.0)  # (B, K)
        group_loss = group_loss + _log_one_plus_sum_exp(_boundary_logits(s, better, beta))
    return _mean_over_groups(group_loss, n_pairs > 0)
