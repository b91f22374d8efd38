"""The built-in reasoning task: GSM8K-style arithmetic word problems with more than one valid chain of thought.

Each template writes a question and every chain of thought it knows for it. A chain is a few lines, one
reasoning step each, every step carrying its equation as `a op b = c` (integers only; a division is always
exact), then the GSM8K final line `#### N`. A problem usually admits several chains: independent sub-results
in either order (Monday's output, then Tuesday's) and equivalent decompositions (3 * 4 + 3 * 5 against 4 + 5 = 9,
3 * 9 = 27).

As in GSM8K, the training reference is ONE of those chains: the canonical one (the order the question
tells the story in) with probability `p_canonical`, otherwise one of the others, uniformly. So a model
fine-tuned on the references sees the alternatives rarely and tends to score them below the canonical
chain although they are just as correct: the assessment misalignment that AFT corrects (docs/method.md section 1).

Everything is drawn from one random.Random, so a seed fixes the whole dataset.
"""

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Difficulty:
    min_steps: int = 2        # fewest reasoning lines a chain may have (chains outside the range are dropped)
    max_steps: int = 4        # most reasoning lines a chain may have
    max_factor: int = 12      # largest multiplier, divisor, price or count a question states
    max_number: int = 40      # largest amount a question states that is only added or subtracted (ages, spending)
    max_result: int = 999     # cap on every intermediate and final result
    p_canonical: float = 0.8  # chance that the reference chain is the canonical one; else another, uniformly

    def __post_init__(self):  # which rule is broken: a wrong step range names train_sft.py's flags for it
        if not 1 <= self.min_steps <= self.max_steps:
            raise ValueError(f"need 1 <= min_steps <= max_steps (--min_chain_steps, --max_chain_steps): {self}")
        if not (self.max_factor >= 2 and self.max_number >= 5 and self.max_result >= 10 and 0 <= self.p_canonical <= 1):
            raise ValueError(f"need max_factor >= 2, max_number >= 5, max_result >= 10, 0 <= p_canonical <= 1: {self}")


@dataclass
class Problem:
    question: str             # the word problem
    chains: list[str]         # every valid chain the template knows, canonical first, each ending in `#### N`
    answer: str               # the reference chain, one of `chains`
    final: int                # the final answer N


@dataclass(frozen=True)
class Step:
    key: str                  # name later steps use to depend on this one
    line: str                 # the sentence, with its equation
    needs: tuple = ()         # keys of the steps whose results this line uses


def _orders(steps, done=()):
    """All orders of `steps` in which each step comes after the steps it needs; the listed order first."""
    if len(done) == len(steps):
        return [list(done)]
    keys = {step.key for step in done}
    return [order for step in steps if step.key not in keys and keys.issuperset(step.needs)
            for order in _orders(steps, done + (step,))]


NAMES = [("Natalia", "she"), ("James", "he"), ("Maria", "she"), ("Tom", "he"), ("Lily", "she"), ("Omar", "he"),
         ("Priya", "she"), ("Carlos", "he"), ("Mei", "she"), ("Jamal", "he"), ("Sofia", "she"), ("Ben", "he"),
         ("Aisha", "she"), ("Leo", "he"), ("Nora", "she"), ("Ravi", "he"), ("Emma", "she"), ("Sam", "he"),
         ("Grace", "she"), ("Diego", "he"), ("Hana", "she"), ("Kofi", "he"), ("Zoe", "she"), ("Marco", "he")]
POSSESSIVE = {"he": "his", "she": "her", "it": "its"}
GOODS = ["notebooks", "pens", "apples", "toy cars", "cupcakes", "shirts", "books", "candles", "mugs", "tickets"]
FRUITS = ["apples", "oranges", "strawberries", "plums", "peaches", "lemons", "cherries", "pears"]
PURCHASES = ["game", "book", "scarf", "ticket", "puzzle", "lamp", "backpack", "kite", "watch", "hat"]
STOCK = ["pens", "pencils", "markers", "cans of soup", "bottles of juice", "bars of soap", "light bulbs"]
# (subject, pronoun, verb, things, thing, participle)
WORKERS = [("A machine", "it", "makes", "toys", "toy", "made"),
           ("A bakery", "it", "bakes", "cakes", "cake", "baked"),
           ("A workshop", "it", "builds", "chairs", "chair", "built"),
           ("A printer", "it", "prints", "posters", "poster", "printed")]
