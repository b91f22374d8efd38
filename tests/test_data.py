"""Tests for data/synth.py (the built-in task) and data/dataset.py (prompt, loading, task splits)."""

import json
import random
import re
from pathlib import Path

import pytest

from data import synth
from data.answers import extract_answer
from data.dataset import UserError, format_prompt, load_jsonl, load_task, task_from_config
from data.synth import Difficulty, make_problem, make_split, make_splits

# ../shared/data beside the repository (or beside the worktree folder that holds it), when present
SHARED = next((p / "shared" / "data" for p in Path(__file__).resolve().parents if (p / "shared" / "data").is_dir()),
              Path("/nonexistent"))
GSM8K_DIR = SHARED / "gsm8k"
STEP = re.compile(r"(\d+) ([-+*/]) (\d+) = \$?(\d+)\b")


@pytest.fixture(scope="module")
def problems():
    rng = random.Random(2024)
    return [make_problem(rng, Difficulty()) for _ in range(2000)]


def _independent_value(a, op, b):
    """Plain integer arithmetic, independent of data/answers.py; None for a division that is not exact."""
    a, b = int(a), int(b)
    if op == "/":
        return a // b if b and a % b == 0 else None
    return {"+": a + b, "-": a - b, "*": a * b}[op]


def test_every_chain_is_true_and_ends_in_the_final_answer(problems):
    for problem in problems:
        assert problem.answer in problem.chains
        assert len(set(problem.chains)) == len(problem.chains)
        for chain in problem.chains:
            *steps, last = chain.split("\n")
            assert last == f"#### {problem.final}" and extract_answer(chain) == str(problem.final)
            for step in steps:
                equations = STEP.findall(step)
                assert len(equations) == 1, step  # one equation per reasoning line
                a, op, b, c = equations[0]
                assert _independent_value(a, op, b) == int(c), step
                assert 0 < int(c) <= Difficulty().max_result, step


def test_problems_admit_several_chains(problems):
    several = [p for p in problems if len(p.chains) >= 2]
    assert len(several) / len(problems) >= 0.8
    # not only reorderings: some problems have chains whose sets of equations differ (decompositions)
    regrouped = [p for p in several if len({frozenset(STEP.findall(c)) for c in p.chains}) >= 2]
    assert len(regrouped) / len(problems) >= 0.3


def test_reference_is_mostly_the_canonical_chain(problems):
    several = [p for p in problems if len(p.chains) >= 2]
    canonical = sum(p.answer == p.chains[0] for p in several) / len(several)
    assert abs(canonical - 0.8) < 0.04
    rng = random.Random(0)
    always = [make_problem(rng, Difficulty(p_canonical=1.0)) for _ in range(200)]
    assert all(p.answer == p.chains[0] for p in always)
    never = [make_problem(rng, Difficulty(p_canonical=0.0)) for _ in range(200)]
    assert all(p.answer != p.chains[0] for p in never if len(p.chains) >= 2)


@pytest.mark.parametrize("min_steps, max_steps", [(2, 2), (3, 3), (4, 4), (2, 3)])
def test_step_counts_respect_the_difficulty(min_steps, max_steps):
    rng = random.Random(min_steps * 10 + max_steps)
    difficulty = Difficulty(min_steps=min_steps, max_steps=max_steps)
    for _ in range(300):
        for chain in make_problem(rng, difficulty).chains:
            assert min_steps <= chain.count("\n") <= max_steps


def test_default_difficulty_mixes_step_counts(problems):
    steps = {p.answer.count("\n") for p in problems}
    assert steps == {2, 3, 4}


@pytest.mark.parametrize("difficulty", [Difficulty(max_factor=5, max_number=10, max_result=60),
                                        Difficulty(max_factor=40, max_number=100, max_result=200)])
def test_number_limits(difficulty):
    rng = random.Random(1)
    for _ in range(500):
        problem = make_problem(rng, difficulty)
        for chain in problem.chains:
            assert all(int(n) <= difficulty.max_result for n in re.findall(r"\d+", problem.question + chain))


def test_every_template_is_used_and_valid():
    rng = random.Random(7)
    assert len(synth.TEMPLATES) >= 6
    for template in synth.TEMPLATES:
        made = None
        while made is None:
            made = template(rng, Difficulty())
        question, decompositions, final = made
        assert question.endswith("?") and final > 0 and decompositions


def test_bad_difficulty_is_rejected():
    with pytest.raises(ValueError):
        Difficulty(min_steps=4, max_steps=3)
    with pytest.raises(ValueError):
        Difficulty(max_factor=1)
    with pytest.raises(ValueError):
        Difficulty(p_canonical=1.5)
    with pytest.raises(ValueError, match="no template"):
        make_problem(random.Random(0), Difficulty(min_steps=6, max_steps=6))


def test_make_split_is_deterministic_and_distinct():
    first, again, other = make_split(300, seed=3), make_split(300, seed=3), make_split(300, seed=4)
    assert first == again and first != other
    assert len({r["question"] for r in first}) == 300
    assert set(first[0]) == {"question", "answer"}


def test_make_splits_share_no_question_and_keep_test_fixed():
    splits = make_splits(2000, 200, 300, seed=11)
    questions = {name: {r["question"] for r in records} for name, records in splits.items()}
    assert [len(questions[k]) for k in ("train", "val", "test")] == [2000, 200, 300]
    assert not questions["train"] & questions["val"]
    assert not questions["train"] & questions["test"]
    assert not questions["val"] & questions["test"]
    assert make_splits(2000, 200, 300, seed=11) == splits
    assert make_splits(50, 200, 300, seed=11)["test"] == splits["test"]  # test does not move with n_train


