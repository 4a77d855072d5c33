"""The numbers lensing ships: headline facts of one `lensing figures` run, as JSON and as README blocks.

`lensing figures` writes the facts to ``figures/results.json`` and renders them as Markdown blocks
that replace the text between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->`` in
README.md, so no result in the README is typed in by hand. ``tests/test_shipped_numbers.py``
recomputes the facts on a small sample and checks them against the committed ones.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

VARIANT_NAMES = {"cot": "CoT (stage 1)", "hidden": "hidden-state latents (stage 2)", "lt": "LT-Tuning (stage 3)"}
COLLAPSE_METRICS = {
    "effective_rank": ("eff. rank", "{:.1f}"),
    "mean_cosine": ("cosine", "{:.3f}"),
    "frechet_to_tokens": ("Fréchet to tokens", "{:.1f}"),
    "mmd_to_tokens": ("MMD", "{:.2f}"),
    "norm_ratio": ("norm / token norm", "{:.1f}"),
}
TRAIL_COLUMNS = {
    "depth_ratio": "depth trail within/between",
    "chain_ratio": "chain trail within/between",
    "capture_rate": "library capture",
    "baseline_capture_rate": "bag-of-tokens capture",
    "effective_rank": "depth trail eff. rank",
}
_BLOCK = re.compile(r"<!-- generated:(?P<name>[\w-]+) -->\n(?P<body>.*?)<!-- /generated:(?P=name) -->", re.S)


def _number(x) -> float | None:
    """A JSON-safe float: NaN and inf become None."""
    x = float(x)
    return x if math.isfinite(x) else None


def _fmt(x: float | None, spec: str) -> str:
    return "n/a" if x is None else spec.format(x)


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (95% by default) of a binomial proportion, in percent.

    >>> [round(x, 1) for x in wilson_interval(50, 50)]
    [92.9, 100.0]
    """
    if n <= 0:
        return float("nan"), float("nan")
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low = 0.0 if correct == 0 else max(0.0, centre - half)  # the bounds are exact at 0 and n of n
    high = 1.0 if correct == n else min(1.0, centre + half)
    return 100 * low, 100 * high


def accuracy_facts(evals: dict) -> tuple[dict, dict, int]:
    """Accuracy (%) and mean latents per problem of each variant by difficulty (``"1"`` ...) and
    ``"all"``, and the number of problems per difficulty: the numbers of the README's accuracy block
    and of the accuracy figure."""
    accuracy, latents = {}, {}
    for variant, result in evals.items():
        table = result.to_dataframe().set_index("steps")
        accuracy[variant] = {s: _number(v) for s, v in table.accuracy.items()}
        latents[variant] = {s: _number(v) for s, v in table.mean_latents.items()}
    return accuracy, latents, int(table.n.iloc[0])


def overall_accuracy_sentence(accuracy: dict, n_per_difficulty: int) -> str:
    """The overall accuracies, the :lt - :cot gap and whether the 95% intervals overlap, in one
    sentence shared by the README's accuracy block and the accuracy figure's caption."""
    difficulties = [s for s in accuracy["cot"] if s != "all"]
    n = n_per_difficulty * len(difficulties)
    overall = {v: acc["all"] for v, acc in accuracy.items()}
    intervals = {v: wilson_interval(round(a * n / 100), n) for v, a in overall.items()}
    overlap = max(lo for lo, _ in intervals.values()) <= min(hi for _, hi in intervals.values())
    gap = overall["lt"] - overall["cot"]
    return (
        "Overall: "
        + ", ".join(f":{v} {a:.1f}%" for v, a in overall.items())
        + f". On {n} problems per variant, :lt is {abs(gap):.1f} points {'above' if gap >= 0 else 'below'} :cot "
        + "and the 95% Wilson intervals ("
        + ", ".join(f":{v} {lo:.1f}-{hi:.1f}%" for v, (lo, hi) in intervals.items())
        + (") all overlap." if overlap else ") do not all overlap.")
    )


