"""
Solutions to the exercises of lesson 02 (VFT and assessment misalignment). Try them first; the lesson's last
cells call the same checkers. `verify()` runs each solution and a deliberately wrong answer through the checkers:
(the solutions' verdicts, the wrong answers' verdicts).
"""

import json

import torch

import course
import ex02


def solve_a_acc_by_hand(table=ex02.TABLE):
    """Exercise 2.1: every (right, wrong) pair of one question; a win counts 1, a tie 1/2."""
    wins = pairs = 0.0
    for question in table:
        for sp, right_p in question:
            for sn, right_n in question:
                if right_p and not right_n:
                    wins, pairs = wins + (sp > sn) + 0.5 * (sp == sn), pairs + 1
    return wins / pairs  # 4.5 / 6 = 0.75


def solve_worst_group(scores, correct, valid):
    """Exercise 2.2: s_n - s_p over each group's (right, wrong) pairs; the max within a group, then across."""
    pairs = (valid & correct)[:, :, None] & (valid & ~correct)[:, None, :]  # (B, Kp, Kn)
    margins = torch.where(pairs, scores[:, None, :] - scores[:, :, None], float("-inf"))  # [b, p, n] = s_n - s_p
    return int(margins.flatten(1).max(dim=1).values.argmax())


def solve_a_acc_summed(groups):
    """Exercise 2.3: the A-Acc loop with S (sum_logp) as the score, sampled chains only."""
    wins = pairs = 0.0
    for g in groups:
        sampled = [c for c in g["candidates"] if not c["gold"]]
        for p in (c for c in sampled if c["correct"]):
            for n in (c for c in sampled if not c["correct"]):
                wins += (p["sum_logp"] > n["sum_logp"]) + 0.5 * (p["sum_logp"] == n["sum_logp"])
                pairs += 1
    return wins / pairs


def shipped_groups():
    """The artefact candidate groups (header line first), read as plain JSON: no model needed."""
    lines = (course.ARTEFACTS / "vft" / "candidates.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines[1:]]


def as_tensors(groups):
    """(scores, correct, sampled) (B, K) from the stored scores s = S / |c|, gold chains left out."""
    K = max(len(g["candidates"]) for g in groups)
    scores, correct, sampled = torch.zeros(len(groups), K), torch.zeros(len(groups), K, dtype=torch.bool), \
        torch.zeros(len(groups), K, dtype=torch.bool)
    for b, g in enumerate(groups):
        for j, c in enumerate(g["candidates"]):
            scores[b, j], correct[b, j], sampled[b, j] = c["sum_logp"] / c["n_tokens"], c["correct"], not c["gold"]
    return scores, correct, sampled


def verify():
    groups = shipped_groups()
    scores, correct, sampled = as_tensors(groups)
    worst = solve_worst_group(scores, correct, sampled)
    no_pair = next(b for b in range(len(groups)) if not (correct[b] & sampled[b]).any() or (correct[b] | ~sampled[b]).all())
    right = [ex02.check_a_acc_by_hand(solve_a_acc_by_hand()),
             ex02.check_worst_group(scores, correct, sampled, worst),
             ex02.check_a_acc_summed(groups, solve_a_acc_summed(groups))]
    mean_a_acc = ex02.a_acc_from_groups(groups, lambda c: c["sum_logp"] / c["n_tokens"])
    wrong = [ex02.check_a_acc_by_hand(4 / 6),  # the tie counted as a loss
             ex02.check_worst_group(scores, correct, sampled, no_pair),  # a group without a pair
             ex02.check_a_acc_summed(groups, mean_a_acc)]  # the length-normalised score instead of S
    return right, wrong


if __name__ == "__main__":
    print(verify())
