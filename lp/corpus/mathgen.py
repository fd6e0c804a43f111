"""A deterministic generator of math problems with worked solutions.

The offline stand-in for Proof-Pile-2: arithmetic, fractions, linear equations
and word problems, each with its steps written out, so a model trained on it
must learn procedures, not just answers. Same seed, same problems.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from fractions import Fraction

NAMES = ["Ada", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jun"]
ITEMS = ["apples", "books", "marbles", "stamps", "coins", "pencils", "cards", "shells"]


def arithmetic(rng: random.Random) -> str:
    a, b, c = rng.randint(2, 999), rng.randint(2, 999), rng.randint(2, 99)
    op = rng.choice("+-*")
    first = {"+": a + b, "-": a - b, "*": a * b}[op]
    return (
        f"Problem: Compute ({a} {op} {b}) + {c}.\n"
        f"Solution: First, {a} {op} {b} = {first}.\n"
        f"Then {first} + {c} = {first + c}.\n"
        f"Answer: {first + c}"
    )


def fractions(rng: random.Random) -> str:
    x = Fraction(rng.randint(1, 12), rng.randint(2, 12))
    y = Fraction(rng.randint(1, 12), rng.randint(2, 12))
    den = x.denominator * y.denominator
    nx, ny = x.numerator * y.denominator, y.numerator * x.denominator
    s = x + y
    return (
        f"Problem: Add the fractions {x} and {y}.\n"
        f"Solution: Use the common denominator {den}: {x} = {nx}/{den} and {y} = {ny}/{den}.\n"
        f"So the sum is {nx + ny}/{den}, which simplifies to {s}.\n"
        f"Answer: {s}"
    )


def linear_equation(rng: random.Random) -> str:
    a = rng.choice([n for n in range(-12, 13) if n not in (0, 1)])
    x, b = rng.randint(-20, 20), rng.randint(-50, 50)
    c = a * x + b
    sign = "+" if b >= 0 else "-"
    return (
        f"Problem: Solve for x: {a}x {sign} {abs(b)} = {c}.\n"
        f"Solution: Subtract {b} from both sides: {a}x = {c - b}.\n"
        f"Divide both sides by {a}: x = {(c - b) // a}.\n"
        f"Check: {a} * {x} {sign} {abs(b)} = {c}.\n"
        f"Answer: x = {x}"
    )


def word_problem(rng: random.Random) -> str:
    p, q = rng.sample(NAMES, 2)
    item = rng.choice(ITEMS)
    n, k, m = rng.randint(5, 60), rng.randint(2, 9), rng.randint(1, 4)
    total = n * k
    given = total // (m + 1)
    return (
        f"Problem: {p} buys {k} boxes of {item} with {n} {item} in each box, "
        f"then gives {given} {item} to {q}. How many {item} does {p} have left?\n"
        f"Solution: {p} starts with {k} * {n} = {total} {item}.\n"
        f"After giving away {given}, {p} has {total} - {given} = {total - given} {item}.\n"
        f"Answer: {total - given}"
    )


KINDS: tuple[Callable[[random.Random], str], ...] = (arithmetic, fractions, linear_equation, word_problem)


def math_problems(seed: int = 0) -> Iterator[str]:
    """An endless, seeded stream of problems, one document each."""
    rng = random.Random(seed)
    while True:
        yield rng.choice(KINDS)(rng)
