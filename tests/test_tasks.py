import random

import pytest

from lensing.tasks import extract_answer, is_correct, make_problem, make_splits
from lensing.tasks.arith import problem_space_size


def test_problem_chain_is_correct_arithmetic():
    for steps in range(1, 7):
        p = make_problem(steps, random.Random(steps))
        value = int(p.question.split(";")[0].split("=")[1])
        for line, op in zip(p.cot, p.structure, strict=True):
            k = int(line.split("=")[1][len(str(value)) + 1 :])
            value = (value + k) % 100 if op == "+" else (value - k) % 100
            assert line.endswith(f"={value}")
        assert p.answer == value == p.intermediates[-1]
        assert len(p.cot) == steps == len(p.structure)
        assert p.completion.endswith(f"###{p.answer}")


def test_known_problem():
    p = make_problem(2, random.Random(0))
    assert p.prompt + p.completion == "a=49;b=a-1;c=b-9;c?\nb=49-1=48\nc=48-9=39\n###39"
    assert p.structure == "--"


def test_splits_disjoint_deterministic_and_capped():
    a, b = make_splits(2000, 10, 20, seed=3), make_splits(2000, 10, 20, seed=3)
    assert [p.question for p in a.test] == [p.question for p in b.test]
    train, val, test = ({p.question for p in s} for s in (a.train, a.val, a.test))
    assert not (train & val or train & test or val & test)
    one_step = sum(p.steps == 1 for p in a.train)
    assert one_step == problem_space_size(1) - 30  # all 1-step problems left after val and test
    assert make_splits(5, 10, 20, seed=3).test == a.test  # test set independent of train size


def test_answer_extraction():
    assert extract_answer("b=1+2=3\n###3") == 3
    assert extract_answer("###4 then ###57") == 57
    assert extract_answer("no marker 12") is None
    assert is_correct("x\n###39", make_problem(2, random.Random(0)))


def test_bad_steps():
    with pytest.raises(ValueError, match="steps must be between 1 and 6"):
        make_problem(7, random.Random(0))
