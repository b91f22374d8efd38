"""Tests for data/answers.py: extraction, equation checking, the ranking grade and degeneration."""

import json
import random
import time
from fractions import Fraction
from pathlib import Path

import pytest

from data.answers import (Soundness, check_equation, equation_soundness, evaluate_expression, extract_answer,
                          find_equations, grade, is_correct, is_degenerate)
from data.synth import make_problem

# ../shared/data beside the repository (or beside the worktree folder that holds it), when present
SHARED = next((p / "shared" / "data" for p in Path(__file__).resolve().parents if (p / "shared" / "data").is_dir()),
              Path("/nonexistent"))

NATALIA = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
           "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72")


@pytest.mark.parametrize("text, expected", [
    ("#### 72", "72"),
    ("####72", "72"),
    ("   ####   72  ", "72"),
    ("#### 1,080", "1080"),
    ("#### $1,080.", "1080"),
    ("#### -5", "-5"),
    ("#### $-5", "-5"),
    ("#### -$5", "-5"),
    ("#### 3.50", "3.5"),
    ("#### .5", "0.5"),
    ("#### 72.0", "72"),
    ("#### 072", "72"),
    ("#### 72 clips in all", "72"),
    ("steps\n#### 10\nmore text\n#### 12\ntrailing words", "12"),  # the last #### line wins
    ("The answer is 72", None),
    ("#### ", None),
    ("#### seventy-two", None),
    ("#### -$-5", None),
    ("", None),
    ("Answer is C.\n#### C", "C"),  # an option letter (AQuA)
    ("#### (E)", "E"),
    ("#### C) 42", "C"),
    ("#### F", None),
    ("#### c", None),
    ("#### Cat", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_is_correct_normalises_and_rejects_missing():
    assert is_correct("so\n#### 72.0", NATALIA)
    assert is_correct("#### 1,080", "#### 1080")
    assert not is_correct("#### 71", NATALIA)
    assert not is_correct("72 clips", NATALIA)          # no final line: always wrong
    assert not is_correct("#### 72", "no gold answer")  # unreadable gold: never right
    assert is_correct("so the answer is\n#### B", "rationale\n#### B")
    assert not is_correct("#### A", "rationale\n#### B") and not is_correct("#### 2", "#### B")


def test_find_equations_gsm8k_annotations_win_over_plain_text():
    assert find_equations(NATALIA) == [("48/2", "24"), ("48+24", "72")]
    text = "He earns 0.2 x 50 = $<<0.2*50=10>>10.\nTotal <<3+4*2=11>>11\n#### 11"
    assert find_equations(text) == [("0.2*50", "10"), ("3+4*2", "11")]


def test_find_equations_plain():
    text = ("The pens cost 3 * 4 = $12.\nShe pays 0.2 x 50 = $10 and 1,000 - 3 * (2 + 1) = 991.\n"
            "Each gets 10/3 = 3.33 and $3 + $4 = $7 apples.\n#### 7")
    assert find_equations(text) == [("3 * 4", "12"), ("0.2*50", "10"), ("1000 - 3 * (2 + 1)", "991"),
                                    ("10/3", "3.33"), ("3 + 4", "7")]
    # every '=' is an equation; a side that letters or symbols cut off is None (unchecked), never a fragment
    assert find_equations("She has 12 apples and x = 5.\n#### 5") == [(None, "5")]
    assert find_equations("Run:14(2)=28 chickens, so (2 + 3 = 5) and 4/5 * 1/4 = 1/5 = 20%") == [
        ("14(2)", "28"), ("2 + 3", "5"), ("4/5 * 1/4", "1/5"), ("1/5", "20%")]
    assert find_equations("X*2 - $40 = $250\nX + 10 = 20\n100/5 = 5A/5\nat 6:00+18 hours = 00:00") == [
        (None, "250"), (None, "20"), ("100/5", None), (None, None)]


@pytest.mark.parametrize("expr, expected", [
    ("48/2", Fraction(24)),
    ("0.2*50", Fraction(10)),
    ("3+4*2", Fraction(11)),
    ("(3+4)*2", Fraction(14)),
    ("12/60", Fraction(1, 5)),
    ("100-50-30-15", Fraction(5)),
    ("-3--2", Fraction(-1)),
    ("-(2+3)*2", Fraction(-10)),
    ("3 x 4 ÷ 6", Fraction(2)),
    ("1,080/2", Fraction(540)),
    ("560//10", Fraction(56)),      # Python floor division, as GSM8K's annotations write it
    ("7//2", Fraction(3)),
    ("75% * 80%", Fraction(3, 5)),  # % is hundredths
    ("28(2)-4", Fraction(52)),      # a product without a sign before a parenthesis
    ("(1/4)(160)", Fraction(40)),
    ("1 1/2", None),                # a mixed number, or two numbers? not read
    ("80 000", None),
    ("(3+4", None),
    ("3+", None),
    ("3 4", None),
    ("2**3", None),
    ("__import__('os')", None),
    ("", None),
])
def test_evaluate_expression(expr, expected):
    assert evaluate_expression(expr) == expected


def test_division_by_zero_is_readable_and_false():
    with pytest.raises(ZeroDivisionError):
        evaluate_expression("1/(2-2)")
    assert check_equation("4 / 0", "0") is False


@pytest.mark.parametrize("lhs, rhs, expected", [
    ("10 / 3", "3.33", True),      # rounded to the places shown
    ("2 / 3", "0.67", True),
    ("2 / 3", "0.6", False),       # 0.6 is not 2/3 rounded
    ("7 / 2", "3", False),         # integers must be exact
    ("1/3", "33.33%", True),
    ("3/4 * 100", "75%", True),    # a percentage as a unit
    ("7500/75%", "100", True),
    ("3/4", "75%", True),          # or as a number
    ("3/4", "70%", False),
    ("2.50 - 2.24", "26%", True),  # "26 cents" is read as hundredths
    (None, "5", None),
    ("3 / 4 * 2", "1 1/2", None),
])
def test_check_equation(lhs, rhs, expected):
    assert check_equation(lhs, rhs) is expected


def test_equation_soundness():
    assert equation_soundness(NATALIA) == Soundness(2, 0, 0)
    assert equation_soundness("Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\n#### 0.2") == (1, 0, 0)
    assert equation_soundness("3 + 4 = 8\n5 * 2 = 10\n#### 10") == (1, 1, 0)
    assert equation_soundness("3 + 4 = 8\n5 * 2 = 10\n#### 10").fraction == 0.5
    assert equation_soundness("4 / 0 = 0\n#### 0") == (0, 1, 0)
    # algebra is unchecked, not false; the fraction is over the checked equations
    algebra = "X*2 - $40 = $250.\nSo X = 290 / 2 = 145.\nAnd 2 + 2 = 5.\n#### 145"
    assert equation_soundness(algebra) == (1, 1, 2) and equation_soundness(algebra).fraction == 0.5
    # [ours] nothing to check: sound
    assert equation_soundness("no arithmetic at all\n#### 3") == (0, 0, 0)
    assert equation_soundness("no arithmetic at all\n#### 3").fraction == 1.0
    assert equation_soundness("so 5A = 100\n#### 20").fraction == 1.0


def test_grade_by_hand():
    gold = "#### 27"
    # correct answer, 2 of 2 equations true: 1 + 0.5 * 1
    assert grade("4 + 5 = 9\n3 * 9 = 27\n#### 27", gold) == 1.5
    # correct answer, 1 of 2 true: 1 + 0.5 * 0.5
    assert grade("4 + 5 = 10\n3 * 9 = 27\n#### 27", gold) == 1.25
    # wrong answer, 2 of 3 true: 0 + 0.5 * 2/3
    assert grade("3 * 4 = 12\n3 * 5 = 15\n12 + 15 = 28\n#### 28", gold) == pytest.approx(1 / 3)
    # right number but no final line: 0; no equation to check: sound, 0.5 [ours]
    assert grade("the answer is 27", gold) == 0.5
    # an unchecked equation changes nothing: 1 of 1 checked is true
    assert grade("3x = 27\n27 / 3 = 9\n#### 9", "#### 9") == 1.5
    # every correct chain outranks every wrong one
    assert grade("4 + 5 = 10\n#### 27", gold) == 1.0 > grade("4 + 5 = 9\n#### 26", gold) == 0.5


def test_reading_equations_takes_linear_time():
    start = time.perf_counter()
    for text in ("1 " * 20_000 + "a = 5", "1.5 " * 20_000 + "= 5", "7" * 20_000 + "a"):
        find_equations(text), evaluate_expression(text)
    assert time.perf_counter() - start < 2.0  # a backtracking regex takes minutes here


def test_every_built_in_equation_is_checked_and_a_wrong_one_caught():
    rng = random.Random(3)
    for _ in range(500):
        for chain in make_problem(rng).chains:
            steps = chain.count("\n")
            assert equation_soundness(chain) == (steps, 0, 0), chain
            # one reasoning line's result off by one: exactly that equation is false
            line = rng.randrange(steps)
            lines = chain.split("\n")
            head, result = lines[line].rsplit("= ", 1)
            digits = result.lstrip("$").split()[0].rstrip(".")
            lines[line] = f"{head}= {result.replace(digits, str(int(digits) + 1), 1)}"
            assert equation_soundness("\n".join(lines)) == (steps - 1, 1, 0), lines[line]


@pytest.mark.skipif(not (SHARED / "gsm8k").is_dir(), reason="GSM8K copy not present")
def test_every_gsm8k_reference_chain_is_sound():
    """GSM8K's own reference chains never grade as wrong: every equation is true or unchecked (algebra, mixed
    numbers, "80 000", clock times), and nearly all are checked."""
    totals = Soundness(0, 0, 0)
    for split in ("train", "test"):
        for number, line in enumerate((SHARED / "gsm8k" / f"{split}.jsonl").read_text().splitlines(), start=1):
            answer = json.loads(line)["answer"]
            soundness = equation_soundness(answer)
            assert soundness.false == 0, f"{split}.jsonl:{number}: {find_equations(answer)}"
            assert grade(answer, answer) == 1.5
            totals = Soundness(*(a + b for a, b in zip(totals, soundness)))
    assert totals.true > 28_000 and totals.unchecked < 400  # 28,103 and 323 today


def test_is_degenerate():
    normal = ("The pens cost 3 * 4 = $12.\nThe pads cost 5 * 2 = $10.\nShe spends 12 + 10 = $22 in total.\n#### 22")
    assert not is_degenerate(normal)
    assert not is_degenerate(NATALIA)
    assert is_degenerate("The pens cost 3 * 4 = $12.")  # no final answer
    loop = "She spends 12 + 10 = $22 in total. " * 3
    assert is_degenerate(f"The pens cost 3 * 4 = $12.\n{loop}\n#### 22")
    assert is_degenerate("#### 6\n" + "5 " * 12)                 # a 1-word loop, 12 words long
    assert not is_degenerate("#### 6\n" + "5 " * 11)             # 11 words: under the rule
    assert is_degenerate("a b c d a b c d a b c d\n#### 1")      # a 4-gram three times in a row
    assert not is_degenerate("a b c d a b c d e\n#### 1")        # twice only
    assert is_degenerate("#### 3\n#### 3\n#### 3")               # one line dominates
    assert not is_degenerate("x = 1\nx = 1\ny = 2\nz = 3\nw = 4\n#### 4")  # a repeat, not dominant
