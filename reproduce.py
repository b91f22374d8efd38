"""
The reproduction experiment (docs/results.md): does alignment beat more training? Per seed: VFT to convergence,
candidate groups, then each method from that same VFT model with its tuned settings, evaluated with enough
questions to see a 2-point difference; then the mean +- std table and paired bootstrap intervals.

    python reproduce.py --tune --methods=headline # first: the tuning grid, on the VALIDATION split, seed 0
    python reproduce.py                           # the core methods (GROUPS), seeds 0-4, test split
    python reproduce.py --methods=headline        # and RFT, on the same VFT models (cached)
    python reproduce.py --quick                   # the classroom version (settings in QUICK)
    python reproduce.py --methods=c5,ablations    # more methods on the same VFT models and candidates (cached)
    python reproduce.py --curves=c4 --seeds=0,1,2 # C4: long runs evaluated along the way (val split)
    python reproduce.py --report                  # results.md again from results.json; nothing is trained
    python reproduce.py --workers=1               # one run after another, in this process, output on screen

Methods (train_align.py settings):
    vft         the VFT model itself
    vft_more    VFT continued on the gold chains of the same questions (NLL, gold only): the "more training"
                control [ours]
    rft         NLL on gold + correct samples                            [paper baseline]
    aft_none / aft_dc / aft_bc   binary feedback, L_A / L_DC / L_BC       [paper]
    align_only  L_BC without its NLL term: the alignment term alone      [ours, an ablation]
    aft_rank    ranking feedback, L_RBC                                  [paper idea, formula ours]
    rrhf, rrhf_bc, pro, pro_bc, dpo, dpo_bc   baselines without / with the boundary constraint

The task is the built-in one with smaller numbers than train_sft.py's default (factors up to 6, amounts up to
20): the same templates and chains, but a 2-layer model's VFT levels off by 4,000 steps (vft_steps), long before
the default task and model would (the curves are in docs/results.md). Alignment runs use a constant
learning rate after warm-up, so the model at step 100 of a 200-step run is the 100-step model: the tuning grid's
step counts cost one run per learning rate.

Results go to <out_dir>/results.json (one record per seed and method: metrics, per-question greedy correctness,
the training log) and <out_dir>/results.md; a rerun skips what is done. A difference is "shown" only when its
95% interval (two-level bootstrap: seeds, then questions within each seed) excludes zero.
"""

import json
import multiprocessing
import os
import statistics
import threading
import time
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

import candidates as cands
import compute
import train_align
import train_sft
from checkpoint import find_checkpoint, has_checkpoint, load_model_and_tokenizer, load_tokenizer_of
from compute import format_seconds, pick_device
from configurator import UserError, bounded, check_output, config_to_dict, main, validate
from data.dataset import TASKS, run_task
from evaluate import Config as EvalConfig, evaluate_model, group_scores

METHODS = {  # train_align.Config settings of each method; None: the VFT model itself
    "vft": None,
    "vft_more": {"loss": "vft", "constraint": "none"},
    "rft": {"loss": "rft", "constraint": "none"},
    "aft_none": {"loss": "aft", "constraint": "none"},
    "aft_dc": {"loss": "aft", "constraint": "dc"},
    "aft_bc": {"loss": "aft", "constraint": "bc"},
    "align_only": {"loss": "aft", "constraint": "bc", "nll_on": "none"},
    "aft_rank": {"loss": "aft_rank", "constraint": "bc"},
    "rrhf": {"loss": "rrhf", "constraint": "none"},
    "rrhf_bc": {"loss": "rrhf", "constraint": "bc"},
    "pro": {"loss": "pro", "constraint": "none"},
    "pro_bc": {"loss": "pro", "constraint": "bc"},
    "dpo": {"loss": "dpo", "constraint": "none"},
    "dpo_bc": {"loss": "dpo", "constraint": "bc"},
}
GROUPS = {  # --methods=<group>
    # the default run: the question in the title, AFT against VFT and more VFT. RFT (C2's "beats RFT") is left to
    # --methods=headline, because with it five seeds do not fit the 90-minute budget (docs/results.md, "Budgets")
    "core": "vft,vft_more,aft_bc",
    "headline": "vft,vft_more,rft,aft_bc",  # C2: AFT against VFT, RFT and more VFT
    "ablations": "vft,vft_more,rft,aft_dc,aft_bc,align_only",  # gold only, + positives, + L_DC / L_BC, L_BC alone
    "c4": "vft,aft_none,aft_bc,rrhf,rrhf_bc,dpo,dpo_bc",  # unconstrained against constrained
    "c5": "vft,aft_rank,rrhf,pro",  # ranking feedback: RRHF and PRO as published against AFT's ranking form
    "all": ",".join(METHODS),
}
REFERENCES = ("vft", "rft", "vft_more")  # every method's T-Acc is compared with these, question by question

