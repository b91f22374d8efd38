"""
The reproduction's figures (issue 14), drawn from the JSON files reproduce.py writes, copied into docs/results/.
Nothing is trained or evaluated here: rerun it whenever a result file changes.

    pip install -r requirements-notebooks.txt    # matplotlib
    python docs/make_result_figures.py           # writes docs/figures/<name>.png for every input that is there

    input (docs/results/)          figure (docs/figures/)   what it shows
    results.json                   reproduction.png         each method's paired T-Acc difference against VFT, RFT
                                                            and more VFT, with its 95% bootstrap interval
    results.json                   mechanism.png            the training logs: loss and its parts, the margin
                                                            s_pos - s_neg, and s_pos, s_neg, mean over seeds
    results.json + difficulty.json difficulty.png           T-Acc by the number of reasoning steps of the question
    curves.json                    c4.png                   long runs, unconstrained against constrained: accuracy,
                                                            gold perplexity and degeneration along the way (the
                                                            mean over its seeds, shaded from lowest to highest)
    tuning.json                    tuning.png               the tuning grid's validation accuracy, the chosen point
    vft_curves.json                vft_curves.png           VFT's validation curves on the reproduction's task
                                                            ({label: vft_curve.py's curve.json})

A sub-folder of docs/results/ holds another experiment's files (vft2000/: the first one, from 2,000-step VFT
models); its figures go to the same-named sub-folder of docs/figures/. A missing input skips its figure with a
one-line note.
difficulty.json is a JSON list with the number of reasoning steps of each test question, in results.json's order:
[reproduce.chain_steps(ex["answer"]) for ex in the test split of the task the runs used]. From a notebook:
main(results_dir=..., figures_dir=..., difficulty=[...]) returns the paths it wrote.
"""

import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere: reproduce.py sits at the repository root

import reproduce  # noqa: E402

RESULTS = ROOT / "docs" / "results"  # copies of reproduce.py's output files
FIGURES = ROOT / "docs" / "figures"
DPI = 120
# C4's colours: one family per base loss, so a method and its constrained twin read as a pair
FAMILY_COLORS = {"aft": "tab:blue", "align": "tab:cyan", "rrhf": "tab:orange", "pro": "tab:purple",
                 "dpo": "tab:red", "rft": "tab:green", "vft": "tab:brown"}
PART_STYLES = {"loss": "-", "nll": ":", "bc": "-."}  # loss parts of mechanism.png; the alignment term is dashed


