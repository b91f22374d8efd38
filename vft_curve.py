"""
Machine room: the VFT validation curve that chooses VFT's length (issue 14, item 1). One VFT run with train_sft's
default config, except max_steps = the largest listed step; at each listed step, greedy accuracy and the loss on
the VALIDATION split (never the test split), then a table of the gain per doubling of steps and a plateau verdict:
a plateau is a gain under --plateau_points accuracy points per doubling.

    python vft_curve.py --steps=100,200,400,800,1600,3200 --out_dir=out/vft_curve
    python vft_curve.py --separate=True ...     # each length its own run, with its own learning-rate schedule
    python vft_curve.py --max_factor=6 --max_number=20 --block_size=256 --n_layer=2 --n_test=5000  # reproduce's
    python vft_curve.py --separate=True --steps=8000 --compare=out/reproduce/seed0/vft,...  # against its models
    records = run(Config(steps="100,200"), base=train_sft.Config(n_layer=2))   # from Python

The learning-rate schedule: max_steps sets the cosine decay's length, so in the one long run the model at step
400 of 3200 was trained at a still-high learning rate, unlike a run of 400 steps that decayed to min_lr. The curve
of one long run is therefore not the curve of separate runs of each length (those usually sit higher early on);
--separate=True trains every length as its own run, which costs the sum of all lengths instead of the largest.
The long run reaches each step with --stop_after and continues with --resume, which is bitwise exact.

Writes out_dir/curve.json ({"settings", "records", "compared"}: a record per step and per --compare run; a rerun
skips the steps measured with the same settings) and, when matplotlib is present, out_dir/vft_curve.png (accuracy
and val loss against steps, log2 x).
"""

import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

import compute
import train_sft
from checkpoint import find_checkpoint, has_checkpoint, load_model_and_tokenizer
from configurator import UserError, bounded, check_output, config_to_dict, main, validate
from data.dataset import run_task, task_from_config
from evaluate import greedy_accuracy
from losses import mean_logprob
from sequences import encode_pair, fits, score_pairs


@dataclass
class Config:
    steps: str = "100,200,400,800,1600,3200"  # comma-separated VFT steps to measure (increasing)
    out_dir: str = "out/vft_curve"  # run directory (run/ or run_<steps>/), curve.json, vft_curve.png
    val_questions: int = bounded(500, min=1)  # validation questions for greedy accuracy (at most the split's)
    val_examples: int = bounded(256, min=1)  # validation pairs for the loss (train_sft's eval_examples)
    separate: bool = False          # one run per length (each with its own cosine schedule) instead of one long run
    seed: int = bounded(1337, min=0)  # training seed (train_sft's --seed)
    plateau_points: float = bounded(1.0, above=0)  # a doubling gaining less than this (accuracy points) is a plateau
    device: str = "auto"            # "auto", "cpu", "cuda", ...
    max_factor: int = bounded(12, min=2)  # synth difficulty (train_sft's flag): reproduce.py's task uses 6
    max_number: int = bounded(40, min=2)  # synth difficulty (train_sft's flag): reproduce.py's task uses 20
    block_size: int = bounded(384, min=8)  # the fresh model's context (reproduce.py's: 256)
    n_layer: int = bounded(4, min=1)  # the fresh model's blocks (reproduce.py's: 2)
    n_test: int = bounded(1000, min=1)  # test questions the task draws before val (reproduce.py's: 5000; it moves val)
    compare: str = ""               # finished VFT runs (comma-separated dirs) measured on the same validation questions


def parse_steps(text):
    """The listed steps: positive integers, strictly increasing."""
    try:
        steps = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--steps={text}: expected comma-separated positive integers") from None
    if not steps or any(s < 1 for s in steps) or any(b <= a for a, b in zip(steps, steps[1:])):
        raise UserError(f"--steps={text}: expected at least one positive integer, strictly increasing")
    if steps[-1] >= 2 ** 63:  # else the error would name --max_steps, which the user never gave
        raise UserError(f"--steps={text}: {steps[-1]} is too large for a 64-bit integer")
    return steps


