"""``lensing intervene`` and ``lensing patch``: registered on the main parser by :func:`add_commands`."""

from __future__ import annotations

import argparse
import json

from lensing._json import dumps


def _problems(n: int, seed: int, steps: int | None = None):
    from lensing.tasks import MAX_STEPS, make_splits

    if n <= 0:
        raise ValueError(f"--n must be positive, got {n}")
    if steps is not None and not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"--steps must be between 1 and {MAX_STEPS}, got {steps}")
    if steps is None:
        return make_splits(0, 0, -(-n // MAX_STEPS), seed=seed).test[:n]
    return make_splits(0, 0, n, seed=seed, difficulties=(steps,)).test


def _load(name: str, device: str):
    from lensing.zoo import load

    return load(name, device=device)


def _cmd_intervene(args: argparse.Namespace) -> None:
    from lensing.interventions import Intervention, intervene

    spec = Intervention.parse(args.kind, step=args.step, seed=args.seed)
    problems = _problems(args.n, args.seed)
    lm = _load(args.model, args.device)
    result = intervene(lm, problems, spec, model=args.model, seed=args.seed)
    summary = result.summary()
    if args.json:
        per_example = json.loads(result.to_dataframe().to_json(orient="records"))
        print(dumps({**summary, "per_example": per_example}))
        return
    print(f"{args.model}: {spec.name} on {summary['n']} test problems (95% bootstrap CIs, paired, seed {args.seed})")
    for label, key in (("clean", "clean"), ("intervened", "intervened")):
        part = summary[key]
        print(f"  {label:>16s} accuracy {part['accuracy']:.3f}  [{part['ci'][0]:.3f}, {part['ci'][1]:.3f}]")
    ch, dlp = summary["answer_changed"], summary["delta_logprob_gold"]
    print(f"  {'answer changed':>16s} {ch['rate']:.3f}  [{ch['ci'][0]:.3f}, {ch['ci'][1]:.3f}]")
    print(f"  {'delta logp(gold)':>16s} {dlp['mean']:.3f}  [{dlp['ci'][0]:.3f}, {dlp['ci'][1]:.3f}]")
    lat = summary["mean_latents"]
    print(f"  {'mean latents':>16s} clean {lat['clean']:.2f}, intervened {lat['intervened']:.2f}, replaced {lat['replaced']:.2f}")


def _cmd_patch(args: argparse.Namespace) -> None:
    import lensing
    from lensing.interventions.patching import activation_patching

    problems = _problems(args.n, args.seed, steps=args.steps)
    lm = _load(args.model, args.device)
    result = activation_patching(
        lensing.attach(lm), problems, components=(args.component,), model=args.model, seed=args.seed
    )
    out = result.to_json(args.component)
    if args.json:
        print(dumps(out))
        return
    print(
        f"{args.model}: fraction of the answer logit difference recovered by patching {args.component} "
        f"from clean into corrupted runs ({out['n']} pairs of same-structure {args.steps}-step problems)"
    )
    print(result.grid(args.component, None).to_string(float_format=lambda x: f"{x:.3f}"))


def add_commands(subparsers) -> None:
    """Adds ``intervene`` and ``patch`` to the ``lensing`` command's subparsers."""
    from lensing.interventions.generation import KINDS

    p = subparsers.add_parser("intervene", help="accuracy and answer effects when latents are replaced or thinking is changed")
    p.add_argument("model")
    p.add_argument("--kind", required=True, help=f"one of {', '.join(KINDS)}; force and truncate take K, e.g. 'force 2'")
    p.add_argument("--step", default="all", help="'all' or the latent index (0-based) to intervene on")
    p.add_argument("--n", type=int, default=120, help="test problems (all difficulties)")
    p.add_argument("--seed", type=int, default=0, help="problems, shuffle donors, noise and bootstrap")
    p.add_argument("--json", action="store_true")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_intervene)

    p = subparsers.add_parser("patch", help="activation patching by latent step and layer, clean -> corrupted")
    p.add_argument("model")
    p.add_argument("--n", type=int, default=60, help="test problems; paired within structure")
    p.add_argument("--steps", type=int, default=3, help="problem difficulty (one, so structures repeat)")
    p.add_argument("--component", default="resid", help="resid, attn or mlp")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_patch)
