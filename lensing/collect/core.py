"""`lensing collect`: streaming, mergeable statistics over many generated traces, on one process or under torchrun.

Problems are cut into fixed chunks (``chunk_size`` problems each, in a seeded order). A chunk is
generated as one batch, probed in one hooked forward, and reduced to :class:`CollectStats`:

- per latent step and read-out layer: count, mean, centred scatter, norms and unit-vector sums of
  the residual at that latent (:class:`~lensing.metrics.MomentStats`: effective rank, participation
  ratio, covariance distances, mean cosine);
- per read-out layer and position kind: sums of the logit lens's entropy and KL to the final layer
  (and per latent step);
- per attention layer: the head-averaged attention mass from queries of each kind to keys of each
  kind, summed over queries;
- per difficulty: problems, correct answers, latents.

Every field is a sum, except the moments, which merge with Chan et al.'s pairwise update; no mean
of means anywhere. Each finished chunk is written to ``DIR/shards/`` (atomically), so a run that
is interrupted resumes from its chunks; the results (``stats.safetensors``, ``summary.json``) are
written only once every chunk is merged, each to a temporary name and renamed. Under torchrun
(``WORLD_SIZE > 1``) rank r takes chunks r, r+K, ...; the sums are all-reduced, the moments
all-gathered and merged in rank order; only rank 0 writes the results. Since a chunk's traces do
not depend on which process ran it, the merged numbers equal a single process's up to rounding.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from lensing._json import dumps as strict_dumps
from lensing.metrics import MomentStats
from lensing.model.trace import KINDS

FORMAT = 1
SHARDS = "shards"
RUN_FILE = "run.json"
STATS_FILE = "stats.safetensors"
SUMMARY_FILE = "summary.json"
_MOMENT_FIELDS = ("count", "mean", "scatter", "norm_sum", "unit_sum", "unit_count")


# ------------------------------------------------------------------ statistics
@dataclass
class CollectStats:
    """Mergeable statistics of any number of traces (see the module docstring)."""

    layer_labels: list[str]
    moments: list[list[MomentStats]]  # [latent step][read-out layer]
    sums: dict[str, Tensor]  # float64, additive

    @classmethod
    def empty(cls, layer_labels: list[str], d_model: int, max_steps: int, n_difficulties: int) -> CollectStats:
        n_read, n_attn, k = len(layer_labels), len(layer_labels) - 1, len(KINDS)

        def z(*shape: int) -> Tensor:
            return torch.zeros(shape, dtype=torch.float64)

        sums = {
            "problems": z(n_difficulties),
            "correct": z(n_difficulties),
            "latents": z(n_difficulties),
            "lens_positions": z(k),
            "lens_entropy": z(n_read, k),
            "lens_kl": z(n_read, k),
            "lens_latent_entropy": z(max_steps, n_read),
            "lens_latent_kl": z(max_steps, n_read),
            "attention_queries": z(k),
            "attention_share": z(n_attn, k, k),
        }
        moments = [[MomentStats.empty(d_model) for _ in layer_labels] for _ in range(max_steps)]
        return cls(list(layer_labels), moments, sums)

    @property
    def max_steps(self) -> int:
        return len(self.moments)

    def merge(self, other: CollectStats) -> CollectStats:
        """Statistics of both sets of traces, as if collected in one pass."""
        return CollectStats(
            self.layer_labels,
            [
                [a.merge(b) for a, b in zip(ra, rb, strict=True)]
                for ra, rb in zip(self.moments, other.moments, strict=True)
            ],
            {name: value + other.sums[name] for name, value in self.sums.items()},
        )

    # ---------------------------------------------------------- (de)serialising
    def to_tensors(self) -> dict[str, Tensor]:
        out = {f"sums.{name}": value.contiguous() for name, value in self.sums.items()}
        for s, row in enumerate(self.moments):
            for label, m in zip(self.layer_labels, row, strict=True):
                for field in _MOMENT_FIELDS:
                    value = getattr(m, field)
                    out[f"moments.{s + 1}.{label}.{field}"] = torch.as_tensor(value, dtype=torch.float64).contiguous()
        return out

    def from_tensors(self, tensors: dict[str, Tensor]) -> CollectStats:
        """Statistics with this object's layout read from ``tensors`` (a key or shape that does not fit: ValueError)."""
        mine = self.to_tensors()
        if set(tensors) != set(mine) or any(tensors[k].shape != v.shape for k, v in mine.items()):
            raise ValueError("statistics file does not match this run's layout (model, steps or task differ)")
        sums = {name: tensors[f"sums.{name}"].double() for name in self.sums}
        moments = []
        for s in range(self.max_steps):
            row = []
            for label in self.layer_labels:
                f = {field: tensors[f"moments.{s + 1}.{label}.{field}"].double() for field in _MOMENT_FIELDS}
                row.append(
                    MomentStats(
                        int(f["count"]), f["mean"], f["scatter"], f["norm_sum"], f["unit_sum"], int(f["unit_count"])
                    )
                )
            moments.append(row)
        return CollectStats(self.layer_labels, moments, sums)

    # ------------------------------------------------------------------ summary
    def summary(self, difficulties: list[int]) -> dict:
        """Means and geometry metrics from the sums (None where there is nothing to average)."""
        s = self.sums

        def ratio(a: Tensor, b: Tensor) -> list:
            pairs = zip(a.flatten(), b.flatten(), strict=True)
            return [None if float(d) == 0 else float(n) / float(d) for n, d in pairs]

        problems = float(s["problems"].sum())
        by_difficulty = [
            {
                "difficulty": d,
                "n": int(s["problems"][i]),
                "accuracy": ratio(s["correct"][i : i + 1], s["problems"][i : i + 1])[0],
                "latents_per_problem": ratio(s["latents"][i : i + 1], s["problems"][i : i + 1])[0],
            }
            for i, d in enumerate(difficulties)
        ]
        lens = []
        for layer, label in enumerate(self.layer_labels):
            for k, kind in enumerate(KINDS):
                n = float(s["lens_positions"][k])
                if n:
                    lens.append(
                        {
                            "layer": label,
                            "kind": kind,
                            "n": int(n),
                            "entropy": float(s["lens_entropy"][layer, k]) / n,
                            "kl_to_final": float(s["lens_kl"][layer, k]) / n,
                        }
                    )
        attention = []
        for layer in range(s["attention_share"].shape[0]):
            for q, q_kind in enumerate(KINDS):
                n = float(s["attention_queries"][q])
                if n:
                    shares = {k_kind: float(s["attention_share"][layer, q, k]) / n for k, k_kind in enumerate(KINDS)}
                    attention.append({"layer": layer, "query_kind": q_kind, "n": int(n), **shares})
        latent_steps = []
        for step, row in enumerate(self.moments):
            for layer, (label, m) in enumerate(zip(self.layer_labels, row, strict=True)):
                if m.count == 0:
                    continue
                latent_steps.append(
                    {
                        "step": step + 1,
                        "layer": label,
                        "n": m.count,
                        "effective_rank": float(m.effective_rank()),
                        "participation_ratio": float(m.participation_ratio()),
                        "mean_cosine": float(m.mean_pairwise_cosine()) if m.unit_count > 1 else None,
                        "mean_norm": float(m.mean_norm()),
                        "lens_entropy": float(s["lens_latent_entropy"][step, layer]) / m.count,
                        "lens_kl_to_final": float(s["lens_latent_kl"][step, layer]) / m.count,
                    }
                )
        return {
            "problems": int(problems),
            "accuracy": float(s["correct"].sum()) / problems if problems else None,
            "latents_per_problem": float(s["latents"].sum()) / problems if problems else None,
            "by_difficulty": by_difficulty,
            "latent_steps": latent_steps,
            "logit_lens": lens,
            "attention_shares": attention,
        }


