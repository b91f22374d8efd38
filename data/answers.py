"""Answer extraction and grading: the one place that decides whether a chain of thought is right, so that labelling
candidates, grading them and measuring accuracy never disagree. The format is GSM8K's: reasoning lines, then a last
line `#### N`, where N is a number or, for a multiple-choice task (AQuA), the letter of an option, A to E.

- extract_answer / is_correct: final-answer exact match (docs/method.md section 3, step 2 [paper]).
- find_equations / evaluate_expression / check_equation / equation_soundness / grade: the ranking grade
  (docs/method.md section 5.2 [ours]).
- is_degenerate: the degeneration rate (docs/method.md section 8 [ours]).
"""

import re
from collections import Counter
from decimal import Decimal
from fractions import Fraction
from typing import NamedTuple

# A number as written in a COT: thousands commas (1,080), decimals (0.25, .25).
_NUMBER = r"(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"

# `#### N` may carry a dollar sign on either side of a minus and any trailing text ("#### 72.", "#### $5 each");
# `#### C` or `#### (C)` names an option.
_FINAL_LINE = re.compile(rf"####\s*(-?)\s*\$?\s*(-?)\s*({_NUMBER})")
_FINAL_LETTER = re.compile(r"####\s*\(?([A-E])\b")
_ANNOTATION = re.compile(r"<<([^<>]*)>>")
# What an equation's sides are made of: numbers, `$`, `%`, operators, parentheses, spaces; '.' and ',' only
# inside a number, so a full stop ends a side. Letters end it too: `x` is a variable unless _TIMES makes it `*`.
_ARITHMETIC = r"[\d$%()+\-*/×÷ \t]"
_RIGHT = re.compile(rf"(?:{_ARITHMETIC}|[.,](?=\d))*")
_LEFT = re.compile(rf"(?:{_ARITHMETIC}|(?<=\d)[.,])*")  # the same, read backwards from the end of a text
_TIMES = re.compile(r"(?<=[\d)%]) ?x ?(?=[\d$(.])")  # "0.2 x 50" is a product; "2x", "x/2" are algebra
_TOUCH = ":;,.!?\"'"  # punctuation that may touch a side (not between digits: 10:30); anything else cuts it off
_CENTS = re.compile(r"(?<=\d) ?(?:cents\b|¢)")  # hundredths of a dollar, read like "%": "$2.50 - $2.24 = 26 cents"
_TOKEN = re.compile(rf"\s*(?:({_NUMBER})|(//|[-+*/x×÷()%]))")


def _canonical_number(text):
    """'072', '72.0' and '72' all become '72'; '0.50' becomes '0.5' (text is a number _FINAL_LINE matched)."""
    value = Decimal(text.replace(",", ""))
    return str(int(value)) if value == value.to_integral_value() else format(value.normalize(), "f")


def extract_answer(text):
    """The final answer of a COT as a canonical string, or None (always graded wrong): the number right after `####`
    on the LAST line that starts with it (commas, `$` and trailing text dropped; negatives and decimals kept), or
    else an option letter A-E."""
    final_lines = [line.lstrip() for line in text.splitlines() if line.lstrip().startswith("####")]
    if not final_lines:
        return None
    match = _FINAL_LINE.match(final_lines[-1])
    if match is None:
        letter = _FINAL_LETTER.match(final_lines[-1])
        return letter and letter.group(1)
    sign_before, sign_after, digits = match.groups()
    return None if sign_before and sign_after else _canonical_number((sign_before or sign_after) + digits)


def is_correct(completion, gold_answer_text):
    """True when both texts have a final answer and the answers are equal (numbers, or option letters)."""
    gold = extract_answer(gold_answer_text)
    return gold is not None and extract_answer(completion) == gold


def _clean(expression):
    return re.sub(r"\s+", " ", expression.replace("$", "").replace(",", "")).strip()


def _side(text, left):
    """The arithmetic that ends (left) or starts `text` next to an '=', or None when it is cut off, so that
    algebra and units are never checked as if the readable part were the whole side: a letter or symbol
    touches it (`X*2 - 40`, `5A`, `$12/hour`) or it opens with an operator (`X + 10`)."""
    cut = len(text) - _LEFT.match(text[::-1]).end() if left else _RIGHT.match(text).end()
    side, rest = (text[cut:], text[:cut]) if left else (text[:cut], text[cut:])
    edge, touching, beyond = (side[:1], rest[-1:], rest[-2:-1]) if left else (side[-1:], rest[:1], rest[1:2])
    if not re.search(r"\d", side) or edge.strip() and touching and (touching not in _TOUCH or beyond.isdigit()):
        return None
    side = side.strip()
    if left and (side[0] in "+*/×÷%)" or side[0] == "-" and rest.rstrip()[-1:].isalnum()):
        return None
    while left and side[0] == "(" and side.count("(") > side.count(")"):  # "(so 3 + 4 = 7)"
        side = side[1:]
    while not left and side[-1] == ")" and side.count(")") > side.count("("):
        side = side[:-1]
    return _clean(side)


def find_equations(text):
    """The (lhs, rhs) equations a COT states, `$`, commas and extra spaces removed; a side that cannot be read
    reliably is None (the equation is then unchecked). GSM8K's calculator annotations `<<48/2=24>>` when the
    text has any (GSM8K writes each equation twice: "48/2 = <<48/2=24>>24"); otherwise every '=' is one, between
    the arithmetic either side of it: `3 * 4 = $12`, `14(2)=28`, `4/5 * 1/4 = 1/5 = 20%` (two equations)."""
    annotations = [a for a in _ANNOTATION.findall(text) if "=" in a]
    if annotations:
        return [tuple(_clean(side) for side in a.rsplit("=", 1)) for a in annotations]
    equations = []
    for line in text.splitlines():
        line = line.replace("–", "-").replace("−", "-")  # dashes as minus signs (AQuA's rationales)
        parts = _CENTS.sub("%", _TIMES.sub("*", line)).split("=")
        equations += [(_side(lhs, True), _side(rhs, False)) for lhs, rhs in zip(parts, parts[1:])]
    return equations


