"""Pointer chasing ("hops"): a serial task where every step depends on the one before.

The ``nodes`` letters form one random cycle, written as shuffled edges; the question asks where
``k`` hops from a start node lead. The chain of thought writes one hop per line::

    >>> problem = HopsTask().sample(2, random.Random(0))
    >>> print(problem.prompt + problem.completion)
    b>e;g>h;f>b;h>d;e>g;d>a;a>c;c>f;e^2?
    e>g
    g>h
    ###h

Nothing in the prompt shortcuts the chain: hop ``j`` needs the node reached after ``j - 1``, so
a model without written steps must carry each node internally (chance is ``1 / nodes``).
Difficulty is ``k``; ``intermediates`` are the nodes reached after each hop.

``step_format`` spells a CoT line. With the default ``{a}>{b}`` the next node is predicted at
the ``>``, so the lookup's query (the node ``a`` one token back) must first be moved there by
another head: both sides of the lookup are compositions of heads. ``hops-direct`` writes lines as
``{a}{b}``: the next node is predicted at ``a`` itself, the classic induction-head layout::

    >>> print(HopsTask(step_format="{a}{b}").sample(2, random.Random(0)).completion)
    eg
    gh
    ###h
"""

from __future__ import annotations

import random
import string

from lensing.tasks.base import ExactAnswer, Problem


class HopsTask(ExactAnswer):
    """Follow ``k`` edges of a random cycle over ``nodes`` letters (k in ``difficulties``)."""

    def __init__(
        self,
        nodes: int = 8,
        difficulties: tuple[int, ...] = (2, 3, 4, 5),
        name: str = "hops",
        step_format: str = "{a}>{b}",
    ) -> None:
        if "{a}" not in step_format or "{b}" not in step_format:
            raise ValueError(f"hops step_format must name both nodes as {{a}} and {{b}}, got {step_format!r}")
        if not 2 <= nodes <= 26:
            raise ValueError(f"hops needs 2 to 26 nodes, got {nodes}")
        if not difficulties or min(difficulties) < 1:
            raise ValueError(f"hops difficulties are hop counts of at least 1, got {difficulties}")
        self.name, self.nodes, self.difficulties = name, nodes, tuple(difficulties)
        self.step_format = step_format
        self.letters = string.ascii_lowercase[:nodes]
        self.characters = self.letters + "0123456789>;^?#\n"

    def sample(self, difficulty: int, rng: random.Random) -> Problem:
        if difficulty not in self.difficulties:
            raise ValueError(f"{self.name} has difficulties {list(self.difficulties)}, not {difficulty}")
        order = rng.sample(self.letters, self.nodes)
        successor = {order[i]: order[(i + 1) % self.nodes] for i in range(self.nodes)}
        edges = [f"{a}>{b}" for a, b in successor.items()]
        rng.shuffle(edges)
        start = rng.choice(self.letters)
        path, node = [], start
        for _ in range(difficulty):
            path.append(successor[node])
            node = successor[node]
        cot = tuple(self.step_format.format(a=a, b=b) for a, b in zip([start, *path[:-1]], path, strict=True))
        question = ";".join(edges) + f";{start}^{difficulty}?"
        return Problem(question, cot, node, difficulty, str(difficulty), tuple(path), self.name)

    def continue_from(self, problem: Problem, step: int, value: str) -> str:
        """The node reached by the hops left after ``step`` when that hop lands on ``value``.

        >>> task, problem = HopsTask(), HopsTask().sample(3, random.Random(0))
        >>> problem.intermediates, task.continue_from(problem, 0, "g"), task.continue_from(problem, 1, "a")
        (('g', 'h', 'd'), 'd', 'c')
        """
        successor = dict(edge.split(">") for edge in problem.question.split(";")[:-1])
        if value not in successor:
            raise ValueError(f"{value!r} is not a node of this {self.name} problem")
        node = value
        for _ in range(problem.steps - step - 1):
            node = successor[node]
        return node

    def space_size(self, difficulty: int) -> None:
        return None  # (nodes - 1)! cycles x nodes starts: never the limit