def pyplot():
    """matplotlib's pyplot on the file-only backend, so the figures draw without a display."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("docs/make_result_figures.py needs matplotlib, an optional requirement: "
                          "pip install -r requirements-notebooks.txt") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def load(path):
    """The JSON in path, or None when it is not there."""
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))  # reads the NaN a window without pairs logs


def method_order(methods):
    """Methods in reproduce.METHODS's order (the order of the paper's story), unknown names after them."""
    known = [m for m in reproduce.METHODS if m in methods]
    return known + sorted(set(methods) - set(known))


def save(fig, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    pyplot().close(fig)
    return path


def usable(value):
    """A logged number worth averaging: not missing, and not the NaN of a window with no (right, wrong) pair."""
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def mean_curve(records, method, key):
    """[(step, mean over seeds of train[key])] of one method's training logs; steps where no seed logged a
    usable value are left out. The seeds share the step grid (every log_every steps), so a step is one point."""
    by_step = {}
    for r in records:
        if r["method"] == method:
            for entry in r.get("train") or []:
                if usable(entry.get(key)):
                    by_step.setdefault(entry["step"], []).append(entry[key])
    return [(step, sum(values) / len(values)) for step, values in sorted(by_step.items())]


def pooled_by_difficulty(records, difficulty):
    """{method: {steps: (accuracy, questions per seed)}}: T-Acc of the questions with each number of reasoning
    steps, pooled over seeds (every seed answers the same questions, so pooling weighs the seeds equally).
    difficulty: the step count of each question, in the order of the records' "correct" lists."""
    table = {}
    for method in method_order({r["method"] for r in records}):
        rows = [r["correct"] for r in records if r["method"] == method and r.get("correct")]
        if not rows:
            continue
        if any(len(row) != len(difficulty) for row in rows):
            raise ValueError(f"{method}: {len(rows[0])} answers per seed but {len(difficulty)} difficulties; "
                             f"difficulty.json must list the same test questions in the same order")
        for level in sorted(set(difficulty)):
            picked = [row[i] for row in rows for i, n in enumerate(difficulty) if n == level]
            table.setdefault(method, {})[level] = (sum(picked) / len(picked), len(picked) // len(rows))
    return table


def results_figure(records, path):
    """Every method's T-Acc minus each reference's, paired question by question, with 95% bootstrap intervals
    over seeds and questions (reproduce.compare, the numbers of results.md's comparison table)."""
    plt = pyplot()
    methods = method_order({r["method"] for r in records})
    rows = reproduce.compare(records, methods, reproduce.N_BOOT, reproduce.BOOT_SEED)
    if not rows:
        return None
    refs = [ref for ref in reproduce.REFERENCES if any(row[1] == ref for row in rows)]
    shown = [m for m in methods if m != "vft" and any(row[0] == m for row in rows)]
    y = {m: i for i, m in enumerate(reversed(shown))}  # the story's first method at the top
    fig, axes = plt.subplots(1, len(refs), figsize=(4.2 * len(refs) + 1, 0.45 * len(shown) + 1.8), sharey=True,
                             squeeze=False)
    for ax, ref in zip(axes[0], refs):
        for method, against, diff, low, high, _, _, excludes_zero in rows:
            if against != ref or method not in y:
                continue
            # a filled point: the interval excludes zero, the difference is shown; a hollow one: it is not
            ax.errorbar(100 * diff, y[method], xerr=[[100 * (diff - low)], [100 * (high - diff)]], fmt="o",
                        color="black", mfc="black" if excludes_zero else "white", capsize=3)
        ax.axvline(0, color="gray", lw=1)
        ax.set_title(f"minus {ref}")
        ax.set_xlabel("T-Acc difference (points)")
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(list(y.values()), list(y))
    axes[0][0].set_ylim(-0.7, len(shown) - 0.3)
    seeds = max(row[5] for row in rows)
    questions = rows[0][6]
    fig.suptitle(f"Paired T-Acc differences, method minus reference: {seeds} seeds x {questions} test questions "
                 f"per seed\n95% bootstrap intervals; filled: the interval excludes zero", fontsize=11)
    fig.tight_layout()
    return save(fig, path)


def mechanism_figure(records, path):
    """What each alignment run did to its scores: top, one panel per method with its loss and loss parts; below,
    the margin s_pos - s_neg and the two mean scores, all methods together. Means over seeds."""
    plt = pyplot()
    methods = method_order({r["method"] for r in records if r.get("train")})
    if not methods:
        return None
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}  # the same in every panel
    columns = min(len(methods), 4)
    top_rows = math.ceil(len(methods) / columns)
    fig = plt.figure(figsize=(3.6 * columns + 1.5, 2.8 * top_rows + 3.6))
    grid = fig.add_gridspec(top_rows + 1, 2 * columns, height_ratios=[1] * top_rows + [1.25])
    for i, method in enumerate(methods):
        ax = fig.add_subplot(grid[i // columns, 2 * (i % columns):2 * (i % columns) + 2])
        logged = {k for r in records if r["method"] == method for entry in r["train"] for k in entry}
        for part in ["loss"] + [p for p in ("nll", "ca", "rrhf", "pro", "dpo", "bc") if p in logged]:
            curve = mean_curve(records, method, part)
            if curve:
                ax.plot(*zip(*curve), PART_STYLES.get(part, "--"), color=colors[method], label=part,
                        lw=2 if part == "loss" else 1.3)
        ax.set_title(method, color=colors[method])
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        if i % columns == 0:
            ax.set_ylabel("training loss")
    ax_margin = fig.add_subplot(grid[top_rows, :columns])
    ax_scores = fig.add_subplot(grid[top_rows, columns:])
    for method in methods:
        margin = mean_curve(records, method, "margin")
        if margin:
            ax_margin.plot(*zip(*margin), color=colors[method], label=method, lw=1.8)
        for key, style in (("s_pos", "-"), ("s_neg", "--")):
            curve = mean_curve(records, method, key)
            if curve:
                ax_scores.plot(*zip(*curve), style, color=colors[method], lw=1.5)
    ax_margin.axhline(0, color="gray", lw=1)
    ax_margin.set_title("margin: right chains' score minus wrong chains'")
    ax_margin.set_ylabel("mean $s_p - s_n$ over pairs")
    ax_margin.legend(fontsize=8, ncol=2)
    ax_scores.set_title("the scores themselves: $s_{pos}$ solid, $s_{neg}$ dashed")
    ax_scores.set_ylabel("mean log-prob per token")
    for ax in (ax_margin, ax_scores):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    seeds = len({r["seed"] for r in records if r.get("train")})
    fig.suptitle(f"Training logs of the alignment runs, mean over {seeds} seeds (each point: the mean over the "
                 f"logged window of steps)", fontsize=11)
    fig.tight_layout()
    return save(fig, path)


def difficulty_figure(records, difficulty, path):
    """Grouped bars: T-Acc of each method on the questions with each number of reasoning steps."""
    plt = pyplot()
    table = pooled_by_difficulty(records, difficulty)
    if not table:
        return None
    levels = sorted(set(difficulty))
    methods = list(table)
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.1 * len(levels) * max(1, len(methods) / 3)), 4.5))
    for i, method in enumerate(methods):
        x = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(levels))]
        ax.bar(x, [table[method][n][0] for n in levels], width, label=method,
               color=plt.get_cmap("tab10")(i % 10), edgecolor="white", lw=0.5)
    counts = table[methods[0]]
    ax.set_xticks(range(len(levels)), [f"{n} steps\n({counts[n][1]} questions)" for n in levels])
    ax.set_xlabel("reasoning steps of the question's reference chain")
    ax.set_ylabel("T-Acc (greedy)")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=min(len(methods), 4))
    seeds = len({r["seed"] for r in records})
    ax.set_title(f"Test accuracy by difficulty, pooled over {seeds} seeds")
    fig.tight_layout()
    return save(fig, path)


