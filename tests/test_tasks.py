import random

import pytest

import lensing
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


# ------------------------------------------------------------------ the Task protocol
from collections import Counter  # noqa: E402

from lensing import tasks  # noqa: E402
from lensing.tasks import Problem, answer_text  # noqa: E402


@pytest.mark.parametrize("name", ["arith", "hops", "hops-direct", "hops-rev", "graph"])
def test_protocol_contract(name):
    task = tasks.get(name)
    assert isinstance(task, tasks.Task)
    a = tasks.make_splits(30, 5, 5, task=name, seed=1)
    b = tasks.make_splits(30, 5, 5, task=name, seed=1)
    assert [p.question for p in a.train] == [p.question for p in b.train]  # same seed, same problems
    assert tasks.make_splits(30, 5, 5, task=name, seed=2).test != a.test
    train, val, test = ({p.question for p in s} for s in (a.train, a.val, a.test))
    assert not (train & val or train & test or val & test)
    assert len(a.test) == 5 * len(task.difficulties)
    for p in a.test:
        assert p.task == name and p.steps in task.difficulties and len(p.cot) == p.steps
        assert len(p.intermediates) == p.steps
        assert set(p.prompt + p.completion) <= set(task.characters)
        assert task.check(p.completion, p)
        wrong = next(other for other in a.train if str(other.answer) != str(p.answer))
        assert not task.check(wrong.completion, p)
        assert not task.check(p.completion.replace(tasks.ANSWER_MARKER, ""), p)  # no marker, no answer


@pytest.mark.parametrize(
    ("name", "edge", "line"),
    [("hops", "{a}>{b}", "{a}>{b}"), ("hops-direct", "{a}>{b}", "{a}{b}"), ("hops-rev", "{b}<{a}", "{a}{b}")],
)
def test_hops_chain_follows_the_edges(name, edge, line):
    task = tasks.get(name)
    for k in task.difficulties:
        p = task.sample(k, random.Random(k))
        *edges, query = p.question.split(";")
        successor = dict((e[2], e[0]) if edge == "{b}<{a}" else (e[0], e[2]) for e in edges)
        assert task.successor(p) == successor
        assert set(edges) == {edge.format(a=a, b=b) for a, b in successor.items()}
        assert len(successor) == 8 and sorted(successor.values()) == sorted(successor)  # one cycle's edges
        node = query[0]
        assert query == f"{node}^{k}?"
        for text, value in zip(p.cot, p.intermediates, strict=True):
            assert text == line.format(a=node, b=successor[node])
            node = successor[node]
            assert value == node
        assert p.answer == node and p.completion.endswith(f"###{node}")


def test_graph_answers_are_balanced_and_true():
    problems = tasks.make_splits(0, 0, 150, task="graph").test
    counts = Counter(p.answer for p in problems)
    assert abs(counts["yes"] - counts["no"]) < 0.2 * len(problems)
    for p in problems:
        *edges, query = p.question.split(";")
        source, target = query[0], query[2]
        children = {}
        for e in edges:
            a, b = e.split(">")
            children.setdefault(a, set()).add(b)
        seen, frontier, levels = {source}, {source}, []
        while frontier:
            frontier = {c for n in frontier for c in children.get(n, ()) if c not in seen}
            seen |= frontier
            if frontier:
                levels.append("".join(sorted(frontier)))
        assert p.answer == ("yes" if target in seen else "no")
        assert list(p.cot) == levels[: p.steps] and p.structure == f"{p.answer}{p.steps}"
        if p.answer == "no":
            assert len(levels) == p.steps and any(e.endswith(f">{target}") for e in edges)  # no shortcut


def test_answer_text_reads_after_the_last_marker():
    assert answer_text("x\n###yes") == "yes"
    assert answer_text("###no\n###d\nmore") == "d"
    assert answer_text("nothing") is None


class Parity:
    """A user's task: the parity of a bit string, one running parity per CoT line."""

    name = "parity-test"
    characters = "01p?#\n"
    difficulties = (3, 4)

    def sample(self, difficulty, rng):
        bits = "".join(rng.choice("01") for _ in range(difficulty + 1))
        running, parity = [], 0
        for bit in bits[1:]:
            parity ^= int(bit)
            running.append(str(parity))
        return Problem(f"p{bits}?", tuple(running), running[-1], difficulty, "p", tuple(running), self.name)

    def check(self, text, problem):
        return answer_text(text) == problem.answer


def test_registry_rejects_bad_tasks_and_names():
    with pytest.raises(ValueError, match="unknown task 'nope'; registered: arith, graph, hops, hops-direct, hops-rev"):
        tasks.get("nope")
    with pytest.raises(TypeError, match="lacks characters, difficulties, sample, check"):
        tasks.register(type("Half", (), {"name": "half"})())
    with pytest.raises(ValueError, match="must name both nodes"):
        tasks.HopsTask(step_format="{a}-")
    with pytest.raises(ValueError, match="edge_format may hold no"):
        tasks.HopsTask(edge_format="{a};{b}")
    with pytest.raises(ValueError, match="already registered"):
        tasks.register(tasks.HopsTask())
    with pytest.raises(ValueError, match="has difficulties \\[2, 3, 4, 5\\], not \\[9\\]"):
        tasks.make_splits(1, 1, 1, task="hops", difficulties=(9,))


def test_a_users_task_trains_and_evaluates(tmp_path, monkeypatch):
    from lensing.tasks import base
    from lensing.train import evaluate, run_curriculum
    from lensing.train.curriculum import TrainConfig

    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))  # the registration ends with the test
    task = tasks.register(Parity())
    assert "parity-test" in tasks.names()
    cfg = TrainConfig(
        task="parity-test", curriculum="cot", n_layers=1, d_model=32, n_heads=4, d_mlp=64,
        budget=30, lr=(3e-3,), batch_size=8, warmup=2, n_train=8, n_val=2, n_test=2,
    )  # fmt: skip
    records = run_curriculum(cfg, tmp_path / "run", log=lambda m: None)
    losses = records["cot"]["training"]["losses"]
    assert sum(losses[-5:]) < sum(losses[:5])
    lm = lensing.load(tmp_path / "run" / "cot")
    assert set(lm.tokenizer.get_vocab()) >= set(task.characters)
    problems = tasks.make_splits(0, 0, 3, task="parity-test").test
    result = evaluate(lm, problems)
    expected = [answer_text(t.text()) == p.answer for t, p in zip(result.traces, problems, strict=True)]
    assert result.correct == expected and len(result.correct) == 6


def test_readme_own_task_example_runs(tmp_path, monkeypatch):
    """The README's "bring your own task" block, run as written (in a scratch folder)."""
    import re
    from pathlib import Path

    from lensing.tasks import base

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"<!-- example:own-task -->\n```python\n(.*?)```", readme, re.S).group(1)
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    result = namespace["result"]
    assert len(result.correct) == 12 and result.n_latents == result.steps  # one forced latent per step
    assert (tmp_path / "runs" / "parity" / "stepsup" / "lensing.json").is_file()
