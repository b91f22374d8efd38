"""
The reproduction experiment: per seed, VFT, then candidate groups, then every method of docs/method.md from the
same VFT model, then a table of mean +- std over seeds.

    python reproduce.py                                         # every method, seeds 0 1 2
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
Results go to <out_dir>/results.json (one record per seed and method; a rerun skips what is done) and
<out_dir>/results.md.
"""

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import candidates as cands
import train_align
import train_sft
from checkpoint import find_checkpoint, has_checkpoint, load_tokenizer_of
from compute import format_seconds, pick_device
from configurator import UserError, bounded, check_output, config_to_dict, main, validate
from data.dataset import TASKS, run_task

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
COLUMNS = ("t_acc", "d_t_acc", "maj@8", "rerank@8", "a_acc_train", "a_acc", "gold_ppl", "degeneration")
# d_t_acc: T-Acc minus the same seed's VFT T-Acc. The VFT models of different seeds differ by several points,
# so paired differences tell methods apart where the raw means' spread cannot.


@dataclass
class Config:
    methods: str = ",".join(METHODS)  # comma-separated subset of the methods above
    seeds: str = "0,1,2"            # training seeds (the task itself is fixed: data seed 0)
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
    learning_rate: float = bounded(1e-4, above=0)  # alignment learning rate
    beta: float = bounded(0.05, above=0)  # boundary margin of bc (tuned on the validation split)
    beta_dpo: float = bounded(0.1, above=0)  # DPO's inverse temperature
    test_questions: int = bounded(500, min=0)  # questions for T-Acc and gold PPL
    k_questions: int = bounded(100, min=0)  # questions for maj@8, rerank@8 and test A-Acc; groups for train A-Acc


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
    methods = parse_list(cfg.methods, list(METHODS), "methods")
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
            records.append({"seed": seed, "method": method, "settings": settings, "metrics": metrics,
                            "seconds": round(time.time() - t0, 1)})
            results_path.write_text(json.dumps(records, indent=1) + "\n")
    done = [r for r in records if r["settings"] == settings]
    table = format_markdown(summarize(done, methods), cfg)
    (out / "results.md").write_text(table + "\n")
    print(table)
    print(f"reproduce: {format_seconds(time.time() - t_start)} -> {out / 'results.md'}")
    return summarize(done, methods)


if __name__ == "__main__":
    main(run, Config)
