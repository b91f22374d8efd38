"""
The reproduction experiment: per seed, VFT, then candidate groups, then every method of docs/method.md from the
same VFT model, then a table of mean +- std over seeds.

    python reproduce.py                                         # the headline methods, seeds 0-4
    python reproduce.py --quick                                 # the classroom version (settings in QUICK)
    python reproduce.py --methods=all                           # every method below
    python reproduce.py --methods=vft,vft_more,aft_bc --seeds=0  # a subset
    python reproduce.py --eval_split=val --out_dir=out/tune     # tuning: never look at the test split

Methods (train_align.py --loss / --constraint):
    vft       the VFT model itself
    vft_more  VFT continued for the same number of steps as the alignment runs, on the gold chains of the
              same questions: the control that separates "more training" from "alignment" [ours]
    rft       NLL on gold + correct samples                           [paper baseline]
    aft_none / aft_dc / aft_bc   binary feedback, L_A / L_DC / L_BC    [paper]
    aft_rank  ranking feedback, L_RBC                                 [paper idea, formula ours]
    rrhf, rrhf_bc, pro, pro_bc, dpo, dpo_bc   baselines without / with the boundary constraint
Results go to <out_dir>/results.json (one record per seed and method, with its per-question greedy correctness;
a rerun skips what is done) and <out_dir>/results.md: the mean +- std table, then for every method its paired T-Acc
difference against VFT, RFT and vft_more with a 95% two-level bootstrap interval (seeds, then questions within
each seed; both methods on the same questions). A difference is "shown" only when its interval excludes zero.

Power: the defaults keep five seeds and the task's whole test split (synth: load_task's n_test, 1,000 questions;
T-Acc on 5,000 needs a larger generated test split, which data/dataset.py does not yet offer through the run's
config). The default methods are the headline ones, so that the run fits 2 CPU cores; the other baselines run
with --methods=all or by name, into the same results.json.
"""

import json
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

import candidates as cands
import train_align
import train_sft
from checkpoint import find_checkpoint, has_checkpoint, load_model_and_tokenizer, load_tokenizer_of
import compute
from compute import format_seconds, pick_device
from configurator import UserError, bounded, check_output, config_to_dict, main, validate
from data.answers import is_correct
from data.dataset import TASKS, run_task
from evaluate import greedy_accuracy

METHODS = {
    "vft": None,
    "vft_more": ("vft", "none"),
    "rft": ("rft", "none"),
    "aft_none": ("aft", "none"),
    "aft_dc": ("aft", "dc"),
    "aft_bc": ("aft", "bc"),
    "aft_rank": ("aft_rank", "bc"),
    "rrhf": ("rrhf", "none"),
    "rrhf_bc": ("rrhf", "bc"),
    "pro": ("pro", "none"),
    "pro_bc": ("pro", "bc"),
    "dpo": ("dpo", "none"),
    "dpo_bc": ("dpo", "bc"),
}
DEFAULT_METHODS = "vft,vft_more,rft,aft_none,aft_dc,aft_bc,aft_rank"  # the headline comparison (C2, C3)
REFERENCES = ("vft", "rft", "vft_more")  # every method's T-Acc is compared with these, question by question
# the classroom version: the headline comparison (AFT-bc against VFT, RFT and more VFT) with its interval
QUICK = {"methods": "vft,vft_more,rft,aft_bc", "seeds": "0,1", "vft_steps": 400, "n_questions": 400,
         "align_steps": 100, "test_questions": 500, "k_questions": 0}
N_BOOT, BOOT_SEED = 2000, 0  # bootstrap resamples per interval, and the seed of their draws: fixed, so a
# rerun from the same results.json prints the same intervals
COLUMNS = ("t_acc", "d_t_acc", "maj@8", "rerank@8", "a_acc_train", "a_acc", "gold_ppl", "degeneration")
# d_t_acc: T-Acc minus the same seed's VFT T-Acc. The VFT models of different seeds differ by several points,
# so paired differences tell methods apart where the raw means' spread cannot.


