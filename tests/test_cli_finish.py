"""Daily-use finish of the command line: strict JSON, quiet by default, --version, help everywhere,
short reprs, and `lensing figures` building every figure it can."""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
from importlib.metadata import version

import pytest

import lensing
from lensing import _json
from lensing.cli import build_parser, main
from lensing.viz import paper


def strict(text: str):
    """json.loads that refuses NaN, Infinity and -Infinity (as the issue's one-liner does)."""

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def _walk(obj, key=None):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, k)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v, key)
    else:
        yield key, obj


def _check_types(report) -> None:
    """Integers as integers in count/index fields, every null explained by its object's null_reasons."""
    for key, value in _walk(report):
        if key in _json.INTEGER_FIELDS:  # a count or index is an int (or a label such as "embed" / "all")
            assert not isinstance(value, float), (key, value)
        assert not (isinstance(value, float) and not math.isfinite(value)), (key, value)

    def nulls(obj):
        if isinstance(obj, dict):
            for k, v in obj.items():
                if v is None:
                    assert k in obj.get("null_reasons", {}), (k, obj)
                nulls(v)
        elif isinstance(obj, list):
            for v in obj:
                nulls(v)

    nulls(report)


def test_strict_json_helper_on_known_cases():
    text = _json.dumps(
        [{"n": 4.0, "step": float("nan"), "x": float("inf"), "ok": 0.5}, {"n": 2, "layer": "embed"}],
        {"step": "no latent step here"},
    )
    rows = strict(text)
    assert rows[0] == {
        "n": 4,
        "step": None,
        "x": None,
        "ok": 0.5,
        "null_reasons": {"step": "no latent step here", "x": _json.GENERIC_REASON},
    }
    assert rows[1] == {"n": 2, "layer": "embed"}
    with pytest.raises(ValueError):
        strict('{"a": NaN}')


