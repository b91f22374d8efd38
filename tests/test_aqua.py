"""AQuA-RAT as a task (data/dataset.py load_aqua): parsing, prompts, letter answers and grading on a slice of
../shared/data/aqua, malformed files, and (after the trainers' redesign is merged) VFT, candidates, alignment
and evaluation end to end."""

import json
from pathlib import Path

import pytest

from data.answers import equation_soundness, extract_answer, grade, is_correct
from data.dataset import UserError, format_prompt, load_aqua, load_task

# ../shared/data beside the repository (or beside the worktree folder that holds it), when present
SHARED = next((p / "shared" / "data" for p in Path(__file__).resolve().parents if (p / "shared" / "data").is_dir()),
              Path("/nonexistent"))
AQUA = SHARED / "aqua"
needs_aqua = pytest.mark.skipif(not (AQUA / "dev.json").is_file(), reason="AQuA copy not present")


def write_slice(directory, n=40):
    """dev.json and test.json holding the first n records of AQuA's; returns the raw dev records."""
    directory.mkdir(exist_ok=True)
    for name in ("dev.json", "test.json"):
        lines = (AQUA / name).read_text(encoding="utf-8").splitlines()[:n]
        (directory / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [json.loads(line) for line in (directory / "dev.json").read_text(encoding="utf-8").splitlines()]


@needs_aqua
def test_aqua_slice_splits_prompts_and_answers(tmp_path):
    raw = write_slice(tmp_path / "aqua")
    task = load_task("aqua", data_dir=tmp_path / "aqua")
    assert [len(task[k]) for k in ("train", "val", "test")] == [36, 4, 40]  # val: the last tenth of dev.json
    assert task["val"][-1]["question"].startswith(raw[-1]["question"].strip())
    first, record = task["train"][0], raw[0]
    assert set(first) == {"question", "answer"}
    prompt = format_prompt(first["question"])
    assert prompt.startswith(f"Question: {record['question']}\nA)") and prompt.endswith("\nE)10\nAnswer:\n")
    assert all(f"\n{option}\n" in prompt for option in record["options"])
    assert first["answer"] == f"{record['rationale'].strip()}\n#### {record['correct']}"
    for example, record in zip(task["train"] + task["val"], raw):
        assert extract_answer(example["answer"]) == record["correct"]
        assert is_correct(f"some reasoning\n#### {record['correct']}", example["answer"])
        assert not is_correct("#### " + "ABCDE".replace(record["correct"], "")[0], example["answer"])
        assert not is_correct("the answer is " + record["correct"], example["answer"])  # no final line
        assert grade(example["answer"], example["answer"]) >= 1.0


@needs_aqua
def test_all_of_aqua_loads():
    task = load_task("aqua", data_dir=AQUA)
    assert [len(task[k]) for k in ("train", "val", "test")] == [229, 25, 254]
    answers = [extract_answer(ex["answer"]) for split in task.values() for ex in split]
    assert set(answers) == set("ABCDE")
    # a rationale's checkable arithmetic mostly holds; a wrong letter always ranks below the right one
    checked = [equation_soundness(ex["answer"]) for ex in task["test"]]
    assert sum(s.true for s in checked) > sum(s.false for s in checked)
    example = task["test"][0]
    wrong = example["answer"].rsplit("#### ", 1)[0] + "#### " + ("A" if example["answer"][-1] != "A" else "B")
    assert grade(wrong, example["answer"]) <= 0.5 < 1.0 <= grade(example["answer"], example["answer"])


GOOD = {"question": "What is 2 + 3?", "options": ["A)4", "B)5", "C)6", "D)7", "E)8"], "rationale": "2 + 3 = 5",
        "correct": "B"}


@pytest.mark.parametrize("change, fragment", [
    ({"options": ["A)4", "B)5"]}, "five strings"),
    ({"options": "A)4 B)5 C)6 D)7 E)8"}, "five strings"),
    ({"options": ["4", "5", "6", "7", "8"]}, "five strings"),
    ({"correct": "F"}, "letter A to E"),
    ({"correct": 2}, "'correct' must be a string"),
    ({"rationale": None}, "'rationale' must be a string"),
])
def test_malformed_aqua_names_file_and_line(tmp_path, change, fragment):
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps({**GOOD, **change}) + "\n")
    with pytest.raises(UserError) as error:
        load_aqua(path)
    message = str(error.value)
    assert "dev.json:2:" in message and fragment in message and "\n" not in message
    missing = {k: v for k, v in GOOD.items() if k != "options"}
    path.write_text(json.dumps(missing) + "\n")
    with pytest.raises(UserError, match="dev.json:1: missing key 'options'"):
        load_aqua(path)