# (place, things)
CONTAINERS = [("shelf", "books"), ("jar", "marbles"), ("box", "crayons"), ("basket", "eggs"), ("tray", "cookies")]
# (leader, pronoun, groups, members, gift)
LEADERS = [("A teacher", "she", "groups", "students", "stickers"),
           ("A coach", "he", "teams", "players", "water bottles"),
           ("A camp leader", "she", "tents", "campers", "marshmallows")]


def _fits(d, *values):
    return all(0 < v <= d.max_result for v in values)


def _shopping(rng, d):
    """Two kinds of goods. Same price: a*p + b*p or (a+b)*p. Different prices: the two costs in either
    order. With a budget: subtract the total, or each cost in turn."""
    (name, he), item1, item2 = rng.choice(NAMES), *rng.sample(GOODS, 2)
    a, b, p = rng.randint(2, d.max_factor), rng.randint(2, d.max_factor), rng.randint(2, d.max_factor)
    same_price = rng.random() < 0.5
    q = p if same_price else rng.randint(2, d.max_factor)
    x, y = a * p, b * q
    t = x + y
    if not _fits(d, t):
        return None
    cost1 = Step("x", f"The {item1} cost {a} * {p} = ${x}.")
    cost2 = Step("y", f"The {item2} cost {b} * {q} = ${y}.")
    decompositions = [[cost1, cost2, Step("t", f"{name} spends {x} + {y} = ${t} in total.", ("x", "y"))]]
    if same_price:
        decompositions.append([Step("k", f"{name} buys {a} + {b} = {a + b} items."),
                               Step("t", f"{name} spends {a + b} * {p} = ${t} in total.", ("k",))])
        buys = f"{a} {item1} and {b} {item2}. Each item costs ${p}."
    else:
        buys = f"{a} {item1} for ${p} each and {b} {item2} for ${q} each."
    if rng.random() < 0.5:
        return f"{name} buys {buys} How much does {he} spend in total?", decompositions, t
    m = 10 * rng.randint(t // 10 + 1, t // 10 + 4)
    left = m - t
    if not _fits(d, m):
        return None
    decompositions = [steps + [Step("left", f"{name} has {m} - {t} = ${left} left.", ("t",))]
                      for steps in decompositions]
    lots = ((cost1, x, item1), (cost2, y, item2))
    for (first, spent, item), (second, rest, other) in (lots, lots[::-1]):
        decompositions.append([
            first, Step("r", f"After paying for the {item}, {name} has {m} - {spent} = ${m - spent}.", (first.key,)),
            second, Step("left", f"After paying for the {other}, {he} has {m - spent} - {rest} = ${left} left.",
                         ("r", second.key))])
    question = f"{name} has ${m}. {he.capitalize()} buys {buys} How much money does {he} have left?"
    return question, decompositions, left


def _sharing(rng, d):
    """Pooled fruit packed equally into k baskets. Two pickers: add then divide, or divide each share
    then add. Three pickers: add the amounts in any pairing, then divide."""
    fruit, k = rng.choice(FRUITS), rng.randint(2, d.max_factor)
    if rng.random() < 0.5:
        (n1, _), (n2, _) = rng.sample(NAMES, 2)
        i, j = rng.randint(1, d.max_factor), rng.randint(1, d.max_factor)
        a, b = k * i, k * j
        if not _fits(d, a + b):
            return None
        question = (f"{n1} picked {a} {fruit} and {n2} picked {b} {fruit}. They packed all the {fruit} equally "
                    f"into {k} baskets. How many {fruit} are in each basket?")
        pooled = [Step("t", f"Together they picked {a} + {b} = {a + b} {fruit}."),
                  Step("e", f"Each basket gets {a + b} / {k} = {i + j} {fruit}.", ("t",))]
        shared = [Step("i", f"{n1}'s {fruit} put {a} / {k} = {i} in each basket."),
                  Step("j", f"{n2}'s {fruit} put {b} / {k} = {j} in each basket."),
                  Step("e", f"Each basket gets {i} + {j} = {i + j} {fruit}.", ("i", "j"))]
        return question, [pooled, shared], i + j
    e = rng.randint(2, d.max_factor)
    t = k * e
    if t < 6 or not _fits(d, t):
        return None
    a = rng.randint(2, min(t - 4, d.max_number))
    b = rng.randint(2, min(t - a - 2, d.max_number))
    pickers = list(zip((name for name, _ in rng.sample(NAMES, 3)), (a, b, t - a - b)))
    (n1, _), (n2, _), (n3, _) = pickers
    question = (f"{n1} picked {a} {fruit}, {n2} picked {b} {fruit} and {n3} picked {t - a - b} {fruit}. They "
                f"packed all the {fruit} equally into {k} baskets. How many {fruit} are in each basket?")
    decompositions = []
    for first, second, third in ((0, 1, 2), (0, 2, 1), (1, 2, 0)):
        (p1, v1), (p2, v2), (_, v3) = pickers[first], pickers[second], pickers[third]
        decompositions.append([Step("s", f"{p1} and {p2} picked {v1} + {v2} = {v1 + v2} {fruit}."),
                               Step("t", f"All together they picked {v1 + v2} + {v3} = {t} {fruit}.", ("s",)),
                               Step("e", f"Each basket gets {t} / {k} = {e} {fruit}.", ("t",))])
    return question, decompositions, e


def _rates(rng, d):
    """Output at a fixed rate over two days: r*h1 + r*h2 or r*(h1+h2). Optionally sold at s each:
    multiply the total by s, or first find the money made per hour."""
    subject, it, verb, things, thing, made = rng.choice(WORKERS)
    r, h1, h2 = rng.randint(2, d.max_factor), rng.randint(2, d.max_factor), rng.randint(2, d.max_factor)
    x, y, hours = r * h1, r * h2, h1 + h2
    t = x + y
    if not _fits(d, t):
        return None
    by_day = [Step("x", f"On Monday {it} {verb} {r} * {h1} = {x} {things}."),
              Step("y", f"On Tuesday {it} {verb} {r} * {h2} = {y} {things}."),
              Step("t", f"Over the two days {it} {verb} {x} + {y} = {t} {things}.", ("x", "y"))]
    by_hours = [Step("h", f"{it.capitalize()} works for {h1} + {h2} = {hours} hours in all."),
                Step("t", f"{it.capitalize()} {verb} {r} * {hours} = {t} {things}.", ("h",))]
    question = (f"{subject} {verb} {r} {things} every hour. On Monday {it} works for {h1} hours and on Tuesday "
                f"{it} works for {h2} hours.")
    if rng.random() < 0.5:
        return f"{question} How many {things} are {made} on the two days?", [by_day, by_hours], t
    s = rng.randint(2, d.max_factor)
    if not _fits(d, t * s):
        return None
    sold = Step("m", f"The {things} sell for {t} * {s} = ${t * s}.", ("t",))
    per_hour = [Step("h", by_hours[0].line),
                Step("p", f"Each hour {it} {verb} {r} * {s} = ${r * s} worth of {things}."),
                Step("m", f"The two days bring in {hours} * {r * s} = ${t * s}.", ("h", "p"))]
    question = f"{question} Each {thing} sells for ${s}. How much money do the {things} bring in?"
    return question, [by_day + [sold], by_hours + [sold], per_hour], t * s


def _ages(rng, d):
    """Ages n years from now. One person: their age now then add n, or the other's future age then the gap.
    Sum of both: add the two future ages, or add today's sum and 2*n (in either order)."""
    (n1, _), (n2, _) = rng.sample(NAMES, 2)
    a, gap, n = rng.randint(5, d.max_number), rng.randint(2, d.max_factor), rng.randint(2, d.max_factor)
    older = rng.random() < 0.5
    op, word = ("+", "older") if older else ("-", "younger")
    s = a + gap if older else a - gap
    if not _fits(d, s, a + s + 2 * n):
        return None
    intro = f"{n1} is {a} years old. {n2} is {gap} years {word} than {n1}."
    now = Step("s", f"{n2} is {a} {op} {gap} = {s} years old.")
    if rng.random() < 0.5:
        question = f"{intro} How old will {n2} be in {n} years?"
        return question, [
            [now, Step("t", f"In {n} years {n2} will be {s} + {n} = {s + n} years old.", ("s",))],
            [Step("x", f"In {n} years {n1} will be {a} + {n} = {a + n} years old."),
             Step("t", f"{n2} will then be {a + n} {op} {gap} = {s + n} years old.", ("x",))],
        ], s + n
    t = a + s + 2 * n
    question = f"{intro} What will the sum of their ages be in {n} years?"
    return question, [
        [now,
         Step("x", f"In {n} years {n1} will be {a} + {n} = {a + n} years old."),
         Step("y", f"In {n} years {n2} will be {s} + {n} = {s + n} years old.", ("s",)),
         Step("t", f"The sum of their ages will be {a + n} + {s + n} = {t}.", ("x", "y"))],
        [now,
         Step("u", f"Together they are {a} + {s} = {a + s} years old now.", ("s",)),
         Step("g", f"Each of them gets {n} years older, so the sum grows by 2 * {n} = {2 * n} years."),
         Step("t", f"The sum of their ages will be {a + s} + {2 * n} = {t}.", ("u", "g"))],
    ], t


def _savings(rng, d):
    """Weekly savings, optionally on top of money already there, then two purchases: subtract the
    purchases one at a time (in either order) or subtract their sum."""
    (name, he), (buy1, buy2) = rng.choice(NAMES), rng.sample(PURCHASES, 2)
    s, w = rng.randint(2, d.max_factor), rng.randint(2, d.max_factor)
    saved = s * w
    start = rng.randint(5, d.max_number) if rng.random() < 0.5 else 0
    have = start + saved
    if have < 8 or not _fits(d, have):
        return None
    x = rng.randint(2, min(d.max_number, have // 2))
    y = rng.randint(2, min(d.max_number, have - x - 1))
    left = have - x - y
    steps = [Step("w", f"{name} saves {s} * {w} = ${saved}.")]
    question = f"{name} saves ${s} every week for {w} weeks."
    if start:
        steps.append(Step("h", f"{he.capitalize()} then has {start} + {saved} = ${have}.", ("w",)))
        question = (f"{name} has ${start} in {POSSESSIVE[he]} piggy bank. {he.capitalize()} saves ${s} every week "
                    f"for {w} weeks.")
    question += (f" Then {he} spends ${x} on a {buy1} and ${y} on a {buy2}. How much money does {he} have left?")
    funds = steps[-1].key
    decompositions = []
    for (first, cost1), (second, cost2) in (((buy1, x), (buy2, y)), ((buy2, y), (buy1, x))):
        decompositions.append(steps + [
            Step("r", f"After buying the {first}, {he} has {have} - {cost1} = ${have - cost1}.", (funds,)),
            Step("left", f"After buying the {second}, {he} has {have - cost1} - {cost2} = ${left} left.", ("r",))])
    decompositions.append(steps + [Step("c", f"{he.capitalize()} spends {x} + {y} = ${x + y}."),
                                   Step("left", f"{he.capitalize()} has {have} - {x + y} = ${left} left.",
                                        (funds, "c"))])
    return question, decompositions, left


def _inventory(rng, d):
    """Boxes in stock plus a delivery of the same boxes, optionally minus a sale: count each lot then
    combine (sale taken from the stock or from the total), or count the boxes first."""
    stock = rng.choice(STOCK)
    n, b, k = rng.randint(2, d.max_factor), rng.randint(2, d.max_factor), rng.randint(2, d.max_factor)
    x, y, t = n * k, b * k, (n + b) * k
    if not _fits(d, t):
        return None
    count_x = Step("x", f"The shop starts with {n} * {k} = {x} {stock}.")
    count_y = Step("y", f"The delivery brings {b} * {k} = {y} {stock}.")
    question = f"A shop has {n} boxes of {k} {stock}."
    by_box = [Step("n", f"The shop gets {n} + {b} = {n + b} boxes in all."),
              Step("t", f"The boxes hold {n + b} * {k} = {t} {stock}.", ("n",))]
    if rng.random() < 0.4:
        question += f" A delivery of {b} more boxes of {k} {stock} arrives. How many {stock} does the shop have now?"
        return question, [[count_x, count_y, Step("t", f"Now it has {x} + {y} = {t} {stock}.", ("x", "y"))], by_box], t
    a = rng.randint(2, min(d.max_number, x - 1))
    question += (f" It sells {a} {stock}, and then a delivery of {b} more boxes of {k} {stock} arrives. "
                 f"How many {stock} does the shop have now?")
    after_sale = Step("left", f"After the sale it has {t} - {a} = {t - a} {stock}.", ("t",))
    return question, [
        [count_x,
         Step("r", f"After the sale it has {x} - {a} = {x - a} {stock}.", ("x",)),
         count_y,
         Step("left", f"Now it has {x - a} + {y} = {t - a} {stock}.", ("r", "y"))],
        [count_x, count_y, Step("t", f"The boxes hold {x} + {y} = {t} {stock} in all.", ("x", "y")), after_sale],
        by_box + [after_sale],
    ], t - a


def _transfer(rng, d):
    """Things moved from one container to another; how many more in the second: count both then subtract
    (either count first), or, when the second already had more, the old gap plus 2*m."""
    place, things = rng.choice(CONTAINERS)
    name, _ = rng.choice(NAMES)
    a, b = rng.randint(5, d.max_number), rng.randint(5, d.max_number)
    m = rng.randint(2, min(d.max_factor, a - 1))
    gap = (b + m) - (a - m)
    if gap < 1 or not _fits(d, b + m):
        return None
    question = (f"The first {place} has {a} {things} and the second {place} has {b} {things}. {name} moves {m} "
                f"{things} from the first {place} to the second. How many more {things} are in the second {place} "
                f"than in the first now?")
    decompositions = [[Step("x", f"The first {place} now has {a} - {m} = {a - m} {things}."),
                       Step("y", f"The second {place} now has {b} + {m} = {b + m} {things}."),
                       Step("g", f"The second {place} has {b + m} - {a - m} = {gap} more {things}.", ("x", "y"))]]
    if b > a:
        decompositions.append([Step("o", f"At first the second {place} had {b} - {a} = {b - a} more {things}."),
                               Step("m", f"Moving {m} {things} changes the difference by 2 * {m} = {2 * m}."),
                               Step("g", f"Now the second {place} has {b - a} + {2 * m} = {gap} more {things}.",
                                    ("o", "m"))])
    return question, decompositions, gap


def _groups(rng, d):
    """g groups of p members get k gifts each: (g*p)*k or g*(p*k); optionally taken from a stock."""
    leader, he, groups, members, gift = rng.choice(LEADERS)
    g, p, k = rng.randint(2, d.max_factor), rng.randint(2, d.max_factor), rng.randint(2, d.max_factor)
    t = g * p * k
    if not _fits(d, t):
        return None
    question = f"{leader} has {g} {groups} of {p} {members}. {he.capitalize()} gives each of the {members} {k} {gift}."
    decompositions = [
        [Step("s", f"There are {g} * {p} = {g * p} {members}."),
         Step("t", f"{he.capitalize()} gives out {g * p} * {k} = {t} {gift}.", ("s",))],
        [Step("q", f"Each of the {groups} gets {p} * {k} = {p * k} {gift}."),
         Step("t", f"{he.capitalize()} gives out {g} * {p * k} = {t} {gift}.", ("q",))],
    ]
    if rng.random() < 0.5:
        return f"{question} How many {gift} does {he} give out?", decompositions, t
    m = t + rng.randint(1, d.max_number)
    if not _fits(d, m):
        return None
    left = Step("left", f"{he.capitalize()} has {m} - {t} = {m - t} {gift} left.", ("t",))
    question = f"{question} {he.capitalize()} started with {m} {gift}. How many {gift} are left?"
    return question, [steps + [left] for steps in decompositions], m - t


TEMPLATES = [_shopping, _sharing, _rates, _ages, _savings, _inventory, _transfer, _groups]


def make_problem(rng, difficulty=Difficulty()):
    """One problem from a random template, with all its chains that fit the step range.

    The canonical chain, chains[0], is the first order of the first decomposition that fits the range."""
    for _ in range(1000):
        made = rng.choice(TEMPLATES)(rng, difficulty)
        if made is None:
            continue
        question, decompositions, final = made
        chains = []
        for steps in decompositions:
            if difficulty.min_steps <= len(steps) <= difficulty.max_steps:
                for order in _orders(steps):
                    chain = "\n".join(step.line for step in order) + f"\n#### {final}"
                    if chain not in chains:
                        chains.append(chain)
        if chains:
            canonical = len(chains) == 1 or rng.random() < difficulty.p_canonical
            answer = chains[0] if canonical else rng.choice(chains[1:])
            return Problem(question=question, chains=chains, answer=answer, final=final)
    raise ValueError(f"no template produces chains of {difficulty.min_steps} to {difficulty.max_steps} steps "
                     f"within the number limits of {difficulty}")


def _fill(rng, n, difficulty, seen):
    records = []
    for _ in range(20 * n + 1000):
        if len(records) == n:
            return records
        problem = make_problem(rng, difficulty)
        if problem.question not in seen:
            seen.add(problem.question)
            records.append({"question": problem.question, "answer": problem.answer})
    raise ValueError(f"could not draw {n} distinct questions with {difficulty}; loosen the number limits")


def make_split(n, seed, difficulty=Difficulty()):
    """n GSM8K-format records {"question", "answer"} with distinct questions."""
    return _fill(random.Random(seed), n, difficulty, set())


def make_splits(n_train, n_val, n_test, seed, difficulty=Difficulty()):
    """Train, val and test splits sharing no question. Test is drawn first, then val, then train, so the
    test set of a seed does not change when n_train does."""
    rng, seen = random.Random(seed), set()
    test = _fill(rng, n_test, difficulty, seen)
    val = _fill(rng, n_val, difficulty, seen)
    return {"train": _fill(rng, n_train, difficulty, seen), "val": val, "test": test}