def collect_facts(
    evals: dict, collapse_table, trails_table, n_chains: int, settings: dict, metas: dict[str, dict], headline
) -> dict:
    """Headline numbers from the evaluation, the collapse study (``embed`` read-out), the trails study,
    each variant's training record (its ``lensing.json``) and the headline table of every bundled
    variant (a :class:`lensing.studies.HeadlineReport`)."""
    facts: dict = {"settings": settings, "accuracy": {}, "mean_latents": {}}
    facts["headline"] = [
        {k: (_number(v) if isinstance(v, float | np.floating) else v) for k, v in row.items()}
        for row in headline.to_dataframe().to_dict("records")
    ]
    facts["training"] = {
        variant: {
            "stage": meta["stage"],
            "steps": meta["record"]["training"]["steps"],
            "wall_time_s": meta["record"]["training"]["wall_time_s"],
            "val_accuracy": _number(meta["record"]["eval"]["accuracy"]),
            "latents_per_training_example": _number(meta["record"]["training"]["latents_per_example"]),
        }
        for variant, meta in metas.items()
    }
    alpha = metas["lt"]["latent_config"]["alpha"]
    facts["accuracy"], facts["mean_latents"], facts["n_per_difficulty"] = accuracy_facts(evals)
    lt_traces = [t for t in evals["lt"].traces if t.n_latents]
    h = np.concatenate([t.latent_h.norm(dim=-1).numpy() for t in lt_traces])
    pred = np.concatenate([t.latent_pred.norm(dim=-1).numpy() for t in lt_traces])
    facts["fusion_parts"] = {
        "n_latents": len(h),
        "alpha": alpha,
        "alpha_h_norm": _number(alpha * h.mean()),
        "pred_part_norm": _number((1 - alpha) * pred.mean()),
    }
    embed = collapse_table[collapse_table.layer == "embed"]
    facts["collapse"] = {
        model.split(":")[-1]: {
            str(int(row.step)): {m: _number(row[m]) for m in COLLAPSE_METRICS} for _, row in part.iterrows()
        }
        for model, part in embed.groupby("model", sort=False)
    }
    facts["trails"] = {
        "n_chains": n_chains,
        "layers": {
            row.layer: {c: _number(row[c]) for c in TRAIL_COLUMNS if c in row} for _, row in trails_table.iterrows()
        },
    }
    return facts


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _accuracy_block(facts: dict) -> str:
    acc, lat = facts["accuracy"], facts["mean_latents"]
    steps = [s for s in acc["cot"] if s != "all"]
    header = ["variant", *(f"{s} step{'s' * (s != '1')}" for s in steps), "overall"]
    rows = [[f"`:{v}` accuracy (%)", *(_fmt(acc[v][s], "{:.1f}") for s in [*steps, "all"])] for v in acc]
    rows += [[f"`:{v}` mean latents", *(_fmt(lat[v][s], "{:.2f}") for s in [*steps, "all"])] for v in lat if v != "cot"]
    lt = [lat["lt"][s] for s in steps]
    grows = all(b > a for a, b in zip(lt, lt[1:], strict=False))
    fusion = facts["fusion_parts"]
    return "\n".join(
        [
            f"Test split, {facts['n_per_difficulty']} problems per difficulty, greedy:",
            "",
            _table(header, rows),
            "",
            f"`:lt` emits {lt[0]:.2f} latents per problem at 1 step and {lt[-1]:.2f} at {steps[-1]} steps "
            f"({'monotonically more' if grows else 'not monotonically more'} with each step). "
            f"{overall_accuracy_sentence(acc, facts['n_per_difficulty'])} In `:lt`'s fusion the hidden-state "
            f"part dominates: over its {fusion['n_latents']} latents the mean norm of alpha h is "
            f"{fusion['alpha_h_norm']:.2f} against {fusion['pred_part_norm']:.2f} for (1 - alpha) e_pred "
            f"(alpha = {fusion['alpha']}).",
        ]
    )


def _collapse_block(facts: dict) -> str:
    col = facts["collapse"]
    models = [m for m in ("hidden", "lt") if m in col]
    steps = list(col[models[0]])
    header = ["step", *(f"{label} `:{m}`" for metric, (label, _) in COLLAPSE_METRICS.items() for m in models)]
    rows = [
        [s, *(_fmt(col[m][s][metric], spec) for metric, (_, spec) in COLLAPSE_METRICS.items() for m in models)]
        for s in steps
    ]
    last = steps[-1]
    h, lt = col["hidden"][last], col["lt"][last]

    def compare(metric: str, label: str, spec: str) -> str:
        word = "higher" if lt[metric] > h[metric] else "lower"
        return f"a {word} {label} ({spec.format(lt[metric])} vs {spec.format(h[metric])})"

    settings = facts["settings"]
    return "\n".join(
        [
            f"{settings['n_collapse']} test problems; each model is forced to write a chain of "
            f'{settings["forced_latents"]} latents right after the prompt (Coconut\'s "forcing k thoughts"), and the '
            "metrics are computed over samples at each step on the latent *input* vectors (read-out `embed`):",
            "",
            _table(header, rows),
            "",
            f"At step {last}, `:lt` latents have {compare('effective_rank', 'cross-sample effective rank', '{:.1f}')}, "
            f"{compare('mean_cosine', 'cross-sample cosine', '{:.3f}')} and "
            f"{compare('frechet_to_tokens', 'Fréchet distance to the token embeddings', '{:.1f}')} than `:hidden` "
            "latents.",
        ]
    )


