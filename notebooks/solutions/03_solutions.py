"""Solutions to the exercises of 03_losses_by_hand.ipynb.

    python notebooks/solutions/03_solutions.py

verify() runs each checker of notebooks/ex03.py on the solution (it must say right) and on a deliberately wrong
answer, a mistake students make (it must say wrong and why)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # notebooks/: course.py and ex03.py

import torch  # noqa: E402

import ex03  # noqa: E402

# Exercise 3.1: scores -0.25, -0.40 (right), -0.30, -0.55 (wrong), beta = 0.05
B = min(-0.25, -0.40) - 0.05  # -0.45: beta below the WORST right chain
T_p = [2 * B - (-0.25), 2 * B - (-0.40)]  # [-0.65, -0.50]: each s_p mirrored in B


def l_bc(scores, labels, beta):
    """Exercise 3.2: L_BC = log(1 + sum_p sum_n [exp(s_n - s_p) + exp(T_p - s_n)]), B from sg(s_p)."""
    s_p, s_n = scores[labels == 1], scores[labels == 0]  # (P,), (N,)
    boundary = s_p.detach().min() - beta  # no gradient through the min
    target = 2 * boundary - s_p  # (P,) T_p, s_p not detached
    pairs = torch.cat([(s_n[None, :] - s_p[:, None]).flatten(), (target[:, None] - s_n[None, :]).flatten()])
    return torch.logsumexp(torch.cat([pairs.new_zeros(1), pairs]), dim=0)  # log(1 + sum exp), without overflow


# Exercise 3.3: scores -0.20, -0.30 (right), -0.10, -0.35, -0.60 (wrong); B = -0.30 - 0.05 = -0.35
signs = {"none": ["-", "-", "+", "+", "+"],  # L_A pushes every wrong chain down
         "dc": ["-", "-", "0", "0", "0"],  # DC never moves a wrong chain
         "bc": ["-", "-", "+", "0", "-"]}  # above B pushed down, at B left alone, below B pulled up


def verify():
    right = [ex03.check_boundary(B, T_p), ex03.check_l_bc(l_bc), ex03.check_signs(signs)]

    def l_bc_gradient_through_min(scores, labels, beta):  # B not detached: same value, wrong gradient
        s_p, s_n = scores[labels == 1], scores[labels == 0]
        target = 2 * (s_p.min() - beta) - s_p
        pairs = torch.cat([(s_n[None, :] - s_p[:, None]).flatten(), (target[:, None] - s_n[None, :]).flatten()])
        return torch.logsumexp(torch.cat([pairs.new_zeros(1), pairs]), dim=0)

    wrong = [ex03.check_boundary(max(-0.25, -0.40) - 0.05, [2 * -0.20 + 0.25, 2 * -0.20 + 0.40]),  # best, not worst
             ex03.check_l_bc(l_bc_gradient_through_min),
             ex03.check_signs({**signs, "bc": ["-", "-", "+", "+", "+"]})]  # as if BC were L_A
    return right, wrong


if __name__ == "__main__":
    right, wrong = verify()
    print("solutions accepted:", right, "wrong answers refused:", [not w for w in wrong])