@dataclass
class Config:
    methods: str = DEFAULT_METHODS  # comma-separated subset of the methods above, or "all"
    seeds: str = "0,1,2,3,4"        # training seeds (the task itself is fixed: data seed 0)
    quick: bool = False             # the classroom version: replaces the settings named in QUICK
    dataset: str = field(default="synth", metadata={"choices": TASKS})  # the task: synth, gsm8k or aqua (data_dir's)
    data_dir: str = ""              # folder of the gsm8k / aqua files
    block_size: int = bounded(384, min=16)  # context of the fresh VFT model (AQuA's chains need about 768)
    out_dir: str = "out/reproduce"  # one sub-directory per seed, results.json and results.md
    eval_split: str = field(default="test", metadata={"choices": ("test", "val")})  # "val" while tuning
    vft_steps: int = bounded(800, min=1)  # VFT steps per seed (train_sft.py's default)
    n_questions: int = bounded(1200, min=1)  # training questions with candidate groups (train_align.py default)
    k: int = bounded(8, min=1)      # samples per question
    temperature: float = bounded(0.8, min=0)  # sampling temperature of the candidates
    align_steps: int = bounded(150, min=1)  # steps of every alignment run and of vft_more (train_align.py default)
    batch_size: int = bounded(8, min=1)  # groups per alignment step
    learning_rate: float = bounded(1e-4, above=0, max=100)  # alignment learning rate
    beta: float = bounded(0.05, above=0)  # boundary margin of bc (tuned on the validation split)
    beta_dpo: float = bounded(0.1, above=0)  # DPO's inverse temperature
    test_questions: int = bounded(1000, min=0)  # questions for T-Acc and gold PPL (at most the split's)
    k_questions: int = bounded(100, min=0)  # questions for maj@8, rerank@8 and test A-Acc; groups for train A-Acc


def resolved(cfg):
    """The config a run uses: with --quick, QUICK's settings in place of the given ones (and its own out_dir
    when the default one was left, so the classroom run never mixes with the full one)."""
    if not cfg.quick:
        return cfg
    out_dir = "out/reproduce_quick" if cfg.out_dir == Config.out_dir else cfg.out_dir
    return replace(cfg, **QUICK, out_dir=out_dir)


def parse_list(text, valid, flag):
    """The comma-separated items of --flag, each in `valid` (a list, or a function that converts or raises
    ValueError), none twice and at least one."""
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise UserError(f"--{flag} is empty: give at least one" + (f" of {', '.join(valid)}" if isinstance(valid, list)
                                                                  else " value"))
    if callable(valid):
        try:
            items = [valid(x) for x in items]
        except ValueError as e:
            raise UserError(f"--{flag}={text}: {e}") from None
    else:
        unknown = [x for x in items if x not in valid]
        if unknown:
            raise UserError(f"--{flag}: unknown {', '.join(unknown)}; choose from {', '.join(valid)}")
    twice = [x for i, x in enumerate(items) if x in items[:i]]
    if twice:
        raise UserError(f"--{flag}={text}: {twice[0]} is given twice")
    return items


def seed_number(text):
    """A training seed: a non-negative integer (train_sft.py's --seed)."""
    try:
        seed = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an integer; expected comma-separated non-negative integers") from None
    if seed < 0:
        raise ValueError(f"seed {seed} is negative; seeds are non-negative integers")
    return seed


def vft_config(cfg, seed, vft_dir):
    return train_sft.Config(out_dir=str(vft_dir), seed=seed, max_steps=cfg.vft_steps, test_questions=0,
                            overwrite=True, dataset=cfg.dataset, data_dir=cfg.data_dir, block_size=cfg.block_size)


def candidates_config(cfg, seed, vft_dir, cand_path):
    return cands.Config(ckpt=str(vft_dir), out=str(cand_path), n_questions=cfg.n_questions, k=cfg.k,
                        temperature=cfg.temperature, seed=seed)