def _trails_block(facts: dict) -> str:
    trails, settings = facts["trails"], facts["settings"]
    layers = trails["layers"]
    present = [c for c in TRAIL_COLUMNS if any(c in v for v in layers.values())]
    rows = [[label, *(_fmt(v.get(c), "{:.2f}") for c in present)] for label, v in layers.items()]
    return "\n".join(
        [
            f"{settings['n_trails']} three-step test problems, {trails['n_chains']} complete chain trails "
            "(ratios below 1: same-structure trails are closer than different-structure ones):",
            "",
            _table(["layer", *(TRAIL_COLUMNS[c] for c in present)], rows),
        ]
    )


def _training_block(facts: dict) -> str:
    train = facts["training"]
    rows = [
        [
            f"`:{v}`",
            str(t["stage"]),
            str(t["steps"]),
            f"{t['wall_time_s']:.0f}",
            _fmt(t["val_accuracy"], "{:.1f}"),
            _fmt(t["latents_per_training_example"], "{:.2f}"),
        ]
        for v, t in train.items()
    ]
    total = sum(t["wall_time_s"] for t in train.values())
    return "\n".join(
        [
            "Training record, read from each variant's `lensing.json` (one run of `lensing train --task arith "
            "--preset tiny` on 2 CPU cores; each stage starts from the previous one):",
            "",
            _table(
                ["variant", "stage", "steps", "seconds", "val accuracy (%)", "latents inserted per training problem"],
                rows,
            ),
            "",
            f"The three stages took {total / 60:.0f} minutes of training in all.",
        ]
    )


def _headline_block(facts: dict) -> str:
    from lensing.studies.headline import HeadlineReport

    rows = pd.DataFrame(facts["headline"])
    numeric = [c for c in rows if c not in ("task", "variant", "model")]
    rows[numeric] = rows[numeric].astype(float)  # JSON nulls back to NaN
    report = HeadlineReport(rows, {})
    tasks = " and ".join(f"{int(group['n'].iloc[0])} {task}" for task, group in rows.groupby("task", sort=False))
    return "\n".join(
        [
            f"Every bundled variant on {tasks} test problems (each model on its own task; all difficulties, "
            "greedy), with 95% intervals (Wilson for accuracy, bootstrap over problems otherwise). Geometry on the "
            "latents each model really runs with, pooled, at the vectors fed back (`embed`); decodability by a "
            "linear probe at the last layer, beside the same probe trained on permuted labels; the ablation "
            "replaces every latent by another problem's:",
            "",
            report.to_markdown(),
            "",
            " ".join(report.sentences()),
        ]
    )


BLOCKS = {
    "headline": _headline_block,
    "accuracy": _accuracy_block,
    "training": _training_block,
    "collapse": _collapse_block,
    "trails": _trails_block,
}


def readme_blocks(facts: dict) -> dict[str, str]:
    """The generated README blocks, by name."""
    return {name: render(facts) for name, render in BLOCKS.items()}


def find_blocks(text: str) -> dict[str, str]:
    """The generated blocks present in a README text, by name."""
    return {m["name"]: m["body"].strip("\n") for m in _BLOCK.finditer(text)}


def splice_blocks(text: str, blocks: dict[str, str]) -> str:
    """``text`` with each named block's body replaced; a block without its markers raises ValueError.

    >>> splice_blocks("a\\n<!-- generated:x -->\\nold\\n<!-- /generated:x -->\\nb", {"x": "new"})
    'a\\n<!-- generated:x -->\\nnew\\n<!-- /generated:x -->\\nb'
    """
    missing = set(blocks) - set(find_blocks(text))
    if missing:
        raise ValueError(
            f"README has no markers for generated blocks {sorted(missing)}: add "
            + ", ".join(f"'<!-- generated:{n} -->' ... '<!-- /generated:{n} -->'" for n in sorted(missing))
        )

    def replace(match: re.Match) -> str:
        name = match["name"]
        body = blocks.get(name, match["body"].strip("\n"))
        return f"<!-- generated:{name} -->\n{body}\n<!-- /generated:{name} -->"

    return _BLOCK.sub(replace, text)