def gains_per_doubling(records):
    """[(step_from, step_to, accuracy points gained per doubling of steps)] between consecutive records."""
    ordered = sorted(records, key=lambda r: r["step"])
    return [(a["step"], b["step"], 100 * (b["accuracy"] - a["accuracy"]) / math.log2(b["step"] / a["step"]))
            for a, b in zip(ordered, ordered[1:])]


def plateau_step(records, points=1.0):
    """The first measured step from which every later doubling gains less than `points` accuracy points, or None
    (still learning at the last interval, or fewer than two records)."""
    gains = gains_per_doubling(records)
    for i, (start, _, _) in enumerate(gains):
        if all(g < points for _, _, g in gains[i:]):
            return start
    return None


def verdict(records, points=1.0):
    gains = gains_per_doubling(records)
    if not gains:
        return "no verdict: fewer than two measured steps"
    step = plateau_step(records, points)
    if step is None:
        return (f"no plateau: the last doubling ({gains[-1][0]} -> {gains[-1][1]}) still gains "
                f"{gains[-1][2]:+.2f} points (threshold {points})")
    return f"plateau from step {step}: every later doubling gains under {points} point(s)"


def format_table(records, points=1.0):
    gains = {to: g for _, to, g in gains_per_doubling(records)}
    lines = ["| step | val accuracy | val loss | gain per doubling (points) |", "|---|---|---|---|"]
    for r in sorted(records, key=lambda r: r["step"]):
        gain = f"{gains[r['step']]:+.2f}" if r["step"] in gains else "-"
        lines.append(f"| {r['step']} | {r['accuracy']:.3f} | {r['val_loss']:.4f} | {gain} |")
    return "\n".join(lines) + "\n\n" + verdict(records, points)


@torch.no_grad()
def measure(run_dir, val_questions, val_examples, device):
    """Greedy accuracy and loss on the validation split of the run's own task, for the checkpoint in run_dir."""
    directory = find_checkpoint(run_dir)
    model, enc = load_model_and_tokenizer(directory, device)
    model.eval()
    state = json.loads((directory / "trainer.json").read_text())
    val = task_from_config(state["config"])["val"]
    if val_questions > len(val):
        raise UserError(f"--val_questions={val_questions}: the task's validation split has only {len(val)}")
    metrics = greedy_accuracy(model, enc, val[:val_questions])
    pairs = [p for p in (encode_pair(enc, ex["question"], ex["answer"]) for ex in val[:val_examples])
             if fits(p, model.config.block_size)]
    sum_logp, n_tokens = score_pairs(model, pairs, enc.eot_token, 32)
    return {"step": state["step"], "accuracy": metrics["accuracy"], "degeneration": metrics["degeneration"],
            "n_questions": metrics["n"], "val_loss": -mean_logprob(sum_logp, n_tokens).mean().item()}


def checkpoint_step(run_dir):
    if not has_checkpoint(run_dir):
        return 0
    return json.loads((find_checkpoint(run_dir) / "trainer.json").read_text())["step"]


