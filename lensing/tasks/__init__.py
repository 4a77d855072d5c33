"""Synthetic reasoning tasks behind one protocol: ``arith``, ``hops`` and ``graph`` built in.

>>> import random
>>> from lensing import tasks
>>> tasks.names()
['arith', 'graph', 'hops', 'hops-direct', 'hops-rev']
>>> tasks.get("hops").sample(3, random.Random(0)).cot
('e>g', 'g>h', 'h>d')
"""

from lensing.tasks.arith import MAX_STEPS, ArithTask, extract_answer, is_correct, make_problem
from lensing.tasks.base import (
    ANSWER_MARKER,
    ExactAnswer,
    Problem,
    Splits,
    Task,
    answer_text,
    continue_from,
    get,
    make_splits,
    names,
    register,
)
from lensing.tasks.graph import GraphTask
from lensing.tasks.hops import HopsTask
from lensing.tasks.tokenizer import build_char_tokenizer

register(ArithTask())
register(HopsTask())
register(HopsTask(name="hops-direct", step_format="{a}{b}"))
register(HopsTask(name="hops-rev", step_format="{a}{b}", edge_format="{b}<{a}"))
register(GraphTask())

__all__ = [
    "ANSWER_MARKER",
    "MAX_STEPS",
    "ArithTask",
    "ExactAnswer",
    "GraphTask",
    "HopsTask",
    "Problem",
    "Splits",
    "Task",
    "answer_text",
    "build_char_tokenizer",
    "continue_from",
    "extract_answer",
    "get",
    "is_correct",
    "make_problem",
    "make_splits",
    "names",
    "register",
]