def chunk_stats(
    lm, probe, task, problems, empty: CollectStats, difficulties: list[int], settings: dict
) -> CollectStats:
    """Generates for one chunk of problems, runs one hooked forward, and reduces it to statistics."""
    from lensing.probes.logit_lens import lens_statistics

    traces = lm.generate(
        [p.prompt for p in problems], max_new_tokens=settings["max_new_tokens"], force_latents=settings["force_latents"]
    )
    sums = {name: value.clone() for name, value in empty.sums.items()}
    for trace, problem in zip(traces, problems, strict=True):
        d = difficulties.index(problem.steps)
        sums["problems"][d] += 1
        sums["correct"][d] += float(bool(task.check(trace.text(), problem)))
        sums["latents"][d] += trace.n_latents
    n_layers = probe.n_layers
    names = probe.resid_names() + [f"blocks.{layer}.attn.hook_pattern" for layer in range(n_layers)]
    _, cache, batch = probe.run_with_cache(traces, names)
    flat = batch.flat(probe.resid_stack(cache), batch_dim=1)  # [read-out, position, d]
    _, _, kinds, _ = batch.index()
    kind = torch.tensor([KINDS.index(k) for k in kinds])
    onehot = torch.nn.functional.one_hot(kind, len(KINDS)).double()
    lens = lens_statistics(probe, flat, batch.next_tokens(), top_k=1)
    entropy, kl = lens.entropy.double(), lens.kl_to_final.double()
    sums["lens_positions"] += onehot.sum(0)
    sums["lens_entropy"] += entropy @ onehot
    sums["lens_kl"] += kl @ onehot
    # latent step of every position: its rank among its trace's latents (0 elsewhere)
    is_lat = kind == KINDS.index("latent")
    starts = torch.tensor([0, *batch.lengths]).cumsum(0)[:-1]
    cum = is_lat.long().cumsum(0)
    before = torch.cat([torch.zeros(1, dtype=torch.long), cum])[starts]
    trace_of = torch.repeat_interleave(torch.arange(len(traces)), torch.tensor(batch.lengths))
    step = torch.where(is_lat, cum - before[trace_of], 0)
    moments = [list(row) for row in empty.moments]
    flat64 = flat.detach().double().cpu()
    for s in range(1, empty.max_steps + 1):
        rows = step == s
        if not rows.any():
            continue
        moments[s - 1] = [m.update(flat64[layer, rows]) for layer, m in enumerate(moments[s - 1])]
        sums["lens_latent_entropy"][s - 1] += entropy[:, rows].sum(1)
        sums["lens_latent_kl"][s - 1] += kl[:, rows].sum(1)
    # attention: mass from each query kind to each key kind, head-averaged, summed over real queries
    width = batch.mask.shape[1]
    padded = torch.zeros(len(traces), width, len(KINDS), dtype=torch.float64)
    padded.view(-1, len(KINDS))[
        (torch.arange(len(traces))[:, None] * width + torch.arange(width)[None])[batch.mask.cpu().bool()]
    ] = onehot
    for layer in range(n_layers):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"].double().cpu().mean(1)  # [batch, query, key]
        mass = pattern @ padded  # [batch, query, key kind]
        sums["attention_share"][layer] += torch.einsum("bqi,bqj->ij", padded, mass)
    sums["attention_queries"] += onehot.sum(0)
    return CollectStats(empty.layer_labels, moments, sums)