# The tuning grid (python reproduce.py --tune, validation split, one seed): every tuned method gets the same
# learning rates and step counts, plus its own knob. The choices below were read off its table (docs/results.md).
GRID_LR, GRID_STEPS = (1e-5, 3e-5, 1e-4), (50, 100, 200, 400)  # 3e-4 lost for every method (docs/results.md)
KNOBS = {"vft_more": None, "rft": None, "aft_none": None, "aft_dc": None, "aft_bc": ("beta", (0.05, 0.2)),
         "align_only": None, "aft_rank": None, "rrhf": None, "pro": None, "dpo": ("beta_dpo", (0.1, 0.5))}
# tuned with the 4,000-step VFT model of seed 0 (--tune with --methods=headline, c5, then aft_none,aft_dc,align_only),
# except dpo, tuned with the earlier 2,000-step one
TUNED = {  # method -> the chosen settings (docs/results.md, "Fair tuning"); an untuned method takes aft_bc's
    "vft_more": {"learning_rate": 3e-5, "max_steps": 100},
    "rft": {"learning_rate": 1e-5, "max_steps": 100},
    "aft_none": {"learning_rate": 3e-5, "max_steps": 100},
    "aft_dc": {"learning_rate": 1e-5, "max_steps": 100},
    "aft_bc": {"learning_rate": 1e-4, "max_steps": 100, "beta": 0.2},
    "align_only": {"learning_rate": 1e-4, "max_steps": 50},
    "aft_rank": {"learning_rate": 1e-5, "max_steps": 100},
    "rrhf": {"learning_rate": 1e-5, "max_steps": 100},
    "pro": {"learning_rate": 1e-5, "max_steps": 100},
    "dpo": {"learning_rate": 1e-5, "max_steps": 200, "beta_dpo": 0.5},
}
# the classroom version: the headline comparison on one seed (its interval is over questions only), fewer questions,
# and a half-trained VFT model (2,000 steps, not converged: docs/results.md) so that it ends within 15 minutes
QUICK = {"methods": "headline", "seeds": "0", "vft_steps": 2000, "n_questions": 600, "test_questions": 2000,
         "k_questions": 300}
N_BOOT, BOOT_SEED = 2000, 0  # bootstrap resamples per interval, and the seed of their draws: fixed, so a
# rerun from the same results.json prints the same intervals
COLUMNS = ("t_acc", "d_t_acc", "maj@8", "rerank@8", "a_acc_train", "a_acc", "gold_ppl", "degeneration")
# d_t_acc: T-Acc minus the same seed's VFT T-Acc, a paired difference; its interval is in the comparison table


@dataclass
class Config:
    methods: str = "core"           # comma-separated methods and groups (GROUPS); --tune: the ones tuned
    seeds: str = "0,1,2,3,4"        # training seeds (the task itself is fixed: data seed 0)
    quick: bool = False             # the classroom version: replaces the settings named in QUICK
    tune: bool = False              # run the tuning grid on the validation split (first seed) instead
    curves: str = ""                # methods to train for curve_steps from each seed, evaluated along the way (val)
    report: bool = False            # write results.md from results.json again; train nothing
    dataset: str = field(default="synth", metadata={"choices": TASKS})  # the task: synth, gsm8k or aqua (data_dir's)
    data_dir: str = ""              # folder of the gsm8k / aqua files
    max_factor: int = bounded(6, min=2)  # synth difficulty: largest multiplier, divisor, price or count
    max_number: int = bounded(20, min=2)  # synth difficulty: largest amount only added or subtracted
    n_test: int = bounded(5000, min=1)  # test questions the task generates (synth; gsm8k, aqua: at most theirs)
    block_size: int = bounded(256, min=16)  # context of the fresh VFT model (AQuA's chains need about 768)
    n_layer: int = bounded(2, min=1)  # blocks of the fresh VFT model (train_sft's default has 4; 2 train twice as fast)
    out_dir: str = "out/reproduce"  # one sub-directory per seed, results.json and results.md
    eval_split: str = field(default="test", metadata={"choices": ("test", "val")})  # "val" while tuning
    vft_steps: int = bounded(4000, min=1)  # VFT steps per seed (chosen from the validation curve, docs/results.md)
    n_questions: int = bounded(1000, min=1)  # training questions with candidate groups
    k: int = bounded(8, min=1)      # samples per question
    temperature: float = bounded(0.8, min=0)  # sampling temperature of the candidates
    max_new_tokens: int = bounded(128, min=1)  # generation budget (this task's reference chains: at most ~110 tokens)
    batch_size: int = bounded(8, min=1)  # groups per alignment step
    align_steps: int = bounded(0, min=0)  # steps of every alignment run (0 = each method's tuned value, TUNED)
    learning_rate: float = bounded(0.0, min=0, max=100)  # alignment learning rate (0 = the method's tuned one)
    beta: float = bounded(0.0, min=0)  # boundary margin of bc (0 = the tuned one)
    beta_dpo: float = bounded(0.1, above=0)  # DPO's inverse temperature
    test_questions: int = bounded(5000, min=0)  # questions for T-Acc and gold PPL (at most the split's)
    k_questions: int = bounded(1000, min=0)  # questions for maj@8, rerank@8 and test A-Acc; groups for train A-Acc
    val_questions: int = bounded(500, min=1)  # validation questions of --tune and --curves
    curve_steps: str = "50,100,200,400,800"  # steps at which --curves evaluates
    workers: int = bounded(2, min=1)  # processes running the seeds' jobs side by side, sharing the CPU threads
    # out, each job's output in its log file (1: one after another in this process, output on screen; --tune and
    # --curves always run so). On 2 cores two do a little more work than one (docs/results.md, "Budgets")


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


