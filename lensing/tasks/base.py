"""The Task protocol, the problem record every task produces, seeded splits and the task registry.

A task says what its text is made of (``characters``, for the character tokenizer), which
difficulties it has, how to draw a problem of one difficulty, and how to check a generated
text. Everything downstream (training data, curricula, evaluation, studies, the CLI's
``--task``) goes through this interface, so a task of one's own plugs in with :func:`register`.
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass
from typing import Protocol, runtime_checkable

ANSWER_MARKER = "###"


@dataclass(frozen=True)
class Problem:
    """One problem: the question, its gold chain of thought (one line per step) and answer.

    ``intermediates`` holds the value reached after each step (what a latent standing in for
    that step should carry); ``structure`` groups problems that share their reasoning template;
    ``steps`` is the difficulty; ``task`` names the task that drew it.
    """

    question: str
    cot: tuple[str, ...]
    answer: int | str
    steps: int
    structure: str
    intermediates: tuple
    task: str = "arith"

    @property
    def prompt(self) -> str:
        """What the model is given: the question and a newline."""
        return self.question + "\n"

    @property
    def completion(self) -> str:
        """What the model must write: one CoT line per step, then the marker and the answer."""
        return "".join(line + "\n" for line in self.cot) + f"{ANSWER_MARKER}{self.answer}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Problem:
        return cls(**{**data, "cot": tuple(data["cot"]), "intermediates": tuple(data["intermediates"])})


def answer_text(text: str) -> str | None:
    """What follows the last answer marker, up to the end of its line (None without a marker).

    >>> answer_text("c>a\\na>d\\n###d")
    'd'
    """
    at = text.rfind(ANSWER_MARKER)
    if at < 0:
        return None
    return text[at + len(ANSWER_MARKER) :].split("\n")[0].strip()


@runtime_checkable
class Task(Protocol):
    """What lensing needs from a task."""

    name: str
    characters: str  # every character its prompts and completions use
    difficulties: tuple[int, ...]

    def sample(self, difficulty: int, rng: random.Random) -> Problem:
        """One problem of this difficulty, drawn with ``rng`` only (same seed, same problem)."""
        ...

    def check(self, text: str, problem: Problem) -> bool:
        """Whether a generated completion ``text`` answers ``problem`` correctly."""
        ...


def continue_from(task: Task, problem: Problem, step: int, value: str) -> str | None:
    """The answer ``problem`` would have if CoT step ``step`` (0-based) had reached ``value``
    instead of ``problem.intermediates[step]``, the rest of the chain applied as written; None
    when the task does not say (tasks may define ``continue_from(problem, step, value)``).

    This is what a swapped latent should produce if latent ``step`` carries that step's value.
    """
    method = getattr(task, "continue_from", None)
    return None if method is None else method(problem, step, value)


class ExactAnswer:
    """A ``check`` for tasks whose answer is a string compared exactly after the marker."""

    def check(self, text: str, problem: Problem) -> bool:
        return answer_text(text) == str(problem.answer)


# ---------------------------------------------------------------------- registry
_REGISTRY: dict[str, Task] = {}


def register(task: Task, replace: bool = False) -> Task:
    """Makes ``task`` available by name to :func:`get`, training, evaluation and the CLI."""
    missing = [attr for attr in ("name", "characters", "difficulties", "sample", "check") if not hasattr(task, attr)]
    if missing:
        raise TypeError(f"{task!r} is not a Task: it lacks {', '.join(missing)}")
    if not re.fullmatch(r"[a-z][a-z0-9_-]*", task.name):
        raise ValueError(f"task name {task.name!r}: use lower-case letters, digits, '-' and '_'")
    if task.name in _REGISTRY and not replace and _REGISTRY[task.name] is not task:
        raise ValueError(f"a task named {task.name!r} is already registered; pass replace=True to replace it")
    _REGISTRY[task.name] = task
    return task


def get(task: str | Task) -> Task:
    """A registered task by name (a Task object is returned as is)."""
    if not isinstance(task, str):
        return task
    if task not in _REGISTRY:
        raise ValueError(f"unknown task {task!r}; registered: {', '.join(names())}")
    return _REGISTRY[task]


def names() -> list[str]:
    return sorted(_REGISTRY)


# ------------------------------------------------------------------------ splits
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
    difficulties: tuple[int, ...] | None = None,
    seed: int = 0,
    task: str | Task = "arith",
) -> Splits:
    """Seeded splits with ``n_*`` problems *per difficulty*; no question appears in two splits.

    Test is drawn first, then val, then train, each skipping questions already taken, so the
    test set for a seed does not depend on how much training data is asked for. Train takes
    at most what is left of a difficulty's problem space when the task says how large it is
    (``space_size(difficulty)``; arithmetic has only 1,800 one-step problems).
    """
    task = get(task)
    difficulties = tuple(task.difficulties if difficulties is None else difficulties)
    unknown = [d for d in difficulties if d not in task.difficulties]
    if unknown:
        raise ValueError(f"task {task.name!r} has difficulties {list(task.difficulties)}, not {unknown}")
    space = getattr(task, "space_size", lambda d: None)
    seen: set[str] = set()
    taken = dict.fromkeys(difficulties, 0)
    out = {}
    for split, n in (("test", n_test), ("val", n_val), ("train", n_train)):
        # arithmetic keeps its original seeding, so its splits (and the bundled models' numbers) do not move
        rng = random.Random(f"{seed}-{split}" if task.name == "arith" else f"{task.name}-{seed}-{split}")
        problems = []
        for steps in difficulties:
            size = space(steps)
            wanted = min(n, size - taken[steps]) if split == "train" and size is not None else n
            count, attempts = 0, 0
            while count < wanted:
                attempts += 1
                if attempts > 100 * wanted + 10_000:
                    raise ValueError(f"cannot draw {wanted} distinct {steps}-step {task.name} problems for {split}")
                p = task.sample(steps, rng)
                if p.question in seen:
                    continue
                seen.add(p.question)
                taken[steps] += 1
                problems.append(p)
                count += 1
        rng.shuffle(problems)
        out[split] = problems
    return Splits(**out)