def test_generation_wastes_few_draws(monkeypatch):
    """Every run regenerates its task, so drawing must stay linear: few duplicate or rejected problems per kept one
    (counted, not timed: a timer fails on a busy machine and says nothing about why)."""
    from data import synth
    calls, make = [0], synth.make_problem

    def counting(*args):
        calls[0] += 1
        return make(*args)
    monkeypatch.setattr(synth, "make_problem", counting)
    splits = make_splits(28_000, 1_000, 5_000, seed=0, difficulty=synth.Difficulty(max_factor=6, max_number=20))
    assert sum(map(len, splits.values())) == 34_000 and calls[0] < 1.5 * 34_000


def test_format_prompt():
    assert format_prompt("What is 2 + 3?") == "Question: What is 2 + 3?\nAnswer:\n"


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


GOOD = json.dumps({"question": "q?", "answer": "1 + 1 = 2\n#### 2"})


@pytest.mark.parametrize("content, line, fragment", [
    (GOOD + "\n{not json\n", 2, "malformed JSON"),
    (GOOD + "\n" + json.dumps({"question": "q?"}) + "\n", 2, "missing key 'answer'"),
    (json.dumps({"answer": "#### 2"}) + "\n", 1, "missing key 'question'"),
    (GOOD + "\n" + GOOD + "\n" + json.dumps({"question": 5, "answer": "#### 2"}) + "\n", 3, "must be a string"),
    (json.dumps({"question": "q?", "answer": ["#### 2"]}) + "\n", 1, "must be a string"),
    (GOOD + "\n" + json.dumps({"question": "q?", "answer": "the answer is 2"}) + "\n", 2, "#### N"),
    (json.dumps({"question": "q?", "answer": "#### two"}) + "\n", 1, "#### N"),
    (json.dumps(["q?", "#### 2"]) + "\n", 1, "JSON object"),
    (GOOD + "\n\n" + GOOD[:-2] + "\xff\"}\n", 3, "not UTF-8"),
])
def test_load_jsonl_names_file_and_line(tmp_path, content, line, fragment):
    path = tmp_path / "broken.jsonl"
    path.write_bytes(content.encode("utf-8").replace("\xff".encode("utf-8"), b"\xff"))  # a byte that is not UTF-8
    with pytest.raises(UserError) as error:
        load_jsonl(path)
    message = str(error.value)
    assert f"broken.jsonl:{line}:" in message and fragment in message and "\n" not in message


def test_load_jsonl_empty_and_missing(tmp_path):
    with pytest.raises(UserError, match="empty.jsonl.*empty"):
        load_jsonl(_write(tmp_path, "empty.jsonl", "\n\n"))
    with pytest.raises(UserError, match="absent.jsonl: cannot read .no such file"):
        load_jsonl(tmp_path / "absent.jsonl")


def test_load_jsonl_reads_records(tmp_path):
    path = _write(tmp_path, "ok.jsonl", GOOD + "\n\n" + GOOD + "\n")
    assert load_jsonl(path) == [{"question": "q?", "answer": "1 + 1 = 2\n#### 2"}] * 2


@pytest.mark.skipif(not GSM8K_DIR.exists(), reason="GSM8K copy not present")
def test_real_gsm8k_loads_unchanged():
    for split, count in (("train", 7473), ("test", 1319)):
        path = GSM8K_DIR / f"{split}.jsonl"
        records = load_jsonl(path)
        assert len(records) == count
        assert records == [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_load_task_synth_and_errors(tmp_path):
    splits = load_task("synth", seed=5, n_train=100, n_val=10, n_test=20)
    assert [len(splits[k]) for k in ("train", "val", "test")] == [100, 10, 20]
    assert splits == load_task("synth", seed=5, n_train=100, n_val=10, n_test=20)
    with pytest.raises(UserError, match="unknown task 'gsm9k'; valid tasks: synth, gsm8k, aqua"):
        load_task("gsm9k")
    with pytest.raises(UserError, match="task gsm8k needs data_dir.*train.jsonl and test.jsonl"):
        load_task("gsm8k")
    with pytest.raises(UserError, match="task aqua needs data_dir.*dev.json and test.json.*got"):
        task_from_config({"dataset": "aqua", "data_dir": str(tmp_path / "absent")})
    with pytest.raises(UserError, match="test.jsonl: cannot read .no such file or directory."):
        _write(tmp_path, "train.jsonl", GOOD + "\n")
        load_task("gsm8k", data_dir=tmp_path, n_val=0)


def test_load_task_gsm8k_val_is_the_tail_of_train(tmp_path):
    rows = [json.dumps({"question": f"q{i}?", "answer": f"#### {i}"}) for i in range(10)]
    _write(tmp_path, "train.jsonl", "\n".join(rows) + "\n")
    _write(tmp_path, "test.jsonl", "\n".join(rows[:4]) + "\n")
    splits = load_task("gsm8k", data_dir=tmp_path, n_val=3)
    assert [r["question"] for r in splits["val"]] == ["q7?", "q8?", "q9?"]
    assert [r["question"] for r in splits["train"]] == [f"q{i}?" for i in range(7)]
    assert len(splits["test"]) == 4
    with pytest.raises(UserError, match="n_val"):
        load_task("gsm8k", data_dir=tmp_path, n_val=10)
