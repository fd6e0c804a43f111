"""Held-out math problems for the offline benchmark: a seeded generator whose
templates differ from the training generator's (lp/corpus/mathgen.py: bare
arithmetic, fraction sums, linear equations, boxes-and-gifts word problems).

Here: multi-step word problems about travel, change, fences, ages, sharing and
averages, written as GSM8K is (a question; a worked answer ending in
``#### <number>``), so a model that only memorised the training templates
gains nothing. Every answer is an integer. Same seed, same problems.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

# names and things that the training generator never uses
NAMES = ["Kofi", "Lena", "Mateo", "Nadia", "Oscar", "Priya", "Quinn", "Rosa", "Sami", "Tariq", "Uma", "Vera"]
THINGS = ["stickers", "postcards", "beads", "buttons", "tickets", "seashells"]


def travel(rng: random.Random) -> tuple[str, str, int]:
    name = rng.choice(NAMES)
    v, t, d = rng.randint(8, 30), rng.randint(2, 6), rng.randint(3, 40)
    first = v * t
    q = (
        f"{name} cycles at {v} kilometres per hour for {t} hours, then walks {d} more kilometres. "
        f"How many kilometres does {name} travel in total?"
    )
    a = f"Cycling covers {v} * {t} = {first} kilometres. Adding the walk gives {first} + {d} = {first + d}."
    return q, a, first + d


def change(rng: random.Random) -> tuple[str, str, int]:
    name = rng.choice(NAMES)
    n, price = rng.randint(2, 9), rng.randint(2, 12)
    cost = n * price
    bill = next(b for b in (20, 50, 100, 200) if b > cost)
    q = (
        f"{name} buys {n} notebooks that cost {price} dollars each and pays with a {bill}-dollar bill. "
        f"How many dollars of change does {name} get?"
    )
    a = f"The notebooks cost {n} * {price} = {cost} dollars. The change is {bill} - {cost} = {bill - cost}."
    return q, a, bill - cost


def fence(rng: random.Random) -> tuple[str, str, int]:
    w, length = rng.randint(3, 25), rng.randint(26, 60)
    gate = rng.randint(1, 3)
    around = 2 * (w + length)
    q = (
        f"A garden is {w} metres wide and {length} metres long. A fence goes all the way around it "
        f"except for a gate {gate} metres wide. How many metres of fence are needed?"
    )
    a = (
        f"The distance around the garden is 2 * ({w} + {length}) = {around} metres. "
        f"Leaving out the gate gives {around} - {gate} = {around - gate}."
    )
    return q, a, around - gate


def ages(rng: random.Random) -> tuple[str, str, int]:
    p, q_name = rng.sample(NAMES, 2)
    young, gap, years = rng.randint(4, 30), rng.randint(1, 15), rng.randint(1, 10)
    total = 2 * young + gap + 2 * years
    q = (
        f"{p} is {gap} years older than {q_name}. In {years} years the sum of their ages will be {total}. "
        f"How old is {q_name} now?"
    )
    now = total - 2 * years
    a = (
        f"Today the sum of their ages is {total} - 2 * {years} = {now}. Removing the gap, twice "
        f"{q_name}'s age is {now} - {gap} = {now - gap}, so {q_name} is {now - gap} / 2 = {young}."
    )
    return q, a, young


def sharing(rng: random.Random) -> tuple[str, str, int]:
    thing = rng.choice(THINGS)
    friends, each, given = rng.randint(2, 8), rng.randint(6, 25), rng.randint(1, 5)
    total = friends * each
    q = (
        f"{friends} friends share {total} {thing} equally, and then each friend gives {given} {thing} "
        f"to a teacher. How many {thing} does each friend keep?"
    )
    a = (
        f"Each friend first gets {total} / {friends} = {each}. "
        f"After giving {given}, each keeps {each} - {given} = {each - given}."
    )
    return q, a, each - given


def average(rng: random.Random) -> tuple[str, str, int]:
    name = rng.choice(NAMES)
    k = rng.randint(3, 5)
    mean = rng.randint(50, 95)
    scores = [mean + rng.randint(-9, 9) for _ in range(k - 1)]
    scores.append(mean * k - sum(scores))
    listed = ", ".join(map(str, scores[:-1])) + f" and {scores[-1]}"
    q = f"{name} scored {listed} on {k} tests. What is the average score?"
    a = f"The scores add up to {' + '.join(map(str, scores))} = {mean * k}. Dividing by {k} gives {mean}."
    return q, a, mean


TEMPLATES: tuple[Callable[[random.Random], tuple[str, str, int]], ...] = (
    travel,
    change,
    fence,
    ages,
    sharing,
    average,
)


def problems(seed: int) -> Iterator[dict]:
    """An endless, seeded stream of ``{question, answer, target}`` rows, GSM8K-shaped:
    ``answer`` is the worked solution ending in ``#### <target>``."""
    rng = random.Random(seed)
    while True:
        question, working, target = rng.choice(TEMPLATES)(rng)
        yield {"question": question, "answer": f"{working}\n#### {target}", "target": str(target)}