def check_config(cfg):
    """(methods, seeds) of a config whose every setting is usable, or a UserError naming reproduce's own flag;
    checked before any training, so a mistake costs nothing. The configs of the runs reproduce starts are checked
    too, with the values this config gives them."""
    validate(cfg)  # the command line did already; a notebook's Config(...) did not
    methods = (list(METHODS) if cfg.methods.strip() == "all" else
               parse_list(cfg.methods, list(METHODS), "methods"))
    seeds = parse_list(cfg.seeds, seed_number, "seeds")
    out = check_output(cfg.out_dir, "out_dir")
    root = out / f"seed{seeds[0]}"
    runs = [("VFT", vft_config(cfg, seeds[0], root / "vft")),
            ("candidates", candidates_config(cfg, seeds[0], root / "vft", root / "vft" / "candidates.jsonl"))]
    runs += [(method, align_config(cfg, method, seeds[0], root / "vft", root / "vft" / "candidates.jsonl", root))
             for method in methods]
    for name, run_cfg in runs:
        try:
            if isinstance(run_cfg, train_sft.TrainConfig):  # train_align.Config is one too
                train_sft.check_config(run_cfg)
            else:
                validate(run_cfg)
        except UserError as e:
            raise UserError(f"the {name} run these settings start would be refused: {e}") from None
    return methods, seeds


def seed_prerequisites(cfg, seed, root):
    """The VFT run and candidate groups of one seed, built when missing."""
    vft_dir = root / "vft"
    if not has_checkpoint(vft_dir):
        train_sft.train(vft_config(cfg, seed, vft_dir))
    cand_path = vft_dir / "candidates.jsonl"
    if not cand_path.is_file():
        cands.build(candidates_config(cfg, seed, vft_dir, cand_path))
    return vft_dir, cand_path


def align_config(cfg, method, seed, vft_dir, cand_path, root):
    loss, constraint = METHODS[method] or ("vft", "none")
    return train_align.Config(loss=loss, constraint=constraint, beta=cfg.beta, beta_dpo=cfg.beta_dpo,
                              vft=str(vft_dir), candidates=str(cand_path), batch_size=cfg.batch_size,
                              max_steps=cfg.align_steps, learning_rate=cfg.learning_rate,
                              min_lr=min(train_align.Config.min_lr, cfg.learning_rate),  # a floor, never above the peak
                              save_every=cfg.align_steps, log_every=max(1, cfg.align_steps // 5),
                              test_questions=cfg.test_questions, k_questions=cfg.k_questions, k=cfg.k,
                              eval_split=cfg.eval_split, out_dir=str(root / method), overwrite=True, seed=seed)


def per_question_correct(cfg, method, vft_dir, root):
    """0/1 greedy correctness on each evaluated question of the method's saved model, in question order. The
    metrics train_align returns are aggregates only, so the model is decoded again exactly as they decode it
    (same questions, batch, token budget and precision)."""
    acfg = align_config(cfg, method, 0, vft_dir, "", root)
    directory = find_checkpoint(vft_dir if METHODS[method] is None else root / method)
    device = pick_device("auto")
    model, enc = load_model_and_tokenizer(directory, device)
    examples = run_task(directory)[cfg.eval_split][:cfg.test_questions]
    with compute.autocast(device, acfg.dtype):
        texts = greedy_accuracy(model.eval(), enc, examples, acfg.max_new_tokens)["outputs"]
    return [int(is_correct(text, ex["answer"])) for text, ex in zip(texts, examples)]


def run_method(cfg, method, seed, vft_dir, cand_path, root):
    acfg = align_config(cfg, method, seed, vft_dir, cand_path, root)
    if METHODS[method] is None:  # the VFT model itself: evaluated exactly as the aligned ones are
        acfg = train_align.check_config(acfg)
        groups, header = cands.load_groups(cand_path, vft_dir)
        directory = find_checkpoint(vft_dir)
        enc = load_tokenizer_of(directory)  # the run's own tokenizer
        task = run_task(directory)
        return train_align.vft_metrics(directory, header["fingerprint"]["model"], acfg, enc, task[cfg.eval_split],
                                       groups[:cfg.k_questions], pick_device("auto"))
    return train_align.train(acfg)["metrics"]["aligned"]


def load_results(path):
    """The records of earlier runs in results.json ([] when there is none yet)."""
    if not path.is_file():
        return []
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a results file reproduce.py wrote ({e}); move it away to start afresh") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) and {"seed", "method", "settings", "metrics"}
                                                <= set(r) for r in records):
        raise UserError(f"{path}: not a results file reproduce.py wrote (a list of records with seed, method, "
                        f"settings and metrics); move it away to start afresh")
    return records


