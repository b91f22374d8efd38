"""docs/make_result_figures.py: every figure drawn from small files in reproduce.py's formats, a missing input
skipped, and the numbers behind two figures checked by hand."""

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "make_result_figures.py"
spec = importlib.util.spec_from_file_location("make_result_figures", SCRIPT)
figures = importlib.util.module_from_spec(spec)
spec.loader.exec_module(figures)

N_QUESTIONS = 40
PARTS = {"rft": ("nll",), "aft_bc": ("nll", "ca", "bc"), "dpo": ("dpo",)}  # the parts train_align logs


def train_log(method, seed):
    """Three logged windows, as train_align writes them; the first window of seed 1 saw no (right, wrong) pair."""
    log = []
    for step in (10, 20, 30):
        parts = {p: 1.0 / step + 0.1 * i for i, p in enumerate(PARTS[method])}
        s_pos, s_neg = -0.2 + 0.002 * step, -0.3 - 0.003 * step
        margin = float("nan") if (seed, step) == (1, 10) else s_pos - s_neg
        log.append({"step": step, "loss": sum(parts.values()), **parts, "s_pos": s_pos, "s_neg": s_neg,
                    "margin": margin, "lr": 1e-4})
    return log


def write_inputs(folder):
    records = []
    for seed in (0, 1):
        for i, method in enumerate(("vft", "rft", "aft_bc", "dpo")):
            correct = [int((q * 7 + seed * 3 + i) % 5 < 2 + (i == 2)) for q in range(N_QUESTIONS)]
            records.append({"seed": seed, "method": method, "settings": {"n_test": 100},
                            **({"method_settings": {"loss": method, "learning_rate": 1e-4, "max_steps": 30}}
                               if method != "vft" else {}),
                            "metrics": {"t_acc": sum(correct) / N_QUESTIONS, "degeneration": 0.0,
                                        "n_questions": N_QUESTIONS, "gold_ppl": 1.1, "maj@8": None},
                            "correct": correct, "train": train_log(method, seed) if method != "vft" else [],
                            "seconds": 1.0})
    (folder / "results.json").write_text(json.dumps(records))  # json writes NaN as train_align's logs hold it
    point = {"t_acc": 0.5, "degeneration": 0.01, "n_questions": 50, "gold_ppl": 1.2}
    runs = {"vft": [{"step": 0, **point}]}
    for i, method in enumerate(("aft_none", "aft_bc", "dpo", "dpo_bc")):
        runs[method] = [{"step": s, **point, "t_acc": 0.5 + 0.01 * i, "gold_ppl": 1.2 * s / 100 if i == 2 else 1.2,
                         "train": {} if s == 100 else {"step": s, "loss": 0.5}} for s in (100, 200, 400)]
    (folder / "curves.json").write_text(json.dumps({"key": {"seed": 0, "val_questions": 50}, "methods": runs}))
    rows = [{"method": "vft", "learning_rate": 0, "knob": None, "value": None, "step": 0, **point}]
    for method, knob in (("rft", None), ("aft_bc", "beta")):
        for lr in (1e-4, 3e-4):
            for value in ((0.05, 0.2) if knob else (None,)):
                for step in (100, 200):
                    rows.append({"method": method, "learning_rate": lr, "knob": knob, "value": value, "step": step,
                                 **point, "t_acc": 0.5 + lr * step + (value or 0) / 10})
    (folder / "tuning.json").write_text(json.dumps({"key": {"seed": 0, "val_questions": 50}, "rows": rows}))
    curve = {"records": [{"step": s, "accuracy": a, "val_loss": l} for s, a, l in ((100, 0.1, 0.5), (200, 0.6, 0.1))]}
    (folder / "vft_curves.json").write_text(json.dumps({"2 layers": curve, "4 layers": curve}))


