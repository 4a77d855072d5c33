"""Reachability in a random DAG (ProsQA-like): is the target reachable from the source?

The chain of thought is breadth-first search: one line per level, holding the nodes first
reached at that level (sorted). A "yes" problem ends at the level where the target appears; a
"no" problem ends when the search runs out of nodes, so both write ``difficulty`` lines::

    >>> problem = GraphTask().sample(2, random.Random(1))
    >>> print(problem.prompt + problem.completion)
    g>f;e>f;d>i;f>i;e>g;d>a;g~i?
    f
    i
    ###yes

Answers are balanced: each draw is "yes" or "no" with probability one half.
``intermediates`` are the BFS levels; ``structure`` is the answer and the depth.
"""

from __future__ import annotations

import random
import string

from lensing.tasks.base import ExactAnswer, Problem

DEGREES = (0, 1, 1, 2)  # out-degree draws: sparse enough that searches end with nodes left unreached


class GraphTask(ExactAnswer):
    """BFS reachability over ``nodes`` letters; difficulty is the number of BFS levels written."""

    def __init__(self, nodes: int = 10, difficulties: tuple[int, ...] = (1, 2, 3, 4), name: str = "graph") -> None:
        if not 4 <= nodes <= 26:
            raise ValueError(f"graph needs 4 to 26 nodes, got {nodes}")
        self.name, self.nodes, self.difficulties = name, nodes, tuple(difficulties)
        self.letters = string.ascii_lowercase[:nodes]
        self.characters = "".join(dict.fromkeys(self.letters + "yesno>;~?#\n"))

    def sample(self, difficulty: int, rng: random.Random) -> Problem:
        if difficulty not in self.difficulties:
            raise ValueError(f"{self.name} has difficulties {list(self.difficulties)}, not {difficulty}")
        want_yes = rng.random() < 0.5
        for _ in range(10_000):
            order = rng.sample(self.letters, self.nodes)
            edges = [  # 0-2 edges from each node to one of the next four in a hidden topological order
                (order[i], order[j])
                for i in range(self.nodes - 1)
                for j in rng.sample(range(i + 1, min(i + 5, self.nodes)), min(rng.choice(DEGREES), self.nodes - 1 - i))
            ]
            rng.shuffle(edges)
            source = rng.choice(order[: self.nodes // 2])
            levels = _bfs_levels(source, edges)
            if want_yes:
                if len(levels) < difficulty:
                    continue
                target = rng.choice(sorted(levels[difficulty - 1]))
                lines = levels[:difficulty]
            else:
                reached = {source}.union(*levels)
                # a target that is some edge's head, so "never an edge's head" is no shortcut to "no"
                heads = {b for _, b in edges}
                unreachable = [n for n in self.letters if n not in reached and n in heads]
                if len(levels) != difficulty or not unreachable:
                    continue
                target, lines = rng.choice(unreachable), levels
            question = ";".join(f"{a}>{b}" for a, b in edges) + f";{source}~{target}?"
            frontier = tuple("".join(sorted(level)) for level in lines)
            answer = "yes" if want_yes else "no"
            return Problem(question, frontier, answer, difficulty, f"{answer}{difficulty}", frontier, self.name)
        raise ValueError(f"could not draw a {difficulty}-level {self.name} problem with {self.nodes} nodes")

    def space_size(self, difficulty: int) -> None:
        return None


def _bfs_levels(source: str, edges: list[tuple[str, str]]) -> list[set[str]]:
    """Nodes first reached at each BFS level from ``source`` (the source itself excluded)."""
    children: dict[str, list[str]] = {}
    for a, b in edges:
        children.setdefault(a, []).append(b)
    seen, frontier, levels = {source}, {source}, []
    while True:
        nxt = {c for node in frontier for c in children.get(node, []) if c not in seen}
        if not nxt:
            return levels
        seen |= nxt
        levels.append(nxt)
        frontier = nxt