def evaluate_expression(expr):
    """Exact value of an arithmetic expression, or None when it cannot be read: numbers, + - * / x × ÷, `//` (floor
    division, as in Python-written annotations), `%` (hundredths), parentheses, unary minus, and a product written
    without a sign before a parenthesis: `14(2)`. A small recursive-descent parser, never eval. A division by zero
    raises ZeroDivisionError: readable, but no value."""
    expr = expr.replace("$", "").rstrip()
    matches = list(_TOKEN.finditer(expr))
    if "".join(match.group() for match in matches) != expr:  # something between the tokens is not arithmetic
        return None
    tokens = [Fraction(number.replace(",", "")) if number else {"x": "*", "×": "*", "÷": "/"}.get(sign, sign)
              for number, sign in (match.groups() for match in matches)] + [None]  # None ends the list
    index = 0
    index = 0

    def take():
        nonlocal index
        token = tokens[index]
        index += token is not None  # stay on the end marker
        return token

    def factor():  # factor := ('+' | '-')* (number | '(' sum ')') '%'*
        sign = 1
        while tokens[index] in ("+", "-"):
            sign = -sign if take() == "-" else sign
        token = take()
        if token == "(":
            token = sum_()
            if token is None or take() != ")":
                return None
        if not isinstance(token, Fraction):
            return None
        while tokens[index] == "%":
            take()
            token /= 100
        return sign * token

    def product():  # product := factor (('*' | '/' | '//' | before '(') factor)*
        value = factor()
        while value is not None and tokens[index] in ("*", "/", "//", "("):
            operator = take() if tokens[index] != "(" else "*"
            right = factor()
            if right is None:
                return None
            value = value * right if operator == "*" else value / right if operator == "/" else Fraction(value // right)
        return value

    def sum_():  # sum := product (('+' | '-') product)*
        value = product()
        while value is not None and tokens[index] in ("+", "-"):
            operator, right = take(), product()
            if right is None:
                return None
            value = value + right if operator == "+" else value - right
        return value

    value = sum_()
    return value if tokens[index] is None else None


def check_equation(lhs, rhs):
    """True or False for an equation that can be read; None (unchecked) when a side cannot be [ours]. A right side
    written with decimals may be rounded to them (10/3 = 3.33); an integer must be exact. A percentage may be a
    number (3/4 = 75%) or a unit (3/4 * 100 = 75%, $7500/75% = $100): either reading holds."""
    if lhs is None or rhs is None:
        return None
    readings = [(lhs, rhs)] + ([(lhs.replace("%", ""), rhs.replace("%", ""))] if "%" in lhs + rhs else [])
    for left, right in readings:
        try:
            value, stated = evaluate_expression(left), evaluate_expression(right)
        except ZeroDivisionError:
            return False
        if value is None or stated is None:
            return None
        decimals = re.fullmatch(r"-?\d*\.(\d+)(%?)", right)
        tolerance = Fraction(1, 2 * 10 ** len(decimals[1]) * (100 if decimals[2] else 1)) if decimals else 0
        if abs(value - stated) <= tolerance:
            return True
    return False


class Soundness(NamedTuple):
    true: int       # equations that hold
    false: int      # equations that do not
    unchecked: int  # equations that cannot be read reliably (algebra, mixed numbers, "80 000", units)

    @property
    def fraction(self):
        """The share of the checked equations that hold; 1.0 when none can be checked [ours]."""
        checked = self.true + self.false
        return self.true / checked if checked else 1.0


def equation_soundness(text):
    """How many of the COT's equations hold, do not hold, or cannot be checked (find_equations, check_equation)."""
    results = [check_equation(lhs, rhs) for lhs, rhs in find_equations(text)]
    return Soundness(results.count(True), results.count(False), results.count(None))


def grade(completion, gold_answer_text):
    """Ranking grade r = 1[final answer correct] + 0.5 * (the share of its checked equations that hold) [ours,
    docs/method.md section 5.2]: every correct chain (r >= 1) ranks above every wrong one (r <= 0.5). Unreadable
    equations are left out of the share, not counted false; with none checkable it is 1."""
    return float(is_correct(completion, gold_answer_text)) + 0.5 * equation_soundness(completion).fraction


def is_degenerate(text, min_ngram=4, repeats=3):
    """True when a COT shows the collapse the alignment constraint exists to prevent [ours, docs/method.md section 8].
    The exact rule, any one of:
    1. no final answer (extract_answer is None);
    2. some run of n >= min_ngram whitespace-separated words is repeated `repeats` or more times back to
       back anywhere in the text (a loop; "5 5 5 ..." counts once it is 12 words long);
    3. one non-empty line occurs `repeats` or more times and makes up at least half of the non-empty lines."""
    if extract_answer(text) is None:
        return True
    words = text.split()
    for n in range(min_ngram, len(words) // repeats + 1):
        run = 0  # consecutive positions i with words[i] == words[i + n]
        for i in range(len(words) - n):
            run = run + 1 if words[i] == words[i + n] else 0
            if run >= (repeats - 1) * n:
                return True
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    count = Counter(lines).most_common(1)[0][1]
    return count >= repeats and 2 * count >= len(lines)