def family_style(method):
    """(colour, line style) of a C4 curve: the base loss's colour; solid unconstrained, dashed bc, dash-dot dc."""
    base = method.split("_")[0]
    color = FAMILY_COLORS.get(base, "tab:gray")
    style = "--" if method.endswith("_bc") else "-." if method.endswith("_dc") else "-"
    return color, style


def curve_entries(curves):
    """The per-seed entries {"key", "methods"} of a curves.json ({"seeds": [...]}; an earlier version's file was
    one seed's entry), those with runs only."""
    entries = curves.get("seeds", [curves] if "methods" in curves else [])
    return [e for e in entries if e.get("methods")]


def across_seeds(entries, method, key):
    """[(step, mean, lowest, highest)] of one method's key over the seeds that measured it at that step."""
    by_step = {}
    for entry in entries:
        for r in entry["methods"].get(method) or []:
            if usable(r.get(key)):
                by_step.setdefault(r["step"], []).append(r[key])
    return [(step, sum(v) / len(v), min(v), max(v)) for step, v in sorted(by_step.items())]


def c4_figure(curves, path):
    """C4: what long unconstrained alignment does, against the same runs with a constraint, measured along the
    way on the validation split: accuracy, gold perplexity and degeneration, the VFT model as the baseline. With
    several seeds: the mean over them, shaded from the lowest to the highest seed."""
    plt = pyplot()
    entries = curve_entries(curves)
    names = {m for e in entries for m, runs in e["methods"].items() if runs}
    methods = [m for m in method_order(names) if m != "vft"]
    if not methods:
        return None
    seeds = [e.get("key", {}).get("seed", "?") for e in entries]
    steps = sorted({r["step"] for e in entries for m in methods for r in e["methods"].get(m) or []})
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    panels = (("t_acc", "validation accuracy (greedy)"), ("gold_ppl", "gold perplexity"),
              ("degeneration", "degeneration rate"))
    for ax, (key, label) in zip(axes, panels):
        for method in methods:
            points = across_seeds(entries, method, key)
            if points:
                color, style = family_style(method)
                step, mean, low, high = zip(*points)
                ax.plot(step, mean, style, color=color, marker="o", ms=4, lw=1.8, label=method)
                if len(entries) > 1:
                    ax.fill_between(step, low, high, color=color, alpha=0.12, lw=0)
        vft = across_seeds(entries, "vft", key)
        if vft:
            ax.axhline(vft[0][1], color="black", ls=":", lw=1.5, label="VFT (step 0)")
        ax.set_xscale("log", base=2)  # the steps double, so each gets an equal share of the axis
        ax.set_xticks(steps, [str(s) for s in steps])
        ax.minorticks_off()
        ax.set_xlabel("alignment steps")
        ax.set_title(label)
        ax.grid(alpha=0.3)
        values = [r[key] for e in entries for m in methods for r in e["methods"].get(m) or [] if usable(r.get(key))]
        if key == "gold_ppl" and values and min(values) > 0 and max(values) / min(values) > 10:
            ax.set_yscale("log")  # so one run that multiplies it does not flatten the others into a line
    axes[0].legend(fontsize=8)
    which = (f"seed {seeds[0]}" if len(seeds) == 1 else
             f"seeds {', '.join(map(str, seeds))} (mean; shaded: lowest to highest seed)")
    fig.suptitle(f"Unconstrained (solid) against constrained (dashed: _bc, dash-dot: _dc), {which}, "
                 f"{entries[0].get('key', {}).get('val_questions', '?')} validation questions", fontsize=11)
    fig.tight_layout()
    return save(fig, path)