def with_deltas(records):
    """Each record's metrics plus d_t_acc, its T-Acc minus the VFT model's of the same seed (when known)."""
    base = {r.get("seed"): r["metrics"]["t_acc"] for r in records if r["method"] == "vft"}
    return [{**r, "metrics": {**r["metrics"], "d_t_acc": r["metrics"]["t_acc"] - base[r.get("seed")]}}
            if r.get("seed") in base else r for r in records]


def summarize(records, methods):
    """{method: {column: (mean, std, n)}} over seeds."""
    records = with_deltas(records)
    table = {}
    for method in methods:
        rows = [r["metrics"] for r in records if r["method"] == method]
        if not rows:
            continue
        table[method] = {}
        for col in COLUMNS:
            values = [row[col] for row in rows if row.get(col) is not None]
            if values:
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                table[method][col] = (statistics.mean(values), std, len(values))
    return table


def format_markdown(table, cfg):
    lines = ["| method | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for method, cols in table.items():
        cells = []
        for col in COLUMNS:
            if col in cols:
                mean, std, n = cols[col]
                cells.append(f"{mean:.3f} ± {std:.3f}" if n > 1 else f"{mean:.3f}")
            else:
                cells.append("-")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    seeds = sorted({n for cols in table.values() for (_, _, n) in cols.values()})
    lines.append("")
    lines.append(f"Split: {cfg.eval_split}; seeds per cell: {', '.join(map(str, seeds))}; "
                 f"{cfg.align_steps} alignment steps x {cfg.batch_size} groups, lr {cfg.learning_rate}, "
                 f"beta {cfg.beta}, beta_dpo {cfg.beta_dpo}; T-Acc and gold PPL on {cfg.test_questions} "
                 f"questions, maj@8 / rerank@8 / A-Acc (test samples) on {cfg.k_questions}, "
                 f"A-Acc train on {cfg.k_questions} training groups (sampled chains only).")
    return "\n".join(lines)


def run(cfg):
    cfg = resolved(cfg)
    methods, seeds = check_config(cfg)  # every setting, before anything is trained or written
    out = Path(cfg.out_dir)
    results_path = out / "results.json"
    records = load_results(results_path)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in config_to_dict(cfg).items() if k not in ("methods", "seeds")}
    t_start = time.time()
    for seed in seeds:
        root = out / f"seed{seed}"
        vft_dir, cand_path = seed_prerequisites(cfg, seed, root)
        for method in methods:
            if any(r["seed"] == seed and r["method"] == method and r["settings"] == settings for r in records):
                continue
            t0 = time.time()
            print(f"=== reproduce: seed {seed}, {method} (elapsed {format_seconds(t0 - t_start)})",
                  flush=True)
            metrics = run_method(cfg, method, seed, vft_dir, cand_path, root)
            correct = per_question_correct(cfg, method, vft_dir, root)
            if correct and abs(sum(correct) / len(correct) - metrics["t_acc"]) > 1e-9:
                print(f"reproduce: warning: {method} seed {seed}: per-question accuracy "
                      f"{sum(correct) / len(correct):.4f} differs from T-Acc {metrics['t_acc']:.4f}", flush=True)
            records.append({"seed": seed, "method": method, "settings": settings, "metrics": metrics,
                            "correct": correct, "seconds": round(time.time() - t0, 1)})
            results_path.write_text(json.dumps(records, indent=1) + "\n")
    done = [r for r in records if r["settings"] == settings]
    table = format_markdown(summarize(done, methods), cfg)
    rows = compare(done, methods, N_BOOT, BOOT_SEED)
    table += "\n\n" + format_comparisons(rows)
    (out / "results.md").write_text(table + "\n")
    print(table)
    print(f"reproduce: {format_seconds(time.time() - t_start)} -> {out / 'results.md'}")
    return summarize(done, methods)