# ------------------------------------------------------------------ distributed
def dist_context(device: str = "cpu") -> tuple[int, int, bool]:
    """(rank, world size, whether this call initialised the process group) from torchrun's environment.

    The process group uses gloo on CPU and nccl when the run is on CUDA.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, False
    import torch.distributed as dist

    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), dist.get_world_size(), True


def all_merge(stats: CollectStats, world: int) -> CollectStats:
    """Every rank's statistics merged: sums by all-reduce, moments by all-gather then Chan merges in rank order."""
    if world == 1:
        return stats
    import torch.distributed as dist

    sums = {}
    for name, value in stats.sums.items():
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        sums[name] = value
    keys = sorted(k for k in stats.to_tensors() if k.startswith("moments."))
    mine = stats.to_tensors()
    flat = torch.cat([mine[k].flatten() for k in keys])
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    merged = None
    for vector in gathered:
        parts, offset = {}, 0
        for k in keys:
            n = mine[k].numel()
            parts[k] = vector[offset : offset + n].view(mine[k].shape)
            offset += n
        parts.update({f"sums.{name}": value for name, value in stats.sums.items()})
        one = stats.from_tensors(parts)
        merged = one if merged is None else merged.merge(one)
    return CollectStats(stats.layer_labels, merged.moments, sums)