def best_row(rows):
    """The tuning row reproduce.tune chooses: highest accuracy, a tie to fewer steps, then the lower rate."""
    return max(rows, key=lambda r: (r["t_acc"], -r["step"], -r["learning_rate"]))


def tuning_figure(tuning, path):
    """The tuning grid: validation accuracy of each (learning rate, knob value) run at each step count."""
    plt = pyplot()
    rows = tuning.get("rows", [])
    methods = method_order({r["method"] for r in rows} - {"vft"})
    if not methods:
        return None
    vft = next((r["t_acc"] for r in rows if r["method"] == "vft"), None)
    columns = min(5, len(methods))  # rows of five panels: ten methods stay readable
    n_rows = math.ceil(len(methods) / columns)
    fig, axes = plt.subplots(n_rows, columns, figsize=(3.6 * columns + 0.5, 3.6 * n_rows), sharey=True,
                             squeeze=False)
    for ax in axes.flat[len(methods):]:
        ax.set_visible(False)
    for ax, method in zip(axes.flat, methods):
        mine = [r for r in rows if r["method"] == method]
        settings = sorted({(r["learning_rate"], r["knob"], r["value"]) for r in mine},
                          key=lambda s: (s[0], s[2] if s[2] is not None else 0))
        for i, (lr, knob, value) in enumerate(settings):
            points = sorted((r["step"], r["t_acc"]) for r in mine
                            if (r["learning_rate"], r["knob"], r["value"]) == (lr, knob, value))
            label = f"lr {lr:.0e}" + (f", {knob} {value:g}" if knob else "")
            ax.plot(*zip(*points), "-o", color=plt.get_cmap("tab10")(i % 10), label=label, ms=4)
        best = best_row(mine)
        ax.plot(best["step"], best["t_acc"], "*", color="black", ms=15, zorder=5, label="chosen")
        if vft is not None:
            ax.axhline(vft, color="black", ls="--", lw=1, label="VFT")
        ax.set_xticks(sorted({r["step"] for r in mine}))
        ax.set_title(method)
        ax.set_xlabel("alignment steps")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for row in axes:
        row[0].set_ylabel("validation accuracy (greedy)")
    key = tuning.get("key", {})
    fig.suptitle(f"Tuning grid on the validation split ({key.get('val_questions', '?')} questions, seed "
                 f"{key.get('seed', '?')}); the star is the chosen setting", fontsize=11)
    fig.tight_layout()
    return save(fig, path)