def method_list(text):
    """The methods of --methods: names and groups, in order, each once."""
    items = parse_list(text, list(METHODS) + list(GROUPS), "methods")
    names = [m for item in items for m in (GROUPS[item].split(",") if item in GROUPS else [item])]
    return list(dict.fromkeys(names))


def method_settings(cfg, method):
    """The train_align settings of one method: its METHODS entry, its tuned values (TUNED; a baseline with bc takes
    its baseline's and aft_bc's beta, any other method not tuned aft_bc's), and the flags that override them
    (align_steps, learning_rate, beta when not 0)."""
    tuned = dict(TUNED.get(method) or TUNED.get(method.removesuffix("_bc")) or TUNED["aft_bc"])
    if method.endswith("_bc") and method != "aft_bc":  # a baseline with the boundary term: aft_bc's margin
        tuned["beta"] = TUNED["aft_bc"].get("beta", train_align.Config.beta)
    overrides = {"max_steps": cfg.align_steps, "learning_rate": cfg.learning_rate, "beta": cfg.beta}
    tuned.update({key: value for key, value in overrides.items() if value})
    return {**METHODS[method], **tuned} if METHODS[method] else tuned


def recorded_settings(cfg, method):
    """What a record keeps of its method's settings (none for the VFT model, which is not trained here)."""
    return method_settings(cfg, method) if METHODS[method] else {}


def task_settings(cfg):
    return {"dataset": cfg.dataset, "data_dir": cfg.data_dir, "max_factor": cfg.max_factor,
            "max_number": cfg.max_number, "n_test": cfg.n_test}


def vft_config(cfg, seed, vft_dir):
    return train_sft.Config(out_dir=str(vft_dir), seed=seed, max_steps=cfg.vft_steps, test_questions=0,
                            overwrite=True, block_size=cfg.block_size, n_layer=cfg.n_layer, **task_settings(cfg))


def candidates_config(cfg, seed, vft_dir, cand_path):
    return cands.Config(ckpt=str(vft_dir), out=str(cand_path), n_questions=cfg.n_questions, k=cfg.k,
                        temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, seed=seed)


def align_config(cfg, method, seed, vft_dir, cand_path, out_dir, **changes):
    """train_align's config of one method's run: its settings, a constant learning rate after warm-up."""
    settings = {**method_settings(cfg, method), **changes}
    return train_align.Config(**{"beta_dpo": cfg.beta_dpo, "vft": str(vft_dir), "candidates": str(cand_path),
                                 "batch_size": cfg.batch_size, "test_questions": cfg.test_questions,
                                 "k_questions": cfg.k_questions, "k": cfg.k, "eval_split": cfg.eval_split,
                                 "max_new_tokens": cfg.max_new_tokens,
                                 "out_dir": str(out_dir), "overwrite": True, "seed": seed, "log_every": 10,
                                 **settings, "min_lr": settings["learning_rate"]})  # flat after warm-up


