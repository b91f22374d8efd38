"""
Checkers for the exercises of lesson 04 (alignment and comparison). Each prints `right: ...` or `wrong: ...` with
the reason, and returns True or False. Worked solutions: solutions/04_solutions.py.
"""

import math
import statistics

from course import check

# Exercise 4.1: one method's T-Acc gain over its seed's VFT model (d_t_acc), on three seeds.
SEEDS = [0.052, 0.018, 0.030]
T_975_2 = 4.303  # the 0.975 quantile of Student's t with 3 - 1 = 2 degrees of freedom


def interval(values, t=T_975_2):
    """(low, high): mean -/+ t * sample std / sqrt(n)."""
    mean, half = statistics.mean(values), t * statistics.stdev(values) / math.sqrt(len(values))
    return mean - half, mean + half


def check_interval(low, high):
    """Exercise 4.1: the 95% t-interval of the mean of SEEDS."""
    if low is None or high is None:
        return check(False, "", "no answer yet: replace None, None with your interval's ends")
    right = interval(SEEDS)
    close = lambda iv: abs(low - iv[0]) < 5e-4 and abs(high - iv[1]) < 5e-4  # noqa: E731
    mean, sd = statistics.mean(SEEDS), statistics.stdev(SEEDS)
    why = (f"({low:.4f}, {high:.4f}) is not it: mean {mean:.4f}, sample std (n - 1) {sd:.4f}, "
           "half-width 4.303 * std / sqrt(3)")
    if close(interval(SEEDS, 1.96)):
        why = "1.96 is the normal quantile; with 3 seeds the mean's error follows Student's t with 2 df: 4.303"
    elif close((mean - T_975_2 * statistics.pstdev(SEEDS) / math.sqrt(3), mean + T_975_2 * statistics.pstdev(SEEDS) / math.sqrt(3))):
        why = "that uses the population std (divide by n); the sample std divides by n - 1 = 2"
    elif close((mean - T_975_2 * sd, mean + T_975_2 * sd)):
        why = "that is an interval for one seed; the mean's standard error is std / sqrt(3)"
    return check(close(right), f"({right[0]:.4f}, {right[1]:.4f}): it contains 0, so three seeds that all gained "
                 "do not yet show a gain at 95%", why)


# Exercise 4.2: which claim do the reproduction's intervals (lesson 04, section 4.6; docs/results.md) support?
CLAIMS = {
    "a": "AFT with the boundary constraint raises T-Acc over VFT: its interval lies above zero.",
    "b": "AFT with the boundary constraint beats RFT.",
    "c": "Continuing VFT on the gold chains (vft_more) raises T-Acc over VFT.",
    "d": "RFT raises T-Acc over VFT by more than one point.",
}
WHY_NOT = {
    "a": "aft_bc minus VFT is about -0.2 points, interval about [-0.6, +0.2]: it contains 0, and sits mostly below",
    "b": "aft_bc minus RFT is about -0.3 points with an interval below zero: it is RFT that is ahead",
    "d": "RFT gains about +0.14 points, interval about [+0.02, +0.25]: shown, but far from one point",
}


def check_claim(letter):
    """Exercise 4.2: the letter of the one claim in CLAIMS the intervals support at 95%."""
    letter = str(letter).strip().lower()
    if letter not in CLAIMS:
        return check(False, "", f"answer one of {', '.join(CLAIMS)}")
    return check(letter == "c", "vft_more: about +0.26 points, interval about [+0.12, +0.44], above zero: more "
                 "training still buys a little from converged models", WHY_NOT.get(letter, ""))


def check_sank_furthest(histories, name):
    """Exercise 4.3: the run (a key of histories, {run: train_align history}) whose wrong chains' mean score s_neg
    fell the most from its first logged record to its last."""
    drop = {run: h["train"][0]["s_neg"] - h["train"][-1]["s_neg"] for run, h in histories.items()}
    best = max(drop, key=drop.get)
    if name not in drop:
        return check(False, "", f"{name!r} is not one of the runs: {', '.join(drop)}")
    lowest = min(histories, key=lambda run: histories[run]["train"][-1]["s_neg"])
    why = f"{name}'s s_neg fell by {drop[name]:+.4f}, {best}'s by {drop[best]:+.4f}"
    if name == lowest and name != best:
        why = "that run ends lowest, but the question is which one fell the most: last minus first record"
    return check(drop[name] == drop[best], f"{best}: s_neg fell by {drop[best]:.4f} nats per token", why)