def vft_curves_figure(curves, path):
    """VFT's validation accuracy and loss against steps for each curve of vft_curves.json ({label: curve.json of
    vft_curve.py}): how long VFT must train on the reproduction's task, for each model size tried."""
    plt = pyplot()
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    for label, curve in curves.items():
        records = sorted(curve["records"], key=lambda r: r["step"])
        steps = [r["step"] for r in records]
        ax_acc.plot(steps, [r["accuracy"] for r in records], "o-", label=label)
        ax_loss.plot(steps, [r["val_loss"] for r in records], "o-", label=label)
    for ax, name in ((ax_acc, "validation accuracy (greedy)"), (ax_loss, "validation loss (gold chains)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("VFT steps (one schedule per curve, its cosine ending at the last point)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_loss.set_yscale("log")
    fig.suptitle("How long VFT trains on the reproduction's task", fontsize=11)
    fig.tight_layout()
    return save(fig, path)


def main(results_dir=RESULTS, figures_dir=FIGURES, difficulty=None):
    """Every figure whose input is in results_dir, written to figures_dir; returns the paths written.
    difficulty: reasoning steps per test question (None: results_dir/difficulty.json when it is there)."""
    results_dir, figures_dir = Path(results_dir), Path(figures_dir)
    records, curves, tuning, vft_curves = (load(results_dir / name) for name in
                                           ("results.json", "curves.json", "tuning.json", "vft_curves.json"))
    if difficulty is None:
        difficulty = load(results_dir / "difficulty.json")
    jobs = [  # (figure, its inputs, the files it needs, how to draw it)
        ("reproduction.png", records, "results.json", lambda p: results_figure(records, p)),
        ("mechanism.png", records, "results.json", lambda p: mechanism_figure(records, p)),
        ("difficulty.png", records and difficulty, "results.json and difficulty.json",
         lambda p: difficulty_figure(records, difficulty, p)),
        ("c4.png", curves, "curves.json", lambda p: c4_figure(curves, p)),
        ("tuning.png", tuning, "tuning.json", lambda p: tuning_figure(tuning, p)),
        ("vft_curves.png", vft_curves, "vft_curves.json", lambda p: vft_curves_figure(vft_curves, p)),
    ]
    written = []
    for name, inputs, needed, draw in jobs:
        if not inputs:
            print(f"skipped {name}: it needs {needed} in {results_dir}")
            continue
        path = draw(figures_dir / name)
        if path is None:
            print(f"skipped {name}: {needed} holds nothing it draws")
        else:
            print(f"wrote {path}")
            written.append(path)
    return written


if __name__ == "__main__":
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        sys.exit("docs/make_result_figures.py needs matplotlib, an optional requirement: "
                 "pip install -r requirements-notebooks.txt")
    main()
    for other in sorted(p for p in RESULTS.iterdir() if p.is_dir()):  # another experiment, its own figures
        main(other, FIGURES / other.name)
