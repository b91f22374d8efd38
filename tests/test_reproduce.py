"""reproduce.py: the mean +- std table, and a miniature end-to-end run that is resumable."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import reproduce
from configurator import UserError

REPO = Path(__file__).resolve().parents[1]


def test_summary_is_mean_and_sample_std_over_seeds():
    records = [{"method": "aft_bc", "metrics": {"t_acc": a, "a_acc": None}} for a in (0.2, 0.3, 0.4)]
    table = reproduce.summarize(records, ["aft_bc", "rft"])
    mean, std, n = table["aft_bc"]["t_acc"]
    assert (mean, n) == (pytest.approx(0.3), 3) and std == pytest.approx(0.1)
    assert "a_acc" not in table["aft_bc"] and "rft" not in table
    assert "0.300 ± 0.100" in reproduce.format_markdown(table, reproduce.Config())


def test_paired_difference_to_the_same_seeds_vft():
    records = [{"seed": s, "method": m, "metrics": {"t_acc": t}}
               for s, m, t in ((0, "vft", 0.2), (0, "rft", 0.25), (1, "vft", 0.4), (1, "rft", 0.47))]
    mean, std, n = reproduce.summarize(records, ["rft"])["rft"]["d_t_acc"]
    assert (mean, n) == (pytest.approx(0.06), 2) and std == pytest.approx(0.01 * 2 ** 0.5)


def test_unknown_method_is_refused():
    with pytest.raises(UserError, match="aft_xx"):
        reproduce.run(reproduce.Config(methods="vft,aft_xx"))


@pytest.mark.parametrize("settings, expected", [
    ({"vft_steps": 0}, "--vft_steps=0: must be at least 1"),
    ({"beta": float("nan")}, "--beta=nan: must be a finite number"),
    ({"eval_split": "train"}, "--eval_split=train: choose one of test, val"),
    ({"seeds": ""}, "--seeds is empty"),
    ({"seeds": "0,x"}, "--seeds=0,x: 'x' is not an integer"),
    ({"seeds": "1,-2"}, "seed -2 is negative"),
    ({"seeds": "1,1"}, "1 is given twice"),
    ({"methods": " , "}, "--methods is empty"),
    ({"out_dir": ""}, "--out_dir is empty"),
    ({"out_dir": "{tmp}/a_file/sub"}, "a_file is a regular file"),
    ({"out_dir": "{tmp}/a_file"}, "a_file: a regular file, not a directory"),
])
def test_bad_settings_are_refused_before_anything_is_trained_or_written(tmp_path, settings, expected):
    (tmp_path / "a_file").write_text("x")
    settings = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in settings.items()}
    cfg = reproduce.Config(**{"out_dir": str(tmp_path / "rep"), **settings})
    with pytest.raises(UserError, match=re.escape(expected)):
        reproduce.run(cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_a_methods_settings_are_tuned_unless_a_flag_overrides_them():
    cfg = reproduce.Config()
    acfg = reproduce.align_config(cfg, "aft_bc", 0, "vft", "c.jsonl", reproduce.Path("out"))
    tuned = reproduce.TUNED["aft_bc"]
    assert (acfg.loss, acfg.constraint, acfg.max_steps, acfg.learning_rate) == (
        "aft", "bc", tuned["max_steps"], tuned["learning_rate"])
    assert acfg.min_lr == acfg.learning_rate  # flat after warm-up: step n of a longer run is the n-step model
    cfg = reproduce.Config(learning_rate=1e-6, align_steps=7, beta=0.3)
    acfg = reproduce.align_config(cfg, "align_only", 0, "vft", "c.jsonl", reproduce.Path("out"))
    assert (acfg.learning_rate, acfg.min_lr, acfg.max_steps, acfg.beta, acfg.nll_on) == (1e-6, 1e-6, 7, 0.3, "none")
    assert reproduce.check_config(reproduce.Config())[1] == [0, 1, 2, 3, 4]


def test_a_baseline_with_the_boundary_term_takes_its_baselines_settings_and_aft_bcs_margin(monkeypatch):
    monkeypatch.setattr(reproduce, "TUNED", {"aft_bc": {"learning_rate": 1e-4, "max_steps": 100, "beta": 0.2},
                                             "rrhf": {"learning_rate": 3e-5, "max_steps": 400}})
    cfg = reproduce.Config()
    assert reproduce.method_settings(cfg, "rrhf_bc") == {"loss": "rrhf", "constraint": "bc", "learning_rate": 3e-5,
                                                         "max_steps": 400, "beta": 0.2}
    assert reproduce.method_settings(cfg, "pro")["learning_rate"] == 1e-4  # not tuned: aft_bc's
    assert reproduce.recorded_settings(cfg, "vft") == {}


def test_groups_expand_in_order_without_repeats():
    assert reproduce.method_list("headline") == ["vft", "vft_more", "rft", "aft_bc"]
    assert reproduce.method_list(reproduce.Config.methods) == ["vft", "vft_more", "aft_bc"]  # the default run: no RFT
    assert reproduce.method_list("vft,ablations")[:4] == ["vft", "vft_more", "rft", "aft_dc"]
    assert reproduce.method_list("all") == list(reproduce.METHODS)


def test_chain_steps_and_accuracy_by_difficulty():
    examples = [{"answer": "a = 1.\nb = 2.\n#### 2"}, {"answer": "a = 1.\nb = 2.\nc = 3.\n#### 3"},
                {"answer": "x.\n\ny.\n#### 5"}]
    assert [reproduce.chain_steps(ex["answer"]) for ex in examples] == [2, 3, 2]
    records = [{"method": "m", "correct": [1, 0, 0]}, {"method": "m", "correct": [1, 1, 1]}]
    table = reproduce.by_difficulty(records, ["m"], examples)
    assert table == {"m": {2: (pytest.approx(3 / 4), 2), 3: (pytest.approx(1 / 2), 1)}}
    assert "| m | 0.750 | 0.500 |" in reproduce.format_difficulty(table)


def outcomes(rate, n, seed):
    """0/1 outcomes of n questions with exactly round(rate * n) right, in a shuffled order."""
    import random
    right = round(rate * n)
    values = [1] * right + [0] * (n - right)
    random.Random(seed).shuffle(values)
    return values


def test_identical_methods_have_an_interval_around_zero():
    a = {s: outcomes(0.4, 300, s) for s in range(5)}
    diff, low, high, n = reproduce.bootstrap_difference(a, {s: list(v) for s, v in a.items()}, n_boot=500)
    assert (diff, low, high, n) == (0, 0.0, 0.0, 5)


def test_noisy_equal_methods_are_not_shown_different():
    a = {s: outcomes(0.4, 300, s) for s in range(3)}
    b = {s: outcomes(0.4, 300, 100 + s) for s in range(3)}  # the same accuracy, other questions right
    diff, low, high, _ = reproduce.bootstrap_difference(a, b, n_boot=500)
    assert diff == 0 and low < 0 < high


def test_a_method_right_on_20_percent_more_questions_is_shown_better():
    base = {s: outcomes(0.4, 300, s) for s in range(3)}
    better = {}
    for s, values in base.items():  # right on every question the base is, and on 60 (20%) more
        wrong = [i for i, v in enumerate(values) if not v][:60]
        better[s] = [1 if i in wrong else v for i, v in enumerate(values)]
    diff, low, high, _ = reproduce.bootstrap_difference(better, base, n_boot=500)
    assert diff == pytest.approx(0.2) and 0 < low <= 0.2 <= high
    records = [{"seed": s, "method": m, "correct": c[s]} for s in base for m, c in (("vft", base), ("aft_bc", better))]
    rows = reproduce.compare(records, ["vft", "aft_bc"], n_boot=500)
    assert [(r[0], r[1], r[-1]) for r in rows] == [("aft_bc", "vft", True)]
    assert "shown: higher" in reproduce.format_comparisons(rows)


def test_bootstrap_is_deterministic_under_its_seed():
    a = {s: outcomes(0.5, 200, s) for s in range(3)}
    b = {s: outcomes(0.45, 200, 50 + s) for s in range(3)}
    first = reproduce.bootstrap_difference(a, b, n_boot=300, seed=7)
    assert reproduce.bootstrap_difference(a, b, n_boot=300, seed=7) == first
    assert reproduce.bootstrap_difference(a, b, n_boot=300, seed=8) != first


def test_quick_replaces_its_settings_and_keeps_its_own_out_dir():
    cfg = reproduce.resolved(reproduce.Config(quick=True, seeds="7"))
    assert (cfg.seeds, cfg.methods, cfg.k_questions, cfg.out_dir) == (reproduce.QUICK["seeds"], "headline", 300,
                                                                       "out/reproduce_quick")
    assert cfg.vft_steps < reproduce.Config.vft_steps  # the classroom's VFT is the short one
    assert reproduce.check_config(cfg)[0] == ["vft", "vft_more", "rft", "aft_bc"]
    assert reproduce.check_config(reproduce.Config(methods="all"))[0] == list(reproduce.METHODS)


def test_a_results_file_that_is_not_ours_is_named(tmp_path):
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(UserError, match="results.json"):
        reproduce.load_results(tmp_path / "results.json")


MINIATURE = dict(methods="vft,aft_bc", seeds="0", vft_steps=3, n_questions=4, k=2, align_steps=2, batch_size=2,
                 test_questions=3, k_questions=2, n_test=20)


@pytest.fixture(scope="module")
def miniature_run(tmp_path_factory):
    """(config, table) of one miniature run in this process with one thread, shared by the tests below: the
    workers' test compares its records with theirs, the resume test reruns it."""
    out = tmp_path_factory.mktemp("miniature")
    cfg = reproduce.Config(**MINIATURE, out_dir=str(out), workers=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' share when two jobs run at once
    try:
        table = reproduce.run(cfg)
    finally:
        torch.set_num_threads(threads)
    return cfg, table


def test_miniature_run_is_resumable(miniature_run, capsys):
    cfg, table = miniature_run
    tmp_path = Path(cfg.out_dir)
    assert set(table) == {"vft", "aft_bc"}
    records = json.loads((tmp_path / "results.json").read_text())
    assert [(r["seed"], r["method"]) for r in records] == [(0, "vft"), (0, "aft_bc")]
    for r in records:  # per-question outcomes that agree with the reported T-Acc
        assert len(r["correct"]) == 3 and set(r["correct"]) <= {0, 1}
        assert sum(r["correct"]) / 3 == pytest.approx(r["metrics"]["t_acc"])
    report = (tmp_path / "results.md").read_text()
    assert "| aft_bc |" in report and "| aft_bc | vft |" in report
    capsys.readouterr()
    assert records[1]["train"] and {"loss", "ca", "nll", "margin"} <= set(records[1]["train"][-1])
    assert "right way round" in report  # the flipped-chains section ran on the saved models
    reproduce.run(cfg)  # everything is done: nothing is trained again
    assert "=== reproduce" not in capsys.readouterr().out
    reproduce.run(reproduce.replace(cfg, report=True))
    assert (tmp_path / "results.md").read_text() == report


def test_workers_give_the_records_one_process_gives(miniature_run, tmp_path):
    """--workers=2 runs the jobs in worker processes: the same records as this process gives with the same thread
    count, bit for bit, each job's output in its log file, the prerequisites' seconds kept once per seed."""
    cfg, _ = miniature_run
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reproduce.run(reproduce.replace(cfg, out_dir=str(tmp_path / "two"), workers=2))  # one thread each, as above
    finally:
        torch.set_num_threads(threads)
    one, two = ({(r["seed"], r["method"]): r for r in json.loads((d / "results.json").read_text())}
                for d in (Path(cfg.out_dir), tmp_path / "two"))
    assert set(one) == set(two) == {(0, "vft"), (0, "aft_bc")}
    for key in one:
        assert (two[key]["metrics"], two[key]["correct"], two[key]["train"]) == (
            one[key]["metrics"], one[key]["correct"], one[key]["train"])
    assert sum("prerequisite_seconds" in r for r in two.values()) == 1
    log = (tmp_path / "two" / "seed0" / "aft_bc.log").read_text()
    assert "align: loss=aft constraint=bc" in log
    assert log.count("greedy decoding: 3/3") == 1  # its own model's only: the VFT model's came from the vft job
    assert "step     3/3" in (tmp_path / "two" / "seed0" / "prerequisites.log").read_text()


def test_workers_share_the_threads_among_the_jobs_that_run_at_once(tmp_path):
    """One seed (--quick): its VFT model trains alone with every thread, and is evaluated alone (the vft job); then
    its two other methods run side by side with one thread each. A later run whose seed has one job left ends."""
    cfg = reproduce.Config(**{**MINIATURE, "methods": "vft,rft,aft_bc"}, out_dir=str(tmp_path), workers=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        reproduce.run(cfg)
        first = {job: (tmp_path / "seed0" / f"{job}.log").read_text().splitlines()[0]
                 for job in ("prerequisites", "vft", "rft", "aft_bc")}
        assert first == {"prerequisites": "reproduce: seed 0, VFT model and candidates, 2 thread(s)",
                         "vft": "reproduce: seed 0, vft, 2 thread(s)", "rft": "reproduce: seed 0, rft, 1 thread(s)",
                         "aft_bc": "reproduce: seed 0, aft_bc, 1 thread(s)"}
        reproduce.run(reproduce.replace(cfg, methods="vft,rft,aft_bc,vft_more"))  # one job left, and nothing after it
    finally:
        torch.set_num_threads(threads)
    methods = [r["method"] for r in json.loads((tmp_path / "results.json").read_text())]
    assert sorted(methods) == ["aft_bc", "rft", "vft", "vft_more"]


def test_a_workers_error_stops_the_run_and_keeps_what_is_done(tmp_path):
    cfg = reproduce.Config(methods="vft", seeds="0,1", out_dir=str(tmp_path), vft_steps=3, n_questions=4, k=2,
                           test_questions=3, k_questions=2, n_test=20, workers=2)
    (tmp_path / "seed1" / "vft").mkdir(parents=True)
    (tmp_path / "seed1" / "vft" / "candidates.jsonl").write_text("not candidates\n")  # seed 1's model is trained,
    with pytest.raises(UserError, match="candidates.jsonl"):  # then its candidate file is read and refused
        reproduce.run(cfg)
    saved = tmp_path / "results.json"  # seed 0's record, when its job ended first
    assert [r["seed"] for r in (json.loads(saved.read_text()) if saved.is_file() else [])] in ([], [0])


def proc_fields(pid):
    """The fields of /proc/<pid>/stat after the process's name (state, parent pid, ...); None once it has gone."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def alive(pid):
    fields = proc_fields(pid)
    return fields is not None and fields[0] != "Z"  # a zombie has ended


def children_of(pid):
    """The live processes whose parent is pid."""
    return [int(p.name) for p in Path("/proc").iterdir()
            if p.name.isdigit() and alive(p.name) and int(proc_fields(p.name)[1]) == pid]


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds the workers through /proc (Linux)")
def test_killing_the_run_ends_its_workers(tmp_path):
    """kill -9 of `python reproduce.py` skips its clean-up; its workers notice and end within seconds, instead of
    training on into out_dir (each would also hold its run's lock, refusing the rerun)."""
    args = ["--methods=vft", "--seeds=0,1", f"--out_dir={tmp_path}", "--vft_steps=100000", "--n_questions=4", "--k=2",
            "--n_test=20", "--test_questions=3", "--k_questions=2"]
    run = subprocess.Popen([sys.executable, str(REPO / "reproduce.py"), *args], cwd=tmp_path,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        logs = [tmp_path / f"seed{seed}" / "prerequisites.log" for seed in (0, 1)]
        while not all(log.is_file() and log.stat().st_size for log in logs):  # both workers are in their jobs
            assert run.poll() is None and time.time() < deadline, "the workers did not start"
            time.sleep(0.2)
        workers = children_of(run.pid)
        assert len(workers) >= 2
    finally:
        run.kill()
        run.wait()
    deadline = time.time() + 15
    while any(alive(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.2)
    left = [pid for pid in workers if alive(pid)]
    for pid in left:  # not to leave them training beside the rest of the suite
        os.kill(pid, signal.SIGKILL)
    assert not left, f"workers {left} outlived the killed run"


def test_miniature_tuning_and_curves(tmp_path, monkeypatch):
    """The grid's runs are evaluated on the validation split at each of its steps, and the best one is chosen; only
    the methods of --methods are tuned (aft_dc is not in the headline group)."""
    monkeypatch.setattr(reproduce, "GRID_LR", (1e-4,))
    monkeypatch.setattr(reproduce, "GRID_STEPS", (1, 2))
    monkeypatch.setattr(reproduce, "KNOBS", {"aft_bc": ("beta", (0.05, 0.2)), "rft": None, "aft_dc": None})
    cfg = reproduce.Config(methods="headline", seeds="0", out_dir=str(tmp_path), vft_steps=3, n_questions=4, k=2,
                           batch_size=2, n_test=20, val_questions=3, tune=True)
    best = reproduce.run(cfg)
    rows = json.loads((tmp_path / "tuning.json").read_text())["rows"]
    assert [(r["method"], r["value"], r["step"]) for r in rows] == [
        ("vft", None, 0), ("aft_bc", 0.05, 1), ("aft_bc", 0.05, 2), ("aft_bc", 0.2, 1), ("aft_bc", 0.2, 2),
        ("rft", None, 1), ("rft", None, 2)]
    top = max((r for r in rows if r["method"] == "rft"), key=lambda r: (r["t_acc"], -r["step"]))
    assert best["rft"] == {"learning_rate": 1e-4, "max_steps": top["step"]}
    assert set(best["aft_bc"]) == {"learning_rate", "max_steps", "beta"} and "aft_dc" not in best
    curves = reproduce.replace(cfg, tune=False, curves="aft_none", curve_steps="1,2")
    first = reproduce.run(curves)["seeds"]
    assert [e["key"]["seed"] for e in first] == [0]
    assert [r["step"] for r in first[0]["methods"]["aft_none"]] == [1, 2]
    assert {"t_acc", "gold_ppl", "degeneration"} <= set(first[0]["methods"]["vft"][0])
    both = reproduce.run(reproduce.replace(curves, seeds="1,0"))["seeds"]  # seed 1 added, seed 0's entry kept
    assert [e["key"]["seed"] for e in both] == [0, 1] and both[0] == first[0]
    assert [r["step"] for r in both[1]["methods"]["aft_none"]] == [1, 2]
    assert json.loads((tmp_path / "curves.json").read_text()) == {"seeds": both}
    monkeypatch.setattr(reproduce, "seed_prerequisites", lambda *args: pytest.fail("a cached seed was run again"))
    assert reproduce.run(reproduce.replace(curves, seeds="0,1"))["seeds"] == both


def test_an_aqua_row(tmp_path):
    """The results table can have an AQuA row: the same miniature experiment on a slice of AQuA-RAT."""
    from test_aqua import AQUA, write_slice
    if not (AQUA / "dev.json").is_file():
        pytest.skip("AQuA-RAT is not beside the repository")
    write_slice(tmp_path / "aqua")
    cfg = reproduce.Config(methods="vft,aft_bc", seeds="0", out_dir=str(tmp_path / "rep"), dataset="aqua",
                           data_dir=str(tmp_path / "aqua"), block_size=768, vft_steps=2, n_questions=3, k=2,
                           align_steps=1, batch_size=1, test_questions=2, k_questions=2, workers=1)
    table = reproduce.run(cfg)
    assert set(table) == {"vft", "aft_bc"}
    vft_config = json.loads((tmp_path / "rep" / "seed0" / "vft" / "checkpoint" / "trainer.json").read_text())["config"]
    assert (vft_config["dataset"], vft_config["block_size"]) == ("aqua", 768)