def bootstrap_difference(a, b, n_boot=2000, seed=0, level=0.95):
    """Paired two-level bootstrap of the accuracy difference a - b. a, b: {seed: [0/1 per question]}, the same
    questions in the same order for both. Each resample draws the seeds with replacement, then within each drawn
    seed its questions with replacement, the same draw for both methods; the statistic is the mean over the drawn
    seeds of the mean difference on the drawn questions. Returns (difference, low, high, seeds): the observed
    difference and the central `level` interval, over the seeds both have."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    diffs = []
    for s in seeds:
        if len(a[s]) != len(b[s]) or not a[s]:
            raise ValueError(f"seed {s}: {len(a[s])} and {len(b[s])} questions; a paired difference needs the same")
        diffs.append([x - y for x, y in zip(a[s], b[s])])
    observed = statistics.mean(statistics.mean(d) for d in diffs)
    generator = torch.Generator().manual_seed(seed)
    stats = torch.zeros(n_boot, dtype=torch.float64)
    for _ in seeds:  # one drawn seed per slot, then its questions
        drawn = torch.randint(len(diffs), (n_boot,), generator=generator)
        for i, d in enumerate(diffs):
            rows = (drawn == i).nonzero().flatten()
            if len(rows):
                values = torch.tensor(d, dtype=torch.float64)
                picks = torch.randint(len(d), (len(rows), len(d)), generator=generator)
                stats[rows] += values[picks].mean(dim=1)
    stats = (stats / len(seeds)).sort().values
    tail = (1 - level) / 2
    low, high = stats[int(tail * (n_boot - 1))].item(), stats[int(round((1 - tail) * (n_boot - 1)))].item()
    return observed, low, high, len(seeds)


def compare(records, methods, n_boot=2000, seed=0):
    """[(method, reference, difference, low, high, seeds, questions, shown)] for every method against each of
    REFERENCES run (not itself), from the records' per-question correctness."""
    correct = {}
    for r in records:
        if r.get("correct"):
            correct.setdefault(r["method"], {})[r["seed"]] = r["correct"]
    rows = []
    for method in methods:
        for ref in REFERENCES:
            if ref == method or method not in correct or ref not in correct:
                continue
            result = bootstrap_difference(correct[method], correct[ref], n_boot, seed)
            if result:
                diff, low, high, n = result
                rows.append((method, ref, diff, low, high, n, len(correct[ref][min(correct[ref])]),
                             low > 0 or high < 0))
    return rows


def format_comparisons(rows):
    lines = ["| method | against | d_t_acc | 95% interval | seeds | questions per seed | shown |",
             "|---|---|---|---|---|---|---|"]
    for method, ref, diff, low, high, n, questions, shown in rows:
        word = ("shown: higher" if low > 0 else "shown: lower") if shown else "not shown"
        lines.append(f"| {method} | {ref} | {diff:+.4f} | [{low:+.4f}, {high:+.4f}] | {n} | {questions} | {word} |")
    lines.append("")
    lines.append("Paired T-Acc differences (method minus reference) on the same questions; 95% bootstrap intervals "
                 "over seeds and questions within seeds. \"shown\" only when the interval excludes zero.")
    return "\n".join(lines)


if __name__ == "__main__":
    main(run, Config)
