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
from dataclasses import dataclass
from pathlib import Path

import candidates as cands
import train_align
import train_sft
from checkpoint import find_checkpoint, has_checkpoint, load_tokenizer_of
from compute import pick_device
from configurator import UserError, config_to_dict, main
from data.dataset import run_task

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
    out_dir: str = "out/reproduce"  # one sub-directory per seed, results.json and results.md
    eval_split: str = "test"        # "test" for the table, "val" while tuning
    vft_steps: int = 800            # VFT steps per seed (train_sft.py's default)
    n_questions: int = 1200         # training questions with candidate groups (train_align.py default)
    k: int = 8                      # samples per question
    temperature: float = 0.8        # sampling temperature of the candidates
    align_steps: int = 150          # steps of every alignment run and of vft_more (train_align.py default)
    batch_size: int = 8             # groups per alignment step
    learning_rate: float = 1e-4     # alignment learning rate
    beta: float = 0.05              # boundary margin of bc (tuned on the validation split)
    beta_dpo: float = 0.1           # DPO's inverse temperature
    test_questions: int = 500       # questions for T-Acc and gold PPL
    k_questions: int = 100          # questions for maj@8, rerank@8 and test A-Acc; groups for train A-Acc


def parse_list(text, valid, flag):
    items = [x for x in text.split(",") if x]
    unknown = [x for x in items if x not in valid]
    if unknown:
        raise UserError(f"--{flag}: unknown {', '.join(unknown)}; choose from {', '.join(valid)}")
    return items


def seed_prerequisites(cfg, seed, root):
    """The VFT run and candidate groups of one seed, built when missing."""
    vft_dir = root / "vft"
    if not has_checkpoint(vft_dir):
        train_sft.train(train_sft.Config(out_dir=str(vft_dir), seed=seed, max_steps=cfg.vft_steps,
                                         test_questions=0, overwrite=True))
    cand_path = vft_dir / "candidates.jsonl"
    if not cand_path.is_file():
        cands.build(cands.Config(ckpt=str(vft_dir), out=str(cand_path), n_questions=cfg.n_questions, k=cfg.k,
                                 temperature=cfg.temperature, seed=seed))
    return vft_dir, cand_path


def align_config(cfg, method, seed, vft_dir, cand_path, root):
    loss, constraint = METHODS[method] or ("vft", "none")
    return train_align.Config(loss=loss, constraint=constraint, beta=cfg.beta, beta_dpo=cfg.beta_dpo,
                              vft=str(vft_dir), candidates=str(cand_path), batch_size=cfg.batch_size,
                              max_steps=cfg.align_steps, learning_rate=cfg.learning_rate,
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
    return json.loads(path.read_text()) if path.is_file() else []


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
    methods = parse_list(cfg.methods, list(METHODS), "methods")
    try:
        seeds = [int(s) for s in cfg.seeds.split(",") if s]
    except ValueError:
        raise UserError(f"--seeds={cfg.seeds}: expected comma-separated integers") from None
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    records = load_results(results_path)
    settings = {k: v for k, v in config_to_dict(cfg).items() if k not in ("methods", "seeds")}
    t_start = time.time()
    for seed in seeds:
        root = out / f"seed{seed}"
        vft_dir, cand_path = seed_prerequisites(cfg, seed, root)
        for method in methods:
            if any(r["seed"] == seed and r["method"] == method and r["settings"] == settings for r in records):
                continue
            t0 = time.time()
            print(f"=== reproduce: seed {seed}, {method} (elapsed {train_sft.format_seconds(t0 - t_start)})",
                  flush=True)
            metrics = run_method(cfg, method, seed, vft_dir, cand_path, root)
            records.append({"seed": seed, "method": method, "settings": settings, "metrics": metrics,
                            "seconds": round(time.time() - t0, 1)})
            results_path.write_text(json.dumps(records, indent=1) + "\n")
    done = [r for r in records if r["settings"] == settings]
    table = format_markdown(summarize(done, methods), cfg)
    (out / "results.md").write_text(table + "\n")
    print(table)
    print(f"reproduce: {train_sft.format_seconds(time.time() - t_start)} -> {out / 'results.md'}")
    return summarize(done, methods)


if __name__ == "__main__":
    main(run, Config)
