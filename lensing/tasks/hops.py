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

``edge_format`` spells an edge of the prompt. ``hops-rev`` writes them target first, ``b<a`` for
a -> b, so the prompt's copy of a node as a source sits right after its successor: the lookup
can then match the node by its own token and read the successor two tokens back, with no head
composed into the match itself.
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
        edge_format: str = "{a}>{b}",
    ) -> None:
        for what, fmt in (("step_format", step_format), ("edge_format", edge_format)):
            if "{a}" not in fmt or "{b}" not in fmt:
                raise ValueError(f"hops {what} must name both nodes as {{a}} and {{b}}, got {fmt!r}")
        if {"{", "}", ";"} & set(edge_format.format(a="", b="")):
            raise ValueError(f"hops edge_format may hold no ';' or braces but {{a}} and {{b}}, got {edge_format!r}")
        if not 2 <= nodes <= 26:
            raise ValueError(f"hops needs 2 to 26 nodes, got {nodes}")
        if not difficulties or min(difficulties) < 1:
            raise ValueError(f"hops difficulties are hop counts of at least 1, got {difficulties}")
        self.name, self.nodes, self.difficulties = name, nodes, tuple(difficulties)
        self.step_format, self.edge_format = step_format, edge_format
        self.letters = string.ascii_lowercase[:nodes]
        self.characters = self.letters + "0123456789>;^?#\n"
        extra = sorted(set((step_format + edge_format).format(a="", b="")) - set(self.characters))
        self.characters += "".join(extra)

    def sample(self, difficulty: int, rng: random.Random) -> Problem:
        if difficulty not in self.difficulties:
            raise ValueError(f"{self.name} has difficulties {list(self.difficulties)}, not {difficulty}")
        order = rng.sample(self.letters, self.nodes)
        successor = {order[i]: order[(i + 1) % self.nodes] for i in range(self.nodes)}
        edges = [self.edge_format.format(a=a, b=b) for a, b in successor.items()]
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
        successor = self.successor(problem)
        if value not in successor:
            raise ValueError(f"{value!r} is not a node of this {self.name} problem")
        node = value
        for _ in range(problem.steps - step - 1):
            node = successor[node]
        return node

    def successor(self, problem: Problem) -> dict[str, str]:
        """Each node's successor, read back from the problem's written edges.

        >>> task = HopsTask(edge_format="{b}<{a}")
        >>> problem = task.sample(2, random.Random(0))
        >>> problem.question[:12], task.successor(problem)["b"]
        ('e<b;h<g;b<f;', 'e')
        """
        spelled = self.edge_format.format(a="\0", b="\1")  # where each node sits in an edge
        a_at, b_at = spelled.index("\0"), spelled.index("\1")
        return {edge[a_at]: edge[b_at] for edge in problem.question.split(";")[:-1]}

    def space_size(self, difficulty: int) -> None:
        return None  # (nodes - 1)! cycles x nodes starts: never the limit
