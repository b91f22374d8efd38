"""Solutions to the exercises of 01_model_and_sampling.ipynb.

    python notebooks/solutions/01_solutions.py

verify() runs each checker of notebooks/ex01.py on the solution (it must say right) and on a deliberately wrong
answer, a mistake students make (it must say wrong and why)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # notebooks/: course.py and ex01.py

import torch  # noqa: E402

import ex01  # noqa: E402


def softmax_with_temperature(logits, temperature):
    """Exercise 1: p_i = exp(z_i / tau) / sum_j exp(z_j / tau)."""
    return (logits / temperature).softmax(dim=-1)


def keep_top_k(logits, k):
    """Exercise 2: every logit below the k-th largest of its row becomes -inf."""
    kth_largest = logits.topk(k, dim=-1).values[:, -1:]  # (N, 1)
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def inverse_cdf_draw(probs, u):
    """Exercise 3: the first index i with F_i > u * F_V, F the running sum of probs (need not sum to 1)."""
    cdf = probs.cumsum(dim=-1)  # (N, V)
    return (cdf > (u * cdf[:, -1])[:, None]).int().argmax(dim=-1)  # argmax finds the first True


def verify():
    right = [ex01.check_temperature(softmax_with_temperature),
             ex01.check_top_k(keep_top_k),
             ex01.check_draw(inverse_cdf_draw)]
    wrong = [ex01.check_temperature(lambda z, tau: (z * tau).softmax(dim=-1)),  # multiplies by tau
             ex01.check_top_k(lambda z, k: z.masked_fill(z < z.topk(k, dim=-1).values[:, -1:], 0.0)),  # 0, not -inf
             ex01.check_draw(lambda p, u: (p.cumsum(dim=-1) >= u[:, None]).int().argmax(dim=-1))]  # >= draws p = 0
    return right, wrong


if __name__ == "__main__":
    right, wrong = verify()
    print("solutions accepted:", right, "wrong answers refused:", [not w for w in wrong])
