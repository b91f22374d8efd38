"""
Solutions to the exercises of lesson 04 (alignment and comparison). Try them first; the lesson's last cells call
the same checkers. `verify()` runs each solution and a deliberately wrong answer through the checkers:
(the solutions' verdicts, the wrong answers' verdicts).
"""

import math

import ex04


def solve_interval(values=ex04.SEEDS, t=4.303):
    """Exercise 4.1: mean -/+ t_{0.975, n-1} * s / sqrt(n), s the sample standard deviation (divide by n - 1)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t * std / math.sqrt(n)
    return mean - half, mean + half  # about (-0.0095, +0.0762): it contains 0


def solve_claim():
    """Exercise 4.2: of the four, only vft_more's interval over VFT, about [+0.12, +0.44] points, lies wholly above
    zero; aft_bc's over VFT contains 0, aft_bc is below RFT, and RFT's gain is shown but about +0.14 points."""
    return "c"


def solve_sank_furthest(histories):
    """Exercise 4.3: first logged s_neg minus last, the largest wins."""
    return max(histories, key=lambda run: histories[run]["train"][0]["s_neg"] - histories[run]["train"][-1]["s_neg"])


def example_histories():
    """Histories shaped like train_align's (only what the exercise reads): one run ends lowest without falling most."""
    record = lambda s_neg: {"s_neg": s_neg}  # noqa: E731
    return {"aft_rank": {"train": [record(-0.40), record(-0.45)]},
            "dpo_none": {"train": [record(-0.20), record(-0.38)]},
            "rft": {"train": [record(-0.50), record(-0.52)]}}


def verify():
    histories = example_histories()
    right = [ex04.check_interval(*solve_interval()),
             ex04.check_claim(solve_claim()),
             ex04.check_sank_furthest(histories, solve_sank_furthest(histories))]
    wrong = [ex04.check_interval(*solve_interval(t=1.96)),  # the normal quantile
             ex04.check_claim("a"),  # a mean below zero, an interval around it
             ex04.check_sank_furthest(histories, "rft")]  # ends lowest, but fell least
    return right, wrong


if __name__ == "__main__":
    print(verify())
