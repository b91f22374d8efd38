"""Tests for data/answers.py: extraction, equation checking, the ranking grade and degeneration."""

from fractions import Fraction

import pytest

from data.answers import (equation_soundness, evaluate_expression, extract_answer, find_equations, grade,
                          is_correct, is_degenerate)

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
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_is_correct_normalises_and_rejects_missing():
    assert is_correct("so\n#### 72.0", NATALIA)
    assert is_correct("#### 1,080", "#### 1080")
    assert not is_correct("#### 71", NATALIA)
    assert not is_correct("72 clips", NATALIA)          # no final line: always wrong
    assert not is_correct("#### 72", "no gold answer")  # unreadable gold: never right


def test_find_equations_gsm8k_annotations_win_over_plain_text():
    assert find_equations(NATALIA) == [("48/2", "24"), ("48+24", "72")]
    text = "He earns 0.2 x 50 = $<<0.2*50=10>>10.\nTotal <<3+4*2=11>>11\n#### 11"
    assert find_equations(text) == [("0.2*50", "10"), ("3+4*2", "11")]


def test_find_equations_plain():
    text = ("The pens cost 3 * 4 = $12.\nShe pays 0.2 x 50 = $10 and 1,000 - 3 * (2 + 1) = 991.\n"
            "Each gets 10/3 = 3.33 and $3 + $4 = $7 apples.\n#### 7")
    assert find_equations(text) == [("3 * 4", "12"), ("0.2 x 50", "10"), ("1000 - 3 * (2 + 1)", "991"),
                                    ("10/3", "3.33"), ("3 + 4", "7")]
    assert find_equations("She has 12 apples and x = 5.\n#### 5") == []


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
    ("2/0", None),
    ("1/(2-2)", None),
    ("(3+4", None),
    ("3+", None),
    ("3 4", None),
    ("2**3", None),
    ("__import__('os')", None),
    ("", None),
])
def test_evaluate_expression(expr, expected):
    assert evaluate_expression(expr) == expected


def test_equation_soundness():
    assert equation_soundness(NATALIA) == 1.0
    assert equation_soundness("Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\n#### 0.2") == 1.0
    assert equation_soundness("3 + 4 = 8\n5 * 2 = 10\n#### 10") == 0.5
    assert equation_soundness("10 / 3 = 3.33\n2 / 3 = 0.67\n#### 1") == 1.0  # rounded to the places shown
    assert equation_soundness("10 / 3 = 3.3\n2 / 3 = 0.6\n#### 1") == 0.5    # 0.6 is not 2/3 rounded
    assert equation_soundness("7 / 2 = 3\n#### 3") == 0.0                    # integers must be exact
    assert equation_soundness("4 / 0 = 0\n#### 0") == 0.0
    assert equation_soundness("no arithmetic at all\n#### 3") == 0.0         # [ours] no equations: 0


def test_grade_by_hand():
    gold = "#### 27"
    # correct answer, 2 of 2 equations true: 1 + 0.5 * 1
    assert grade("4 + 5 = 9\n3 * 9 = 27\n#### 27", gold) == 1.5
    # correct answer, 1 of 2 true: 1 + 0.5 * 0.5
    assert grade("4 + 5 = 10\n3 * 9 = 27\n#### 27", gold) == 1.25
    # wrong answer, 2 of 3 true: 0 + 0.5 * 2/3
    assert grade("3 * 4 = 12\n3 * 5 = 15\n12 + 15 = 28\n#### 28", gold) == pytest.approx(1 / 3)
    # right number but no final line: 0, and no equations: 0
    assert grade("the answer is 27", gold) == 0.0
    # every correct chain outranks every wrong one
    assert grade("#### 27", gold) > grade("4 + 5 = 9\n#### 26", gold)


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
