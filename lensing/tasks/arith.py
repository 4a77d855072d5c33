"""Multi-step arithmetic chains: the GSM8K analogue a tiny model can learn on a CPU.

A problem with ``k`` steps gives a start value and ``k`` updates, each adding or subtracting a
one-digit number modulo 100; the chain of thought writes one line per step::

    >>> problem = make_problem(steps=2, rng=random.Random(0))
    >>> print(problem.prompt + problem.completion)
    a=49;b=a-1;c=b-9;c?
    b=49-1=48
    c=48-9=39
    ###39

Difficulty is the number of steps (1-6), so each step stays easy and hardness comes from
chaining. ``structure`` is the operation template (``"--"`` above): problems with the same
structure share their reasoning and differ only in the numbers.
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass

VARIABLES = "abcdefg"
MAX_STEPS = len(VARIABLES) - 1
ANSWER_MARKER = "###"
MODULUS = 100


@dataclass(frozen=True)
class Problem:
    """One arithmetic chain with its gold chain of thought and answer."""

    question: str
    cot: tuple[str, ...]
    answer: int
    steps: int
    structure: str
    intermediates: tuple[int, ...]

    @property
    def prompt(self) -> str:
        """What the model is given: the question and a newline."""
        return self.question + "\n"

    @property
    def completion(self) -> str:
        """What the model must write: one CoT line per step, then the answer."""
        return "".join(line + "\n" for line in self.cot) + f"{ANSWER_MARKER}{self.answer}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Problem:
        return cls(**{**data, "cot": tuple(data["cot"]), "intermediates": tuple(data["intermediates"])})


def make_problem(steps: int, rng: random.Random) -> Problem:
    """Draws one problem with ``steps`` operations (1-6)."""
    if not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be between 1 and {MAX_STEPS}, got {steps}")
    value = rng.randrange(MODULUS)
    clauses = [f"{VARIABLES[0]}={value}"]
    cot, ops, intermediates = [], [], []
    for i in range(1, steps + 1):
        op = rng.choice("+-")
        k = rng.randrange(1, 10)
        new = (value + k) % MODULUS if op == "+" else (value - k) % MODULUS
        var, prev = VARIABLES[i], VARIABLES[i - 1]
        clauses.append(f"{var}={prev}{op}{k}")
        cot.append(f"{var}={value}{op}{k}={new}")
        ops.append(op)
        intermediates.append(new)
        value = new
    question = ";".join(clauses) + f";{VARIABLES[steps]}?"
    return Problem(question, tuple(cot), value, steps, "".join(ops), tuple(intermediates))


def problem_space_size(steps: int) -> int:
    """How many distinct problems have ``steps`` steps: 100 start values, 18 updates per step."""
    return MODULUS * 18**steps


def extract_answer(text: str) -> int | None:
    """The number after the last answer marker, or None when there is none."""
    matches = re.findall(re.escape(ANSWER_MARKER) + r"\s*(-?\d+)", text)
    return int(matches[-1]) if matches else None


def is_correct(text: str, problem: Problem) -> bool:
    """Exact match of the extracted answer."""
    return extract_answer(text) == problem.answer


@dataclass(frozen=True)
class Splits:
    """Disjoint train / val / test problem sets."""

    train: list[Problem]
    val: list[Problem]
    test: list[Problem]


def make_splits(
    n_train: int,
    n_val: int,
    n_test: int,
    difficulties: tuple[int, ...] = tuple(range(1, MAX_STEPS + 1)),
    seed: int = 0,
) -> Splits:
    """Seeded splits with ``n_*`` problems *per difficulty*; no question appears in two splits.

    Test is drawn first, then val, then train, each skipping questions already taken, so the
    test set for a seed does not depend on how much training data is asked for. Train takes
    at most what is left of a difficulty's problem space (1-step chains have only 1800).
    """
    seen: set[str] = set()
    taken = {steps: 0 for steps in difficulties}
    out = {}
    for split, n in (("test", n_test), ("val", n_val), ("train", n_train)):
        rng = random.Random(f"{seed}-{split}")
        problems = []
        for steps in difficulties:
            wanted = min(n, problem_space_size(steps) - taken[steps]) if split == "train" else n
            count, attempts = 0, 0
            while count < wanted:
                attempts += 1
                if attempts > 100 * wanted + 10_000:
                    raise ValueError(f"cannot draw {wanted} distinct {steps}-step problems for {split}")
                p = make_problem(steps, rng)
                if p.question in seen:
                    continue
                seen.add(p.question)
                taken[steps] += 1
                problems.append(p)
                count += 1
        rng.shuffle(problems)
        out[split] = problems
    return Splits(**out)