def load_curve(path, settings):
    if not path.is_file():
        return []
    try:
        saved = json.loads(path.read_text())
        records, old = saved["records"], saved["settings"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a curve vft_curve.py wrote ({e}); move it away to start afresh") from None
    if old != settings:
        changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        raise UserError(f"{path} was measured with other settings ({', '.join(changed)}); "
                        f"choose another --out_dir or move it away")
    return records


def plot(records, path):
    """The docs figure: accuracy and val loss against steps (log2 x axis); skipped without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    ordered = sorted(records, key=lambda r: r["step"])
    steps = [r["step"] for r in ordered]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=150)
    ax.plot(steps, [100 * r["accuracy"] for r in ordered], "o-", color="tab:blue")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("VFT steps")
    ax.set_ylabel("validation accuracy (%)", color="tab:blue")
    loss_ax = ax.twinx()
    loss_ax.plot(steps, [r["val_loss"] for r in ordered], "s--", color="tab:red")
    loss_ax.set_ylabel("validation loss", color="tab:red")
    ax.set_title("VFT: greedy validation accuracy and loss")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def run(cfg, base=None):
    """Measure the curve; returns the records. `base`: the train_sft.Config to start from (default: the default
    one); its max_steps, out_dir, seed and saving are set here."""
    validate(cfg)
    device = compute.pick_device(cfg.device)  # an unusable --device is refused before the task is generated
    steps = parse_steps(cfg.steps)
    out = check_output(cfg.out_dir, "out_dir")
    base = base or train_sft.Config(max_factor=cfg.max_factor, max_number=cfg.max_number, block_size=cfg.block_size,
                                    n_layer=cfg.n_layer, n_test=cfg.n_test)
    base = replace(base, seed=cfg.seed, device=cfg.device, test_questions=0, eval_every=0)
    # settings that change what a record means; a rerun with other ones must not mix with these
    # the long run's schedule depends on its last step; separate runs each end at their own
    settings = {**config_to_dict(base), "separate": cfg.separate, "val_questions": cfg.val_questions,
                "val_examples": cfg.val_examples, "last_step": None if cfg.separate else steps[-1]}
    settings = {k: v for k, v in settings.items() if k not in ("out_dir", "resume", "overwrite", "stop_after",
                                                                 "save_every", "log_every", "device", "max_steps")}
    val = task_from_config(config_to_dict(base))["val"]  # refused now, not after the first training
    if cfg.val_questions > len(val):
        raise UserError(f"--val_questions={cfg.val_questions}: the task's validation split has only {len(val)}")
    compare = [Path(d) for d in cfg.compare.split(",") if d.strip()]
    for run_dir in compare:  # the same validation questions only if a run's task is this one's: checked
        if not has_checkpoint(run_dir):
            raise UserError(f"--compare: {run_dir} holds no finished run (no checkpoint)")
        if run_task(find_checkpoint(run_dir))["val"] != val:
            raise UserError(f"--compare: {run_dir} was trained on another task (its validation split differs)")
    out.mkdir(parents=True, exist_ok=True)
    curve_path = out / "curve.json"
    records = load_curve(curve_path, settings)
    t_start = time.time()
    for step in steps:
        if any(r["step"] == step for r in records):
            continue
        if cfg.separate:
            run_dir = out / f"run_{step}"
            tcfg = replace(base, out_dir=str(run_dir), max_steps=step, save_every=step)
        else:
            run_dir = out / "run"
            tcfg = replace(base, out_dir=str(run_dir), max_steps=steps[-1], stop_after=step, save_every=steps[-1])
        done = checkpoint_step(run_dir)
        if done > step:
            raise UserError(f"{run_dir} is already at step {done}, past the unmeasured step {step}; "
                            f"measure it in another --out_dir")
        if done < step:
            print(f"=== vft_curve: training to step {step} (elapsed {time.time() - t_start:.0f} s)", flush=True)
            train_sft.train(replace(tcfg, resume=done > 0, overwrite=done == 0))
        record = measure(run_dir, cfg.val_questions, cfg.val_examples, device)
        records.append(record)
        print(f"=== vft_curve: step {step}: val accuracy {record['accuracy']:.3f}, val loss "
              f"{record['val_loss']:.4f}", flush=True)
        curve_path.write_text(json.dumps({"settings": settings, "records": sorted(records, key=lambda r: r["step"])},
                                         indent=1) + "\n")
    records = sorted(records, key=lambda r: r["step"])
    print(format_table(records, cfg.plateau_points))
    compared = {}
    for run_dir in compare:
        record = compared[str(run_dir)] = measure(run_dir, cfg.val_questions, cfg.val_examples, device)
        print(f"=== vft_curve: {run_dir} (step {record['step']}): val accuracy {record['accuracy']:.3f}, "
              f"val loss {record['val_loss']:.4f}")
    if compared:
        curve_path.write_text(json.dumps({"settings": settings, "records": records, "compared": compared},
                                         indent=1) + "\n")
    figure = plot(records, out / "vft_curve.png")
    print(f"vft_curve: -> {curve_path}" + (f", {figure}" if figure else " (no matplotlib: no figure)"))
    return records


if __name__ == "__main__":
    main(run, Config)
