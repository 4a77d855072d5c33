"""The ``lensing`` command: train, eval and trace."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace


def _cmd_train(args: argparse.Namespace) -> None:
    from lensing.train import PRESETS, run_curriculum

    if args.task != "arith":
        raise SystemExit(f"unknown task {args.task!r}; available: arith")
    if args.preset not in PRESETS:
        raise SystemExit(f"unknown preset {args.preset!r}; available: {', '.join(PRESETS)}")
    cfg = replace(PRESETS[args.preset], seed=args.seed)
    command = "lensing " + " ".join(sys.argv[1:])
    records = run_curriculum(cfg, args.out, device=args.device, command=command,
                             log=lambda m: print(m, file=sys.stderr))
    for name, rec in records.items():
        print(f"{name}: val accuracy {rec['eval']['accuracy']:.1f}%  ({rec['training']['wall_time_s']:.0f}s)")


def _cmd_eval(args: argparse.Namespace) -> None:
    from lensing.tasks import make_splits
    from lensing.train import evaluate
    from lensing.zoo import load

    lm = load(args.model, device=args.device)
    split = make_splits(0, 0, args.n, seed=lm.meta.get("record", {}).get("training", {}).get("seed", 0)).test
    result = evaluate(lm, split)
    table = result.to_dataframe()
    if args.json:
        print(json.dumps({"model": args.model, **result.to_dict()}, indent=2))
    else:
        print(f"{args.model}: test accuracy by difficulty (n={args.n} per difficulty)")
        print(table.to_string(index=False, float_format=lambda x: f"{x:.2f}"))


def _cmd_trace(args: argparse.Namespace) -> None:
    from lensing.zoo import load

    lm = load(args.model, device=args.device)
    question = args.question.replace("\\n", "\n")
    if lm.answer_marker and not question.endswith("\n"):
        question += "\n"
    trace = lm.generate(question, max_new_tokens=args.max_new_tokens)[0]
    print(f"{args.model}: {trace.n_latents} latent(s); generated text (latents as ◆):")
    print(trace.text("◆"))
    print()
    print(trace)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lensing", description="Look inside latent-reasoning language models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="run the three-stage LT-Tuning curriculum")
    p.add_argument("--task", default="arith")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="accuracy and latent counts by difficulty on the test split")
    p.add_argument("model")
    p.add_argument("--n", type=int, default=100, help="problems per difficulty")
    p.add_argument("--json", action="store_true")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("trace", help="generate for one question and show latents and confidence")
    p.add_argument("model")
    p.add_argument("question")
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_trace)

    args = parser.parse_args(argv)
    try:
        args.func(args)
    except ValueError as err:  # bad input: say what is wrong, no traceback
        raise SystemExit(f"lensing {args.command}: {err}") from err


if __name__ == "__main__":
    main()