def test_aqua_needs_both_files(tmp_path):
    (tmp_path / "dev.json").write_text(json.dumps(GOOD) + "\n")
    with pytest.raises(UserError, match="test.json: cannot read .no such file"):
        load_task("aqua", data_dir=tmp_path)
    (tmp_path / "test.json").write_text(json.dumps(GOOD) + "\n")
    with pytest.raises(UserError, match="n_val=1 must be at least 0 and below the 1 training records"):
        load_task("aqua", data_dir=tmp_path, n_val=1)
    assert load_task("aqua", data_dir=tmp_path)["train"][0]["answer"] == "2 + 3 = 5\n#### B"


@needs_aqua
def test_aqua_end_to_end(tmp_path):
    """END TO END, for the lead to finish after merging the trainers' redesign (the config field names below are
    main's before it; fix them if they moved): --dataset=aqua through VFT, candidates, alignment and evaluation
    on a 40-example slice, with a tiny fresh model over the committed tokenizer."""
    import candidates as cands
    import evaluate
    import train_align
    import train_sft
    from checkpoint import find_checkpoint
    from data.dataset import run_task

    write_slice(tmp_path / "aqua")
    vft = train_sft.Config(dataset="aqua", data_dir=str(tmp_path / "aqua"), n_layer=1, n_head=2, n_embd=32,
                           block_size=768, batch_size=4, max_steps=3, warmup_steps=1, log_every=1, eval_every=0,
                           eval_examples=4, save_every=3, test_questions=2, max_new_tokens=8,
                           out_dir=str(tmp_path / "vft"))
    history = train_sft.train(vft)
    assert len(history["train"]) == 3 and 0 <= history["test"]["accuracy"] <= 1
    groups, header = cands.build(cands.Config(ckpt=str(tmp_path / "vft"), n_questions=4, k=2, max_new_tokens=8))
    assert len(groups) == 4 and header["config"]["ckpt"] == str(tmp_path / "vft")
    gold = [c for g in groups for c in g["candidates"] if c.get("gold")]
    assert gold and all(c["correct"] and c["grade"] >= 1.0 for c in gold)  # the rationale + "#### X" is right
    align = train_align.train(train_align.Config(loss="aft_rank", vft=str(tmp_path / "vft"), batch_size=2,
                                                 max_steps=2, log_every=1, test_questions=2, k=2, k_questions=2,
                                                 max_new_tokens=8, out_dir=str(tmp_path / "align")))
    assert len(align["train"]) == 2
    metrics = evaluate.run(evaluate.Config(ckpt=str(tmp_path / "align"), n_questions=2, k=2, k_questions=2,
                                           max_new_tokens=8))
    assert 0 <= metrics["t_acc"] <= 1 and metrics["gold_ppl"] > 1
    # the aligned run records AQuA as its task, so evaluation asked AQuA's test questions, options included
    first = json.loads((tmp_path / "aqua" / "test.json").read_text().splitlines()[0])
    test = run_task(find_checkpoint(tmp_path / "align"))["test"]
    assert len(test) == 40 and test[0]["question"].endswith("\n" + first["options"][-1])
