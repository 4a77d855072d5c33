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

from lensing.tasks.base import ANSWER_MARKER, Problem

VARIABLES = "abcdefg"
MAX_STEPS = len(VARIABLES) - 1
MODULUS = 100
CHARACTERS = "0123456789abcdefg=+-;?#\n"


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
    return Problem(question, tuple(cot), value, steps, "".join(ops), tuple(intermediates), "arith")


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


class ArithTask:
    """The arithmetic chains as a :class:`~lensing.tasks.Task` (difficulty = number of steps)."""

    name = "arith"
    characters = CHARACTERS
    difficulties = tuple(range(1, MAX_STEPS + 1))

    def sample(self, difficulty: int, rng: random.Random) -> Problem:
        return make_problem(difficulty, rng)

    def check(self, text: str, problem: Problem) -> bool:
        return is_correct(text, problem)

    def continue_from(self, problem: Problem, step: int, value: str) -> int:
        """The answer when step ``step`` yields ``value`` and the remaining updates are applied.

        >>> problem = make_problem(steps=2, rng=random.Random(0))  # a=49; b=a-1; c=b-9
        >>> ArithTask().continue_from(problem, 0, "10")
        1
        """
        values = [int(problem.question.split(";")[0].split("=")[1]), *problem.intermediates]
        remaining = sum(values[i + 1] - values[i] for i in range(step + 1, problem.steps))
        return (int(value) + remaining) % MODULUS

    def space_size(self, difficulty: int) -> int:
        return problem_space_size(difficulty)
