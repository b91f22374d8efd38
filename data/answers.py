"""Answer extraction and grading: the one place that decides whether a chain of thought is right.

Labelling candidates, grading them for ranking feedback and measuring accuracy all call this module, so
the three can never disagree. The format is GSM8K's: reasoning lines, then a last line `#### N`.

- extract_answer / is_correct: final-answer exact match (PAPER.md section 3, step 2 [paper]).
- find_equations / evaluate_expression / equation_soundness / grade: the ranking grade
  r = 1[correct] + 0.5 * soundness (PAPER.md section 5 [ours]).
- is_degenerate: the degeneration-rate metric (PAPER.md section 7 [ours]).
"""

import re
from collections import Counter
from decimal import Decimal, InvalidOperation
from fractions import Fraction

# A number as written in a COT: thousands commas (1,080), decimals (0.25, .25).
_NUMBER = r"(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"

# `#### N` may carry a dollar sign on either side of a minus and any trailing text ("#### 72.", "#### $5 each").
_FINAL_LINE = re.compile(rf"####\s*(-?)\s*\$?\s*(-?)\s*({_NUMBER})")

_ANNOTATION = re.compile(r"<<([^<>]*)>>")

# A plain equation `a op b [op c ...] = c`; operands may be parenthesised and carry `$`.
_OPERAND = rf"(?:\(\s*)*\$?{_NUMBER}(?:\s*\))*"
_OPERATOR = r"[-+*/x×÷]"
_PLAIN_EQUATION = re.compile(
    rf"(?<![\w.,$])(-?{_OPERAND}(?:\s*{_OPERATOR}\s*{_OPERAND})+)\s*=\s*(-?\s*\$?\s*-?\s*{_NUMBER})"
)

_TOKEN = re.compile(rf"\s*(?:({_NUMBER})|([-+*/x×÷()]))")


def _canonical_number(text):
    """'072', '72.0' and '72' all become '72'; '0.50' becomes '0.5'. None if not a number."""
    try:
        value = Decimal(text.replace(",", "").replace("$", ""))
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def extract_answer(text):
    """The final answer of a COT as a canonical string, or None (None is always graded wrong).

    Reads the LAST line that starts with `####` (leading spaces allowed) and the number right after it.
    Commas, `$` and trailing text are dropped; negatives and decimals are kept.
    """
    final_lines = [line for line in text.splitlines() if line.lstrip().startswith("####")]
    if not final_lines:
        return None
    match = _FINAL_LINE.match(final_lines[-1].lstrip())
    if match is None:
        return None
    sign_before, sign_after, digits = match.groups()
    if sign_before and sign_after:
        return None
    return _canonical_number((sign_before or sign_after) + digits)


def is_correct(completion, gold_answer_text):
    """True when both texts have a final answer and the answers are equal numbers."""
    gold = extract_answer(gold_answer_text)
    return gold is not None and extract_answer(completion) == gold


def _clean(expression):
    return re.sub(r"\s+", " ", expression.replace("$", "").replace(",", "")).strip()


def find_equations(text):
    """The (lhs, rhs) equations a COT states, with `$`, commas and extra spaces removed.

    GSM8K's calculator annotations `<<48/2=24>>` when the text has any; otherwise plain equations such as
    `3 * 4 = 12`, `0.2 x 50 = $10` or `100 - 50 - 30 = 20` (x, × and ÷ are kept; evaluate_expression reads them).
    Annotations win because GSM8K writes each equation twice ("48/2 = <<48/2=24>>24").
    """
    annotations = [a for a in _ANNOTATION.findall(text) if "=" in a]
    if annotations:
        return [tuple(_clean(side) for side in a.rsplit("=", 1)) for a in annotations]
    return [(_clean(lhs), _clean(rhs).replace(" ", "")) for lhs, rhs in _PLAIN_EQUATION.findall(text)]


def evaluate_expression(expr):
    """Exact value of an arithmetic expression (numbers, + - * / x × ÷, parentheses, unary minus) or None.

    A small recursive-descent parser, never eval. None on any other character, on malformed input and on
    division by zero.
    """
    tokens, position = [], 0
    expr = expr.replace("$", "").strip()
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        if match is None:
            return None
        number, operator = match.groups()
        if number:
            tokens.append(Fraction(number.replace(",", "")))
        else:
            tokens.append({"x": "*", "×": "*", "÷": "/"}.get(operator, operator))
        position = match.end()
    tokens.append(None)  # end marker, so peeking never runs off the list
    index = 0

    def take():
        nonlocal index
        token = tokens[index]
        index += token is not None  # stay on the end marker
        return token

    def factor():  # factor := ('+' | '-')* (number | '(' sum ')')
        sign = 1
        while tokens[index] in ("+", "-"):
            sign = -sign if take() == "-" else sign
        token = take()
        if isinstance(token, Fraction):
            return sign * token
        if token == "(":
            value = sum_()
            if value is None or take() != ")":
                return None
            return sign * value
        return None

    def product():  # product := factor (('*' | '/') factor)*
        value = factor()
        while value is not None and tokens[index] in ("*", "/"):
            operator, right = take(), factor()
            if right is None or (operator == "/" and right == 0):
                return None
            value = value * right if operator == "*" else value / right
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


def _equation_holds(lhs, rhs):
    value = evaluate_expression(lhs)
    stated = evaluate_expression(rhs)
    if value is None or stated is None:
        return False
    if value == stated:
        return True
    # A decimal result may be rounded to the places it is written with (10/3 = 3.33); an integer must be exact.
    places = len(rhs.split(".")[1]) if "." in rhs else 0
    return places > 0 and abs(value - stated) <= Fraction(1, 2 * 10**places)


def equation_soundness(text):
    """Fraction of the COT's equations that are arithmetically true; 0.0 when it states none [ours]."""
    equations = find_equations(text)
    if not equations:
        return 0.0
    return sum(_equation_holds(lhs, rhs) for lhs, rhs in equations) / len(equations)


def grade(completion, gold_answer_text):
    """Ranking grade of a COT [ours, PAPER.md section 5]:

        r = 1[final answer correct] + 0.5 * (fraction of its equations that are true)

    so every correct chain (r >= 1) ranks above every wrong one (r <= 0.5), and within each group sounder
    arithmetic ranks higher.
    """
    return float(is_correct(completion, gold_answer_text)) + 0.5 * equation_soundness(completion)


def is_degenerate(text, min_ngram=4, repeats=3):
    """True when a COT shows the collapse the alignment constraint exists to prevent [ours, PAPER.md section 7].

    The exact rule; any one of:
    1. no final answer (extract_answer is None);
    2. some run of n >= min_ngram whitespace-separated words is repeated `repeats` or more times back to
       back anywhere in the text (a loop; "5 5 5 ..." counts once it is 12 words long);
    3. one non-empty line occurs `repeats` or more times and makes up at least half of the non-empty lines.
    """
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