def test_every_figure_is_written_as_a_png(tmp_path):
    write_inputs(tmp_path)
    difficulty = [2 + q % 3 for q in range(N_QUESTIONS)]
    written = figures.main(results_dir=tmp_path, figures_dir=tmp_path / "figs", difficulty=difficulty)
    names = ["reproduction.png", "mechanism.png", "difficulty.png", "c4.png", "tuning.png", "vft_curves.png"]
    assert [p.name for p in written] == names
    for name in names:
        assert (tmp_path / "figs" / name).read_bytes().startswith(b"\x89PNG")


def test_a_missing_input_skips_its_figure_with_a_note(tmp_path, capsys):
    write_inputs(tmp_path)
    for name in ("results.json", "curves.json"):
        (tmp_path / name).unlink()
    written = figures.main(results_dir=tmp_path, figures_dir=tmp_path / "figs")  # no difficulty.json either
    assert [p.name for p in written] == ["tuning.png", "vft_curves.png"]
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("skipped")]
    assert [line.split(":")[0] for line in notes] == ["skipped reproduction.png", "skipped mechanism.png",
                                                      "skipped difficulty.png", "skipped c4.png"]


def test_mean_curve_averages_seeds_per_step_and_ignores_a_window_without_pairs():
    records = [{"method": "aft_bc", "seed": 0, "train": [{"step": 10, "margin": 0.1}, {"step": 20, "margin": 0.3}]},
               {"method": "aft_bc", "seed": 1, "train": [{"step": 10, "margin": 0.3},
                                                        {"step": 20, "margin": float("nan")}]},
               {"method": "rft", "seed": 0, "train": [{"step": 10, "margin": 9.0}]}]
    curve = figures.mean_curve(records, "aft_bc", "margin")
    assert [step for step, _ in curve] == [10, 20]
    assert [value for _, value in curve] == pytest.approx([0.2, 0.3])
    assert figures.mean_curve(records, "aft_bc", "ca") == []


def test_pooled_by_difficulty_counts_every_seeds_answers():
    difficulty = [2, 2, 3, 3]
    records = [{"method": "aft_bc", "seed": 0, "correct": [1, 0, 1, 1]},
               {"method": "aft_bc", "seed": 1, "correct": [1, 1, 0, 0]}]
    table = figures.pooled_by_difficulty(records, difficulty)
    assert table == {"aft_bc": {2: (0.75, 2), 3: (0.5, 2)}}  # 3 of 4 and 2 of 4 answers, 2 questions per seed
    with pytest.raises(ValueError, match="difficulty"):
        figures.pooled_by_difficulty(records, difficulty[:3])


def test_the_marked_tuning_point_is_the_one_reproduce_chooses():
    rows = [{"step": 200, "learning_rate": 1e-4, "t_acc": 0.6}, {"step": 100, "learning_rate": 3e-4, "t_acc": 0.6},
            {"step": 100, "learning_rate": 1e-4, "t_acc": 0.6}, {"step": 200, "learning_rate": 3e-4, "t_acc": 0.5}]
    assert figures.best_row(rows) == rows[2]  # a tie goes to fewer steps, then to the lower rate


def test_c4_takes_the_mean_lowest_and_highest_over_seeds(tmp_path):
    def entry(seed, accuracies):
        return {"key": {"seed": seed, "val_questions": 50},
                "methods": {"vft": [{"step": 0, "t_acc": 0.9}],
                            "aft_none": [{"step": s, "t_acc": a} for s, a in zip((100, 200), accuracies)]}}
    seeds = [entry(0, (0.8, 0.6)), entry(1, (0.9, None)), entry(2, (0.7, 0.7))]  # seed 1 has no usable step 200
    assert figures.across_seeds(seeds, "aft_none", "t_acc") == [
        (100, pytest.approx(0.8), 0.7, 0.9), (200, pytest.approx(0.65), 0.6, 0.7)]
    assert figures.curve_entries({"seeds": seeds}) == seeds
    assert figures.curve_entries(seeds[0]) == [seeds[0]]  # an earlier version's file: one seed's entry
    assert figures.c4_figure({"seeds": seeds}, tmp_path / "c4.png").read_bytes().startswith(b"\x89PNG")