# ------------------------------------------------------------------------ run
def _atomic_write(target: Path, write: Callable[[Path], object]) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        tmp.replace(target)
    finally:
        if tmp.exists():
            tmp.unlink()


def _problems(task, n: int, seed: int) -> list:
    """``n`` test problems of the task, interleaved over its difficulties so every prefix is balanced."""
    from lensing.tasks import make_splits

    per = -(-n // len(task.difficulties))
    test = make_splits(0, 0, per, seed=seed, task=task).test
    by_difficulty: dict[int, list] = {}
    for p in test:
        by_difficulty.setdefault(p.steps, []).append(p)
    order = [by_difficulty[d][i] for i in range(per) for d in task.difficulties if i < len(by_difficulty.get(d, []))]
    return order[:n]


def _get_task(name: str):
    try:
        from lensing.tasks import get
    except ImportError:  # an older lensing without the task registry: arithmetic only
        if name != "arith":
            raise ValueError(f"unknown task {name!r}; this lensing has only 'arith'") from None
        from lensing.tasks import arith

        return arith.ArithTask()
    return get(name)


def collect_run(
    model: str,
    n: int,
    out: str | Path,
    task: str = "arith",
    seed: int = 0,
    chunk_size: int = 32,
    max_new_tokens: int = 160,
    force_latents: int = 0,
    max_steps: int = 8,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    log: Callable[[str], None] | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> dict | None:
    """Collects statistics over ``n`` problems into ``out``; returns the summary on rank 0 (None on other ranks).

    Resumes from the chunk files already in ``out`` when its ``run.json`` holds the same settings;
    a folder holding another run's files is refused. ``on_chunk(index)`` is called after each
    chunk is saved (tests use it to interrupt a run).
    """
    from lensing.probes import attach
    from lensing.zoo import load

    if min(n, chunk_size, max_new_tokens, max_steps) < 1 or force_latents < 0:
        raise ValueError("n, chunk size, max new tokens and max steps must be at least 1; force_latents at least 0")
    log = log or (lambda m: None)
    the_task = _get_task(task)
    settings = {
        "format": FORMAT,
        "model": str(model),
        "task": the_task.name,
        "n": n,
        "seed": seed,
        "chunk_size": chunk_size,
        "max_new_tokens": max_new_tokens,
        "force_latents": force_latents,
        "max_steps": max_steps,
        "dtype": str(dtype or torch.float32),
    }
    out = Path(out)
    rank, world, initialised = dist_context(device)
    try:
        _check_out(out, settings)  # every rank checks the same state before anyone writes
        _barrier(world)
        if rank == 0:
            (out / SHARDS).mkdir(parents=True, exist_ok=True)
            if not (out / RUN_FILE).is_file():
                _atomic_write(out / RUN_FILE, lambda p: p.write_text(json.dumps(settings, indent=1)))
        _barrier(world)
        if device.startswith("cuda") and world > 1:
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
        lm = load(model, device=device, dtype=dtype)
        problems = _problems(the_task, n, seed)
        difficulties = list(the_task.difficulties)
        probe = attach(lm)
        empty = CollectStats.empty(probe.layer_labels, lm.d_model, max_steps, len(difficulties))
        chunks = [problems[i : i + chunk_size] for i in range(0, len(problems), chunk_size)]
        stats = empty
        for index in range(rank, len(chunks), world):
            path = out / SHARDS / f"chunk-{index:05d}.safetensors"
            part = _read_chunk(path, empty)
            if part is None:
                part = chunk_stats(lm, probe, the_task, chunks[index], empty, difficulties, settings)
                tensors = part.to_tensors()
                _atomic_write(path, lambda p, t=tensors, i=index: save_file(t, str(p), metadata={"chunk": str(i)}))
                log(f"rank {rank}: chunk {index + 1}/{len(chunks)} done")
            else:
                log(f"rank {rank}: chunk {index + 1}/{len(chunks)} read from {path}")
            stats = stats.merge(part)
            if on_chunk is not None:
                on_chunk(index)
        stats = all_merge(stats, world)
        if rank != 0:
            return None
        summary = {"model": str(model), "task": the_task.name, **stats.summary(difficulties), "settings": settings}
        meta = {"complete": "true", "settings": json.dumps(settings)}
        _atomic_write(out / STATS_FILE, lambda p: save_file(stats.to_tensors(), str(p), metadata=meta))
        _atomic_write(out / SUMMARY_FILE, lambda p: p.write_text(strict_dumps(summary)))
        return summary
    finally:
        if initialised:
            import torch.distributed as dist

            dist.destroy_process_group()


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _check_out(out: Path, settings: dict) -> None:
    """``out`` is new, empty, or holds a run with the same settings (then it is resumed)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder")
    run_file = out / RUN_FILE
    if run_file.is_file():
        try:
            previous = json.loads(run_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{run_file} is corrupt ({err}); remove {out} or choose another --out") from None
        if previous != settings:
            changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
            raise ValueError(
                f"{out} holds a collection with other settings ({', '.join(changed)} differ); "
                "use the same settings to resume it, or choose another --out"
            )
    elif out.is_dir() and any(out.iterdir()):
        raise ValueError(f"--out {out} is not empty and holds no lensing collection; choose an empty or new folder")


def _read_chunk(path: Path, empty: CollectStats) -> CollectStats | None:
    """A finished chunk's statistics, or None when it is not there (or unreadable: then it is recomputed)."""
    if not path.is_file():
        return None
    try:
        return empty.from_tensors(load_file(str(path)))
    except (SafetensorError, OSError, ValueError) as err:
        print(f"lensing collect: recomputing {path.name} ({err})", file=sys.stderr)
        return None


def read_results(out: str | Path) -> tuple[dict[str, Tensor], dict]:
    """The tensors and summary of a finished collection; a folder without complete results raises ValueError."""
    out = Path(out)
    if not (out / SUMMARY_FILE).is_file() or not (out / STATS_FILE).is_file():
        raise ValueError(f"{out} holds no finished collection (run lensing collect again with the same settings)")
    return load_file(str(out / STATS_FILE)), json.loads((out / SUMMARY_FILE).read_text())


def format_summary(summary: dict) -> str:
    """A few human-readable lines: accuracy, and per latent step the geometry at the latent input."""
    lines = [
        f"{summary['model']} on {summary['task']}: {summary['problems']} problems, accuracy "
        f"{_pct(summary['accuracy'])}, {summary['latents_per_problem'] or 0:.2f} latents per problem"
    ]
    rows = [r for r in summary["latent_steps"] if r["layer"] == "embed"]
    if rows:
        lines.append("latent step   n   effective rank   participation ratio   mean cosine   lens entropy (embed)")
        for r in rows:
            cos = "-" if r["mean_cosine"] is None else f"{r['mean_cosine']:.3f}"
            lines.append(
                f"{r['step']:11d} {r['n']:4d}   {r['effective_rank']:14.2f}   {r['participation_ratio']:19.2f}"
                f"   {cos:>11s}   {r['lens_entropy']:.3f}"
            )
    return "\n".join(lines)


def _pct(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{100 * x:.1f}%"
