"""
Checkers for the exercises of lesson 02 (VFT and assessment misalignment). Each prints `right: ...` or
`wrong: ...` with the reason, and returns True or False. Worked solutions: solutions/02_solutions.py.
"""

import torch

from course import check

# Exercise 2.1: the sampled chains of three questions, as (score s, right?) pairs.
TABLE = [
    [(-0.21, True), (-0.18, False), (-0.25, False)],
    [(-0.30, True), (-0.30, False), (-0.12, True), (-0.40, False)],
    [(-0.15, True), (-0.11, True)],
]


def check_a_acc_by_hand(value):
    """Exercise 2.1: A-Acc of TABLE over (right, wrong) pairs of the same question, a tie counting one half."""
    if value is None:
        return check(False, "", "no answer yet: replace None with your A-Acc of TABLE")
    near = lambda x: abs(float(value) - x) < 1e-6  # noqa: E731
    why = (f"{value} is not it. List the (right, wrong) pairs question by question: question 1 has 2, question 2 "
           "has 4, question 3 none (it has no wrong chain); count a win as 1, a tie as 1/2, divide by the pairs")
    if near(4 / 6):
        why = "4/6 counts the tie in question 2 as a loss; a tie counts one half"
    elif near(5 / 6):
        why = "5/6 counts the tie in question 2 as a win; a tie counts one half"
    elif near((1 / 2 + 3.5 / 4) / 2) or near((1 / 2 + 3.5 / 4 + 1) / 3):
        why = "that averages per question; A-Acc counts pairs, so a question with more pairs weighs more"
    return check(near(4.5 / 6), "4.5 wins out of 6 pairs: A-Acc = 0.75", why)


def pair_margins(scores, correct, valid):
    """(B, K, K) s_n - s_p for every (right p, wrong n) pair of one question, -inf where there is no pair."""
    pairs = (valid & correct)[:, :, None] & (valid & ~correct)[:, None, :]  # (B, Kp, Kn)
    margins = scores[:, None, :] - scores[:, :, None]  # (B, K, K): [b, p, n] = s_n - s_p
    return torch.where(pairs, margins, float("-inf"))


def check_worst_group(scores, correct, valid, answer):
    """Exercise 2.2: the index of the group whose wrong chain beats one of its right chains by the most (largest
    s_n - s_p). scores (B, K) float, correct, valid (B, K) bool, as in the lesson."""
    worst = pair_margins(scores, correct, valid).flatten(1).max(dim=1).values  # (B,)
    best = int(worst.argmax())
    if answer is None:
        return check(False, "", "no answer yet: replace None with a group index")
    answer = int(answer)
    if not 0 <= answer < len(worst):
        return check(False, "", f"{answer} is not a group index (0..{len(worst) - 1})")
    if worst[answer] == float("-inf"):
        why = f"group {answer} has no (right, wrong) pair, so it cannot misrank one"
    else:
        why = (f"group {answer}'s worst pair is s_n - s_p = {worst[answer]:+.4f}, but group {best}'s is "
               f"{worst[best]:+.4f}: take the max over pairs within a group, then the max over groups")
    return check(worst[answer] == worst[best], f"group {answer}: a wrong chain scores {worst[best]:.4f} nats per "
                 "token above a right one", why)


def a_acc_from_groups(groups, key):
    """A-Acc over the sampled chains of stored groups, scoring each chain by key(candidate)."""
    wins = pairs = 0.0
    for g in groups:
        sampled = [c for c in g["candidates"] if not c["gold"]]
        for p in (c for c in sampled if c["correct"]):
            for n in (c for c in sampled if not c["correct"]):
                sp, sn = key(p), key(n)
                wins, pairs = wins + (sp > sn) + 0.5 * (sp == sn), pairs + 1
    return wins / pairs


def check_a_acc_summed(groups, value):
    """Exercise 2.3: A-Acc of the stored groups' sampled chains when a chain is scored by its summed
    log-likelihood S (sum_logp) instead of the length-normalised s = S / |c|."""
    if value is None:
        return check(False, "", "no answer yet: replace None with the A-Acc by S")
    summed = a_acc_from_groups(groups, lambda c: c["sum_logp"])
    mean = a_acc_from_groups(groups, lambda c: c["sum_logp"] / c["n_tokens"])
    why = f"{value} is not it: use c['sum_logp'] of the sampled chains (gold left out), pairs within a question"
    if abs(float(value) - mean) < 1e-4:
        why = "that is the A-Acc of the length-normalised s; score by S = c['sum_logp'] alone"
    return check(abs(float(value) - summed) < 1e-4,
                 f"A-Acc by S is {summed:.3f} (by s: {mean:.3f}). S adds one negative log-prob per token, so it "
                 "favours shorter chains whatever their answer; here the chains of one question are of similar "
                 "length and the two agree closely, on GSM8K's chains of very different lengths they would not", why)