def test_eval_json_is_strict_and_quiet_by_default():
    """A real subprocess: stdout is strict JSON, stderr has no third-party bars or warnings."""
    quiet = subprocess.run(
        [sys.executable, "-m", "lensing.cli", "eval", "arith-tiny", "--n", "1", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert quiet.returncode == 0, quiet.stderr
    report = strict(quiet.stdout)
    _check_types(report)
    assert [row["steps"] for row in report["table"]] == [1, 2, 3, 4, 5, 6, "all"]
    assert all(isinstance(row["n"], int) for row in report["table"])
    assert "Loading weights" not in quiet.stderr and "Warning" not in quiet.stderr, quiet.stderr


def test_verbose_shows_third_party_progress(capsys):
    main(["--verbose", "eval", "arith-tiny", "--n", "1"])
    assert "Loading weights" in capsys.readouterr().err


def test_trails_and_collapse_json_are_strict_with_reasons(tmp_path, capsys):
    main(["trails", "arith-tiny", "--n", "6", "--json", "--out", str(tmp_path / "t")])
    report = strict(capsys.readouterr().out)
    _check_types(report)
    embed = report["layers"][0]
    assert embed["layer"] == "embed" and embed["depth_ratio"] is None
    assert "same prompt-end token" in embed["null_reasons"]["depth_ratio"]
    assert all(isinstance(row["source_position"], int) for row in report["attribution_trail"])
    assert strict((tmp_path / "t" / "trails.json").read_text())[0]["null_reasons"]
    assert {row["positions"] for row in report["layers"]} == {"text positions"}
    assert {row["positions"] for row in report["rut"]} == {"text positions", "latent (natural)", "latent (forced)"}
    embed = [r for r in report["rut"] if r["positions"] == "text positions" and r["layer"] == "embed"]
    assert {r["metric"] for r in embed if r["value"] is None} == {"within", "between", "ratio", "capture_rate"} | {
        "capture_chance",
        "capture_gain",
    }
    assert all("same point" in r["null_reasons"]["value"] for r in embed if r["value"] is None)

    collapse = ["collapse", "--model", "arith-tiny:hidden", "--n", "6", "--latents", "2"]
    main([*collapse, "--json", "--out", str(tmp_path / "c")])
    rows = strict(capsys.readouterr().out)
    _check_types(rows)
    assert {row["latents"] for row in rows} == {"natural", "forced"}
    assert all(row["step"] == "all" or isinstance(row["step"], int) for row in rows)
    assert strict((tmp_path / "c" / "collapse.json").read_text()) == rows


def test_every_argument_of_every_command_has_help():
    parser = build_parser()
    missing, commands = [], []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                commands.append(name)
                missing += [(name, a.dest) for a in sub._actions if not a.help or a.help == argparse.SUPPRESS]
        elif not action.help:
            missing.append(("lensing", action.dest))
    assert {"train", "eval", "trace", "collapse", "trails", "figures", "explore"} <= set(commands)
    assert missing == []


def test_every_command_line_in_the_readme_parses():
    """Each ``lensing ...`` line in the README's shell blocks, its [optional] parts dropped, is accepted."""
    import shlex
    from pathlib import Path

    readme = Path(__file__).parents[1] / "README.md"
    blocks = re.findall(r"```bash\n(.*?)```", readme.read_text(), flags=re.S)
    blocks = [block.replace("\\\n", " ") for block in blocks]  # a command continued over lines is one line
    lines = [line.split("  #")[0] for block in blocks for line in block.splitlines() if line.startswith("lensing ")]
    assert len(lines) >= 15
    parser = build_parser()
    for line in lines:
        words = shlex.split(re.sub(r"\[[^\]]*\]", "", line))[1:]
        if words == ["--version"]:
            continue
        try:
            parser.parse_args(words)
        except SystemExit:
            raise AssertionError(f"README command does not parse: {line}") from None


def test_version(capsys):
    assert lensing.__version__ == version("lensing")
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"lensing {lensing.__version__}"


def test_trace_repr_is_short_and_html_marks_latents():
    lm = lensing.load("arith-tiny")
    trace = lm.generate("a=97;b=a+8;c=b-9;d=c+4;e=d+1;f=e-3;f?\n")[0]
    text = repr(trace)
    assert len(text) < 200 and text.startswith(f"Trace({len(trace)} positions: ")
    assert f"{trace.n_latents} latent" in text and "◆" in text
    page = trace._repr_html_()
    assert page.count("<span title=") == len(trace)
    assert page.count(">◆</span>") == trace.n_latents > 0
    assert "Trace: " in str(trace) and len(str(trace)) > len(text)  # str keeps the full table


def test_figures_build_what_they_can_and_list_failures(tmp_path, monkeypatch, capsys):
    """A failing figure builder loses only its own figure; a failing analysis fails the CLI with a list,
    keeping the files an earlier run wrote."""

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(paper, "trails_step_figure", broken)
    run = paper.build_figures(n_trails=12, log=lambda m: None, only=["trails_step_cosine", "trails_structure_ratio"])
    assert [f.name for f in run.figures] == ["trails_structure_ratio"]
    assert run.failed == {"trails_step_cosine": "RuntimeError: boom"} and run.facts is None
    out = tmp_path / "figures"
    paper.write_figures(run.figures, out, ("html",), run.facts, keep=True, failed=run.failed)
    index = (out / "README.md").read_text()
    assert "## Failed in the last run" in index and "`trails_step_cosine`: RuntimeError: boom" in index
    assert (out / "plotly.min.js").exists() and (out / "trails_structure_ratio.html").exists()

    monkeypatch.setattr("lensing.studies.trails_study", broken)
    with pytest.raises(SystemExit) as exit_info:
        main(["figures", "--only", "trails_step_cosine", "--out", str(out), "--formats", "html"])
    assert "1 of 1 figure(s) failed" in str(exit_info.value)
    assert "failed: trails_step_cosine: RuntimeError: boom" in capsys.readouterr().err
    assert (out / "trails_structure_ratio.html").exists()  # kept: --only and failures never remove others
    with pytest.raises(SystemExit) as exit_info:
        main(["figures", "--only", "no_such_figure", "--out", str(out)])
    assert "no such figure" in str(exit_info.value)
