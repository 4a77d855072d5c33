"""Flat records for tools: every collapse and decodability number of every model, one dict each.

``lensing collapse --json`` prints :func:`collapse_records`: a list of
``{"task", "variant", "seed", "latents", "step", "layer", "metric", "value", "ci_low", "ci_high"}``
where ``latents`` is ``"natural"`` or ``"forced"``, ``step`` is the latent's order in the trace
(1, 2, ...) or ``"all"`` (every latent of a trace pooled), ``layer`` a read-out label (``embed``,
``L0`` ...), ``seed`` the model's training seed, and ``ci_low <= value <= ci_high`` is a 95%
bootstrap interval over problems. Metrics: the geometric ones of
:func:`lensing.studies.collapse_ci` (effective rank, mean cosine, Fréchet distance and norm ratio
to the token embeddings; all models of one task and latent kind measured at one matched number
of vectors per draw) and the linear-probe ones of :func:`lensing.studies.decodability`
(``probe_accuracy:intermediate``, ``probe_baseline:intermediate`` for the shuffled-label probe,
``probe_majority:...``, ``probe_gain:...``, the same for ``answer``, and ``..._last`` for the last
character of the value). A cell with too few latents for a metric has no record.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pandas as pd

from lensing.model import LatentLM
from lensing.studies.collapse import LATENT_KINDS, LatentSet, collapse_ci, latent_states
from lensing.studies.decoding import LABELS, TARGETS, decodability

RECORD_KEYS = ("task", "variant", "seed", "latents", "step", "layer", "metric", "value", "ci_low", "ci_high")


def bundled_variants() -> list[str]:
    """One name per bundled checkpoint (aliases such as ``arith-tiny`` for ``arith-tiny:lt`` dropped)."""
    from lensing.zoo import BUNDLED

    chosen: dict[str, str] = {}
    for name, path in sorted(BUNDLED.items()):
        if path not in chosen or (":" in name and ":" not in chosen[path]):
            chosen[path] = name
    return sorted(chosen.values())


def model_identity(lm: LatentLM, name: str) -> tuple[str, str, int | None]:
    """``(task, variant, training seed)`` from a checkpoint's metadata; the name stands in for a
    missing variant, ``arith`` for a missing task, None for a missing seed."""
    meta = getattr(lm, "meta", None) or {}
    seed = (meta.get("record") or {}).get("training", {}).get("seed")
    variant = meta.get("variant") or (name.rsplit(":", 1)[-1] if ":" in name else name)
    return meta.get("task", "arith"), variant, None if seed is None else int(seed)


def task_problems(task: str, n: int, seed: int = 0) -> list:
    """The first ``n`` test problems of a task, all difficulties interleaved (the seeded test split)."""
    from lensing.tasks import get, make_splits

    per = -(-n // len(get(task).difficulties))
    return make_splits(0, 0, per, seed=seed, task=task).test[:n]


def _resolve_layers(lset: LatentSet, layers: tuple[str, ...] | list[str] | None) -> list[str]:
    """Layer labels of a set: ``"last"`` is its last read-out; None is every layer."""
    if layers is None:
        return list(lset.layer_labels)
    out = []
    for label in layers:
        label = lset.layer_labels[-1] if label == "last" else label
        if label not in lset.layer_labels:
            have = ", ".join(lset.layer_labels)
            raise ValueError(f"layer {label!r} is not a read-out of {lset.model}; it has {have}")
        if label not in out:
            out.append(label)
    return out


def make_record(identity: tuple, latents: str, step, layer: str, metric: str, value, lo, hi) -> dict | None:
    """One record, or None when the numbers are not finite. An interval that misses its value
    (a percentile interval can, for strongly skewed draws) is widened to include it."""
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (value, lo, hi)):
        return None
    task, variant, seed = identity
    record = {
        "task": task,
        "variant": variant,
        "seed": seed,
        "latents": latents,
        "step": "all" if step is None or (isinstance(step, float) and math.isnan(step)) else int(step),
        "layer": layer,
        "metric": metric,
        "value": float(value),
        "ci_low": float(min(lo, value)),
        "ci_high": float(max(hi, value)),
    }
    if seed is None:
        record["null_reasons"] = {"seed": "the checkpoint does not record its training seed"}
    return record


def collapse_records(
    models: dict[str, LatentLM],
    n: int = 300,
    latents: tuple[str, ...] = LATENT_KINDS,
    chain: int = 6,
    layers: tuple[str, ...] | None = ("embed", "last"),
    folds: int = 5,
    labels: tuple[str, ...] = tuple(LABELS),
    resamples: int = 200,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """Every model's collapse and decodability records (see the module docstring) on ``n`` test
    problems of its own task (problems drawn with ``seed``, which also seeds folds and bootstraps).

    ``chain`` is the forced chain's length and the last step reported; ``layers`` are read-out
    labels (``"last"``: each model's last layer; None: all); ``folds=0`` skips the probes. A
    model with no latent of a kind (a CoT model's natural latents) has no records of that kind.
    """
    unknown = [k for k in latents if k not in LATENT_KINDS]
    if unknown or not latents:
        raise ValueError(f"latents must be among {', '.join(LATENT_KINDS)}, got {list(latents)}")
    say = log or (lambda message: None)
    identity = {name: model_identity(lm, name) for name, lm in models.items()}
    problems: dict[str, list] = {}
    records: list[dict] = []
    for kind in latents:
        sets: list[tuple[str, LatentSet]] = []
        for name, lm in models.items():
            task = identity[name][0]
            problems.setdefault(task, task_problems(task, n, seed))
            say(f"{name}: {kind} latents on {len(problems[task])} {task} problems")
            lset = latent_states(lm, problems[task], kind, force_latents=chain, name=name)
            if sum(lset.counts) >= 2:
                sets.append((name, lset))
        # geometry: sets of one task and one layer list are measured together, at one matched size
        groups: dict[tuple, list[tuple[str, LatentSet]]] = {}
        for name, lset in sets:
            groups.setdefault((identity[name][0], tuple(_resolve_layers(lset, layers))), []).append((name, lset))
        for (_, labels_here), members in groups.items():
            say(f"{kind} latents: collapse metrics with bootstrap CIs ({', '.join(m for m, _ in members)})")
            embeddings = {name: models[name].model.get_input_embeddings().weight for name, _ in members}
            table = collapse_ci(
                [lset for _, lset in members],
                embeddings,
                layers=list(labels_here),
                max_step=chain,
                resamples=resamples,
                seed=seed,
                h_only=False,
            )
            for row in table.itertuples(index=False):
                records.append(make_record(identity[row.model], kind, row.step, row.layer, row.metric, *_numbers(row)))
        if not folds:
            continue
        for name, lset in sets:
            say(f"{name}: linear probes on {kind} latents")
            report = decodability(
                lset,
                problems[identity[name][0]],
                targets=TARGETS,
                labels=labels,
                layers=_resolve_layers(lset, layers),
                max_step=chain,
                folds=folds,
                resamples=resamples,
                seed=seed,
            )
            records += report.records(*identity[name])
    return [r for r in records if r is not None]


def _numbers(row) -> tuple[float, float, float]:
    return row.value, row.ci_low, row.ci_high


def records_frame(records: list[dict]) -> pd.DataFrame:
    """The records as a table (for ``--out`` CSV files and reading)."""
    return pd.DataFrame(records, columns=list(RECORD_KEYS))