def check_config(cfg):
    """(methods, seeds) of a config whose every setting is usable, or a UserError naming reproduce's own flag;
    checked before any training, so a mistake costs nothing. The configs of the runs reproduce starts are checked
    too, with the values this config gives them."""
    validate(cfg)  # the command line did already; a notebook's Config(...) did not
    methods = method_list(cfg.methods)
    curves = method_list(cfg.curves) if cfg.curves.strip() else []
    seeds = parse_list(cfg.seeds, seed_number, "seeds")
    parse_list(cfg.curve_steps, seed_number, "curve_steps")
    out = check_output(cfg.out_dir, "out_dir")
    root = out / f"seed{seeds[0]}"
    runs = [("VFT", vft_config(cfg, seeds[0], root / "vft")),
            ("candidates", candidates_config(cfg, seeds[0], root / "vft", root / "vft" / "candidates.jsonl"))]
    runs += [(method, align_config(cfg, method, seeds[0], root / "vft", root / "vft" / "candidates.jsonl",
                                   root / method)) for method in methods + curves if METHODS[method]]
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
    """The VFT run and candidate groups of one seed, built when missing, and the seconds each took."""
    vft_dir, seconds = root / "vft", {}
    if not has_checkpoint(vft_dir):
        t0 = time.time()
        train_sft.train(vft_config(cfg, seed, vft_dir))
        seconds["vft"] = round(time.time() - t0, 1)
    cand_path = vft_dir / "candidates.jsonl"
    if not cand_path.is_file():
        t0 = time.time()
        cands.build(candidates_config(cfg, seed, vft_dir, cand_path))
        seconds["candidates"] = round(time.time() - t0, 1)
    return vft_dir, cand_path, seconds


def run_method(cfg, method, seed, vft_dir, cand_path, root):
    """(metrics, training log) of one method on one seed's VFT model."""
    acfg = align_config(cfg, method, seed, vft_dir, cand_path, root / method)
    if METHODS[method] is None:  # the VFT model itself: evaluated exactly as the aligned ones are
        acfg = train_align.check_config(acfg)
        groups, header = cands.load_groups(cand_path, vft_dir)
        directory = find_checkpoint(vft_dir)
        task = run_task(directory)
        return train_align.vft_metrics(directory, header["fingerprint"]["model"], acfg, load_tokenizer_of(directory),
                                       task[cfg.eval_split], groups[:cfg.k_questions], pick_device("auto")), []
    history = train_align.train(acfg)
    return history["metrics"]["aligned"], history["train"]


def val_config(cfg, n_questions):
    """The validation metrics of --tune and --curves: greedy accuracy, gold PPL and degeneration, no sampling."""
    return EvalConfig(n_questions=n_questions, k_questions=0, max_new_tokens=cfg.max_new_tokens)


def evaluate_steps(cfg, method, seed, vft_dir, cand_path, run_dir, steps, n_questions, **changes):
    """One run of `method` to the last of `steps`, stopped at each and evaluated on the validation split there
    (greedy accuracy, gold PPL, degeneration of n_questions); resumed after (bitwise: train_align.py). Returns
    one record per step, with the training log of the steps since the previous one."""
    records, examples = [], run_task(find_checkpoint(vft_dir))["val"][:n_questions]
    for step in steps:
        acfg = align_config(cfg, method, seed, vft_dir, cand_path, run_dir, max_steps=steps[-1], stop_after=step,
                            save_every=steps[-1], test_questions=0, **changes)
        done = has_checkpoint(run_dir) and step > steps[0]
        history = train_align.train(replace(acfg, resume=done, overwrite=not done))
        metrics = val_metrics(cfg, run_dir, examples)
        records.append({"step": step, **metrics, "train": history["train"][-1] if history["train"] else {}})
        compute.log(f"  {run_dir.name} step {step}: val accuracy {metrics['t_acc']:.3f}, gold PPL "
                    f"{metrics['gold_ppl']:.4f}, degeneration {metrics['degeneration']:.3f}")
    return records


def val_metrics(cfg, run_dir, examples):
    """Greedy accuracy, gold PPL and degeneration of run_dir's model on validation examples (no sampling)."""
    device = pick_device("auto")
    model, enc = load_model_and_tokenizer(find_checkpoint(run_dir), device)
    with compute.autocast(device, train_align.Config.dtype):
        metrics = evaluate_model(model.eval(), enc, examples, val_config(cfg, len(examples)))
    metrics.pop("correct")
    return metrics


def vft_val_record(cfg, vft_dir, n_questions):
    return {"step": 0, **val_metrics(cfg, vft_dir, run_task(find_checkpoint(vft_dir))["val"][:n_questions])}


