"""
The figures of docs/method.md, computed by calling losses.py (values) and autograd (gradients), never re-derived.

    pip install -r requirements-notebooks.txt    # matplotlib
    python docs/make_figures.py                  # writes docs/figures/boundary.png

boundary.png: one question with one positive (score s_p, fixed) and one negative whose score s_n is swept through the
boundary B = s_p - beta (docs/method.md section 4.3). Left, the alignment loss for constraint = none / dc / bc;
right, its gradient with respect to s_n. Gradient descent moves s_n against the gradient: down where it is positive,
up where it is negative. bc's gradient crosses zero exactly at B; none's never does; dc's is zero everywhere.
"""

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere: losses.py sits at the repository root

import losses  # noqa: E402

S_POSITIVE = -0.10  # a typical score: right and wrong chains of the VFT model sit close to 0 (docs/method.md 4.4)
COLORS = {"none": "tab:red", "dc": "tab:blue", "bc": "tab:green"}
STYLES = {"none": "-", "dc": "--", "bc": "-"}


def loss_and_gradient(s_negative, constraint, beta=losses.BETA):
    """alignment_loss of one (positive, negative) pair per sweep point, and d loss / d s_n by autograd. (N,) each."""
    s_n = s_negative.clone().requires_grad_(True)
    scores = torch.stack([torch.full_like(s_n, S_POSITIVE), s_n], dim=1)  # (N, 2): one question per sweep point
    labels = torch.tensor([[1.0, 0.0]]).expand_as(scores)  # (N, 2) positive, negative
    valid = torch.ones_like(scores, dtype=torch.bool)  # (N, 2)
    loss = losses.alignment_loss(scores, labels, valid, constraint, beta)  # (N,)
    loss.sum().backward()  # the questions are independent, so this is each one's own gradient
    return loss.detach(), s_n.grad


def boundary_figure(path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    boundary = S_POSITIVE - losses.BETA
    s_negative = torch.linspace(S_POSITIVE - 1.2, S_POSITIVE + 0.8, 801, dtype=torch.float64)
    fig, (ax_loss, ax_grad) = plt.subplots(1, 2, figsize=(11, 4.2))
    for constraint in losses.CONSTRAINTS:
        loss, grad = loss_and_gradient(s_negative, constraint)
        label = {"none": "none ($L_A$)", "dc": "dc ($L_{DC}$)", "bc": "bc ($L_{BC}$)"}[constraint]
        if constraint == "dc":
            label += ": value of $L_A$, no gradient to $s_n$"
        ax_loss.plot(s_negative, loss, STYLES[constraint], color=COLORS[constraint], label=label, lw=2)
        ax_grad.plot(s_negative, grad, STYLES[constraint], color=COLORS[constraint], label=label, lw=2)
    for ax in (ax_loss, ax_grad):
        ax.axvline(boundary, color="black", lw=1)
        ax.axvline(S_POSITIVE, color="gray", lw=1, ls=":")
        ax.set_xlabel("$s_n$, the negative's score (mean log-prob per token)")
        ax.grid(alpha=0.3)
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("the alignment loss of the pair")
    ax_grad.set_title("its gradient; descent moves $s_n$ against its sign")
    ax_grad.set_ylabel(r"$\partial\,$loss$\,/\,\partial s_n$")
    ax_grad.axhline(0, color="black", lw=0.8)
    for ax in (ax_loss, ax_grad):
        top = ax.get_ylim()[1]
        ax.text(boundary, top, r"$B = s_p - \beta$ ", va="top", ha="right")
        ax.text(S_POSITIVE, top, r" $s_p$", va="top", ha="left", color="gray")
    left, right = s_negative[0].item(), s_negative[-1].item()
    ax_grad.text(right - 0.03, 0.06, "bc: pushed down", ha="right", color=COLORS["bc"])
    ax_grad.text(left + 0.03, -0.15, "bc: pulled back up", ha="left", color=COLORS["bc"])
    ax_grad.text(left + 0.03, 0.1, "none: pushed down at every $s_n$", ha="left", color=COLORS["none"])
    ax_grad.legend(loc="lower right", fontsize=9)
    fig.suptitle(f"One positive at $s_p$ = {S_POSITIVE}, one negative swept through the boundary "
                 f"($\\beta$ = {losses.BETA}, losses.BETA)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


if __name__ == "__main__":
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        sys.exit("docs/make_figures.py needs matplotlib, an optional requirement: "
                 "pip install -r requirements-notebooks.txt")
    print(f"wrote {boundary_figure(ROOT / 'docs' / 'figures' / 'boundary.png').relative_to(ROOT)}")