def tune(cfg, methods, seeds):
    """The tuning grid on the validation split with the first seed's VFT model: for each of `methods` tuned, each
    learning rate and knob value, one run evaluated at GRID_STEPS. Writes tuning.json and tuning.md; returns the
    best settings per method (highest validation accuracy; a tie goes to fewer steps, then the lower rate)."""
    out, seed = Path(cfg.out_dir), seeds[0]
    vft_dir, cand_path, _ = seed_prerequisites(cfg, seed, out / f"seed{seed}")
    path = out / "tuning.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    key = {"seed": seed, "val_questions": cfg.val_questions, "grid": [GRID_LR, GRID_STEPS],
           "task": task_settings(cfg), "vft_steps": cfg.vft_steps, "n_questions": cfg.n_questions}
    same = lambda k: {name: v for name, v in k.items() if name != "grid"}  # noqa: E731  a wider grid keeps the rows
    rows = saved.get("rows", []) if same(saved.get("key", {})) == same(json.loads(json.dumps(key))) else []
    if not any(r["method"] == "vft" for r in rows):
        rows.append({"method": "vft", "learning_rate": 0, "knob": None, "value": None,
                     **vft_val_record(cfg, vft_dir, cfg.val_questions)})
    tuned = [m for m in KNOBS if m in methods]
    for method in tuned:
        knob = KNOBS[method]
        for lr in GRID_LR:
            for value in (knob[1] if knob else (None,)):
                if any(r["method"] == method and r["learning_rate"] == lr and r["value"] == value for r in rows):
                    continue
                name = f"{method}-lr{lr:g}" + (f"-{knob[0]}{value:g}" if knob else "")
                changes = {"learning_rate": lr, **({knob[0]: value} if knob else {})}
                for record in evaluate_steps(cfg, method, seed, vft_dir, cand_path, out / "tune" / name,
                                             list(GRID_STEPS), cfg.val_questions, **changes):
                    rows.append({"method": method, "learning_rate": lr, "knob": knob and knob[0], "value": value,
                                 **record})
                path.write_text(json.dumps({"key": key, "rows": rows}, indent=1) + "\n")
    best = {}
    for method in tuned:
        candidates = [r for r in rows if r["method"] == method and r["learning_rate"] in GRID_LR
                      and r["step"] in GRID_STEPS]
        top = max(candidates, key=lambda r: (r["t_acc"], -r["step"], -r["learning_rate"]))
        best[method] = {"learning_rate": top["learning_rate"], "max_steps": top["step"],
                        **({top["knob"]: top["value"]} if top["knob"] else {})}
    lines = ["| method | learning rate | knob | steps | val accuracy | gold PPL | chosen |", "|---" * 7 + "|"]
    for r in rows:
        knob = {r["knob"]: r["value"]} if r["knob"] else {}
        chosen = best.get(r["method"]) == {"learning_rate": r["learning_rate"], "max_steps": r["step"], **knob}
        knob = f"{r['knob']} = {r['value']:g}" if r["knob"] else "-"
        lines.append(f"| {r['method']} | {r['learning_rate']:g} | {knob} | {r['step']} | {r['t_acc']:.3f} | "
                     f"{r['gold_ppl']:.4f} | {'**yes**' if chosen else ''} |")
    lines += ["", f"Validation split, {cfg.val_questions} questions, seed {seed}'s VFT model. Chosen: {best}"]
    (out / "tuning.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return best


def curves(cfg, seeds):
    """C4's picture: each of --curves trained to the last of curve_steps from each seed's VFT model, evaluated on
    the validation split at each step. Every method takes aft_bc's tuned learning rate, so that with the same step
    size the constraint is the difference between a method and its bc form. Writes curves.json, one entry per
    seed ({"seeds": [{"key", "methods"}, ...]}); another seed's entry with the same settings is kept, so seeds can
    be added by later runs. A seed whose methods are all there trains nothing."""
    out, steps = Path(cfg.out_dir), parse_list(cfg.curve_steps, seed_number, "curve_steps")
    path = out / "curves.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    learning_rate = method_settings(cfg, "aft_bc")["learning_rate"]
    settings = json.loads(json.dumps({"steps": steps, "val_questions": cfg.val_questions, "task": task_settings(cfg),
                                      "vft_steps": cfg.vft_steps, "learning_rate": learning_rate}))  # as read back
    entries = saved.get("seeds", [saved] if "key" in saved else [])  # an earlier version's file: one seed's entry
    entries = [e for e in entries if {k: v for k, v in e["key"].items() if k != "seed"} == settings]  # others: dropped
    wanted = [m for m in method_list(cfg.curves) if METHODS[m]]
    for seed in seeds:
        entry = next((e for e in entries if e["key"]["seed"] == seed), None)
        if entry is None:
            entry = {"key": {"seed": seed, **settings}, "methods": {}}
            entries = sorted(entries + [entry], key=lambda e: e["key"]["seed"])
        todo = [m for m in wanted if m not in entry["methods"]]
        if not todo and "vft" in entry["methods"]:
            continue
        vft_dir, cand_path, _ = seed_prerequisites(cfg, seed, out / f"seed{seed}")
        entry["methods"].setdefault("vft", [vft_val_record(cfg, vft_dir, cfg.val_questions)])
        for method in todo:
            entry["methods"][method] = evaluate_steps(cfg, method, seed, vft_dir, cand_path,
                                                      out / f"seed{seed}" / "curves" / method, steps,
                                                      cfg.val_questions, learning_rate=learning_rate)
            path.write_text(json.dumps({"seeds": entries}, indent=1) + "\n")
    path.write_text(json.dumps({"seeds": entries}, indent=1) + "\n")
    return {"seeds": entries}


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


def write_results(path, records):
    """results.json with one record a line: compact (the per-question lists are long), still diffable."""
    path.write_text("[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n")


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
    lines.append(f"Split: {cfg.eval_split}; seeds per cell: {', '.join(map(str, seeds))}; T-Acc and gold PPL on "
                 f"{cfg.test_questions} questions, maj@8 / rerank@8 / A-Acc (test samples) on {cfg.k_questions}, "
                 f"A-Acc train on {cfg.k_questions} training groups (sampled chains only); each method's steps and "
                 f"learning rate are in the budget table below.")
    return "\n".join(lines)


def chain_steps(answer):
    """Reasoning lines of a reference chain (the lines before its final `#### N`): the question's difficulty."""
    return sum(1 for line in answer.split("####")[0].splitlines() if line.strip())


def by_difficulty(records, methods, examples):
    """{method: {steps: (accuracy over seeds and questions, questions per seed)}} from per-question correctness."""
    steps = [chain_steps(ex["answer"]) for ex in examples]
    table = {}
    for method in methods:
        rows = [r["correct"] for r in records if r["method"] == method and r.get("correct")]
        for n in sorted(set(steps)):
            picked = [row[i] for row in rows for i, s in enumerate(steps[:len(row)]) if s == n]
            if picked:
                table.setdefault(method, {})[n] = (sum(picked) / len(picked), len(picked) // len(rows))
    return table


def format_difficulty(table):
    levels = sorted({n for row in table.values() for n in row})
    lines = ["| method | " + " | ".join(f"{n} steps" for n in levels) + " |", "|---" * (len(levels) + 1) + "|"]
    for method, row in table.items():
        lines.append(f"| {method} | " + " | ".join(f"{row[n][0]:.3f}" if n in row else "-" for n in levels) + " |")
    counts = next(iter(table.values()), {})
    lines += ["", "T-Acc by the number of reasoning lines of the question's reference chain, pooled over seeds ("
              + ", ".join(f"{n} steps: {counts[n][1]}" for n in levels if n in counts) + " questions per seed)."]
    return "\n".join(lines)


@torch.no_grad()
def flipped(cfg, root, method, n_groups=100, shown=3):
    """Chains of training groups whose order the method reversed: pairs (right, wrong) that the VFT model scored
    wrong above right and the method's model right above wrong. Returns markdown, or "" without both models."""
    vft_dir, run_dir = root / "vft", root / method
    if not (has_checkpoint(vft_dir) and has_checkpoint(run_dir)):
        return ""
    groups, _ = cands.load_groups(vft_dir / "candidates.jsonl", vft_dir)
    groups = groups[:n_groups]
    device = pick_device("auto")
    before, after = (group_scores(load_model_and_tokenizer(find_checkpoint(d), device)[0].eval(),
                                  load_tokenizer_of(find_checkpoint(d)), groups)
                     for d in (vft_dir, run_dir))
    s0, correct, gold, valid = before
    s1 = after[0]
    lines, pairs, flips, reversed_back = [], 0, 0, 0
    for b, group in enumerate(groups):
        for p in range(len(group["candidates"])):
            for n in range(len(group["candidates"])):
                if not (valid[b, p] and valid[b, n] and correct[b, p] and not correct[b, n] and not gold[b, p]):
                    continue
                pairs += 1
                reversed_back += bool(s0[b, p] > s0[b, n] and s1[b, p] < s1[b, n])
                if s0[b, p] < s0[b, n] and s1[b, p] > s1[b, n]:
                    flips += 1
                    if flips <= shown:
                        c = group["candidates"]
                        lines += [f"**Question.** {group['question']}", "",
                                  f"Right chain, s = {s0[b, p]:.4f} -> {s1[b, p]:.4f}:", "```", c[p]["text"].strip(),
                                  "```", f"Wrong chain, s = {s0[b, n]:.4f} -> {s1[b, n]:.4f}:", "```",
                                  c[n]["text"].strip(), "```", ""]
    head = (f"Of {pairs} (right, wrong) pairs of sampled chains in {len(groups)} training groups (seed "
            f"{root.name[4:]}), {method} put {flips} the right way round that VFT had the wrong way, and "
            f"{reversed_back} the other way. The first {min(shown, flips)}:")
    return "\n".join([head, ""] + lines)


def write_report(cfg, records, methods, seeds):
    """results.md from the records: the table, the paired comparisons, by difficulty, the alignment budgets, and
    flipped chains of the first seed (when its models are on disk)."""
    out = Path(cfg.out_dir)
    parts = [format_markdown(summarize(records, methods), cfg), format_comparisons(compare(records, methods,
                                                                                         N_BOOT, BOOT_SEED))]
    first = next((r for r in records if r["method"] == "vft"), None)
    if first:  # every seed's task is the same; its questions' difficulty also goes to difficulty.json (the figure)
        examples = run_task(find_checkpoint(out / f"seed{first['seed']}" / "vft"))[cfg.eval_split]
        parts.append(format_difficulty(by_difficulty(records, methods, examples)))
        steps = [chain_steps(ex["answer"]) for ex in examples[:len(first["correct"])]]
        (out / "difficulty.json").write_text(json.dumps(steps) + "\n")
    budget = ["| method | steps | groups per step | learning rate | other settings | minutes per run |",
              "|---|---|---|---|---|---|"]
    for method in methods:
        runs = [r for r in records if r["method"] == method]
        if runs and METHODS[method]:
            s = runs[0]["method_settings"]
            other = ", ".join(f"{k} {v}" for k, v in s.items() if k not in ("learning_rate", "max_steps"))
            minutes = statistics.mean(r["seconds"] for r in runs) / 60
            budget.append(f"| {method} | {s['max_steps']} | {cfg.batch_size} | {s['learning_rate']:g} | {other} | "
                          f"{minutes:.1f} |")
    parts.append("\n".join(budget))
    for method in ("aft_bc", "aft_rank"):
        if method in methods:
            text = flipped(cfg, out / f"seed{seeds[0]}", method)
            if text:
                parts.append(text)
                break
    report = "\n\n".join(parts) + "\n"
    (out / "results.md").write_text(report)
    return report


def method_record(cfg, seed, method, settings):
    """One method's run on one seed's VFT model (built first when missing), as a results.json record."""
    root = Path(cfg.out_dir) / f"seed{seed}"
    vft_dir, cand_path, seconds = seed_prerequisites(cfg, seed, root)
    t0 = time.time()
    metrics, log = run_method(cfg, method, seed, vft_dir, cand_path, root)
    metrics = dict(metrics)
    correct = metrics.pop("correct")
    return {"seed": seed, "method": method, "settings": settings, "method_settings": recorded_settings(cfg, method),
            "metrics": metrics, "correct": correct, "train": log, "seconds": round(time.time() - t0, 1),
            **({"prerequisite_seconds": seconds} if seconds else {})}


def in_order(cfg, jobs, settings, t_start):
    """The records of jobs ({seed: methods}), one run after another in this process, its output shown."""
    for seed, methods in jobs.items():
        for method in methods:
            print(f"=== reproduce: seed {seed}, {method} (elapsed {format_seconds(time.time() - t_start)})", flush=True)
            yield method_record(cfg, seed, method, settings)


def worker_job(cfg, seed, method, settings, log_path, threads):
    """A worker process's job with `threads` torch threads, its output written to log_path: one seed's VFT model and
    candidates (method None; returns their seconds) or one method's run (returns its record)."""
    torch.set_num_threads(threads)
    with open(log_path, "w", encoding="utf-8") as log, redirect_stdout(log), redirect_stderr(log):
        print(f"reproduce: seed {seed}, {method or 'VFT model and candidates'}, {threads} thread(s)", flush=True)
        if method is None:
            return seed_prerequisites(cfg, seed, Path(cfg.out_dir) / f"seed{seed}")[2]
        return method_record(cfg, seed, method, settings)


def exit_with_parent(parent_pid):
    """A worker process's start: a watcher thread ends the worker as soon as the process that started it is gone
    (killed, even with kill -9, so its `finally` never ran), instead of training on and writing into out_dir with
    nobody to collect the result. Checkpoints are written atomically, so stopping mid-job loses only that job."""
    def watch():
        while os.getppid() == parent_pid:  # an orphan is handed to another parent (init or a subreaper)
            time.sleep(1)
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


def in_workers(cfg, jobs, settings, t_start):
    """The records of jobs ({seed: methods}) from cfg.workers processes side by side. Every seed's VFT model is
    queued first; when it is done, the seed's first method (its VFT evaluation, cached for the others), then the
    rest, so that two jobs never evaluate the same VFT model at once. The CPU threads are shared
    out among the jobs that can run at once: on 2 cores two one-thread jobs do more work than one two-thread job,
    because a small model's operations are too small to keep two threads busy (docs/results.md, "Budgets"), but a
    job that runs alone (--quick's one VFT model) gets both."""
    threads, pending = torch.get_num_threads(), {}
    total = len(jobs) + sum(map(len, jobs.values()))
    print(f"=== reproduce: {total} jobs on {cfg.workers} worker processes sharing {threads} CPU thread(s); each job's "
          f"output goes to {cfg.out_dir}/seed<N>/<job>.log", flush=True)
    pool = multiprocessing.get_context("spawn").Pool(  # fresh interpreters, no state copied from this one
        cfg.workers, initializer=exit_with_parent, initargs=(os.getpid(),))

    def submit(new):  # [(seed, method or None)]: queued with their share of the threads
        if not new:  # a seed whose only job was its first
            return
        share = max(1, threads // min(cfg.workers, len(pending) + len(new)))
        for seed, method in new:
            log_path = Path(cfg.out_dir) / f"seed{seed}" / f"{method or 'prerequisites'}.log"
            job = pool.apply_async(worker_job, (cfg, seed, method, settings, log_path, share))
            pending[job] = (seed, method)

    try:
        for seed in jobs:
            (Path(cfg.out_dir) / f"seed{seed}").mkdir(parents=True, exist_ok=True)
        submit([(seed, None) for seed in jobs])
        seconds, finished = {}, 0
        while pending:
            time.sleep(0.5)
            for job in [job for job in pending if job.ready()]:
                seed, method = pending.pop(job)
                result = job.get()  # a job's error is raised here; `finally` stops the other jobs
                finished += 1
                print(f"=== reproduce: seed {seed}, {method or 'VFT model and candidates'} done ({finished}/{total} "
                      f"jobs, elapsed {format_seconds(time.time() - t_start)})", flush=True)
                if method is None:
                    seconds[seed] = result
                    submit([(seed, jobs[seed][0])])  # alone: it evaluates the VFT model, cached for the others
                    continue
                if method == jobs[seed][0]:
                    submit([(seed, m) for m in jobs[seed][1:]])
                yield {**result, **({"prerequisite_seconds": seconds.pop(seed)} if seconds.get(seed) else {})}
    finally:
        pool.terminate()  # nothing is lost: records are written as they come, checkpoints atomically
        pool.join()


def run(cfg):
    cfg = resolved(cfg)
    methods, seeds = check_config(cfg)  # every setting, before anything is trained or written
    out = Path(cfg.out_dir)
    if cfg.tune:
        return tune(cfg, methods, seeds)
    if cfg.curves.strip():
        return curves(cfg, seeds)
    results_path = out / "results.json"
    records = load_results(results_path)
    settings = {k: v for k, v in config_to_dict(cfg).items() if k not in (
        "methods", "seeds", "quick", "tune", "curves", "report", "curve_steps", "val_questions", "workers")}
    t_start = time.time()
    jobs = {}  # seed -> its methods not yet in results.json with these settings
    for seed in seeds if not cfg.report else []:
        todo = [m for m in methods if not any((r["seed"], r["method"], r["settings"], r.get("method_settings")) ==
                                              (seed, m, settings, recorded_settings(cfg, m)) for r in records)]
        if todo:
            jobs[seed] = todo
    if jobs:
        out.mkdir(parents=True, exist_ok=True)
        for record in (in_workers if cfg.workers > 1 else in_order)(cfg, jobs, settings, t_start):
            records.append(record)
            write_results(results_path, records)  # after every run: an interrupted experiment keeps what is done
    done = [r for r in records if r["method"] in methods and r["settings"] == settings
            and r.get("method_settings") == recorded_settings(cfg, r["method"])]  # an earlier tuning's are left out
    if not done:
        raise UserError(f"--report: {results_path} holds no results of these settings and methods")
    report = write_report(cfg, done, methods, seeds)
    print(report)
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
