"""The ``lensing`` command: train, eval, trace, collapse, trails and figures.

Arguments are checked before any work; a problem the user can fix prints one line
``lensing <command>: <what is wrong and what to do>`` and exits non-zero.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path


def _cmd_train(args: argparse.Namespace) -> None:
    from lensing.tasks import get as get_task
    from lensing.train import PRESETS, run_curriculum
    from lensing.train.curriculum import stage_plan
    from lensing.zoo import resolve_dtype

    task = get_task(args.task)
    dtype = resolve_dtype(args.dtype)
    preset = args.preset or ("base" if args.base else task.name if task.name in PRESETS else "tiny")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; available: {', '.join(PRESETS)}")
    cfg = replace(PRESETS[preset], seed=args.seed, task=task.name)
    if args.curriculum:
        cfg = replace(cfg, curriculum=args.curriculum)
    if args.latent_kind:
        cfg = replace(cfg, latent_kind=args.latent_kind)
    if args.latents_per_step:
        cfg = replace(cfg, latents_per_step=args.latents_per_step)
    if args.max_steps:
        cfg = replace(cfg, budget=args.max_steps)
    if args.steps:
        try:
            steps = tuple(int(x) for x in args.steps.split(","))
        except ValueError:
            raise ValueError(f"--steps {args.steps!r}: give whole numbers, e.g. 600,300,300") from None
        if min(steps) < 1:
            raise ValueError(f"--steps {args.steps!r}: give positive step counts, one per stage")
        cfg = replace(cfg, steps=steps, budget=None)
    if args.lr:
        try:
            lr = tuple(float(x) for x in args.lr.split(","))
        except ValueError:
            raise ValueError(f"--lr {args.lr!r}: give numbers, e.g. 2e-3,1e-3") from None
        if min(lr) <= 0:
            raise ValueError(f"--lr {args.lr!r}: learning rates must be positive")
        cfg = replace(cfg, lr=lr)
    if args.advance_at is not None:
        cfg = replace(cfg, advance_at=args.advance_at, check_every=args.check_every)
    if args.mix_previous is not None:
        cfg = replace(cfg, mix_previous=args.mix_previous)
    if args.lr_schedule is not None:
        cfg = replace(cfg, lr_schedule=args.lr_schedule)
    for assignment in args.set or ():
        cfg = replace(cfg, **_config_override(cfg, assignment))
    stage_plan(cfg)  # a stage count that does not fit stops here, before any work
    command = "lensing " + " ".join(sys.argv[1:])
    records = run_curriculum(
        cfg,
        args.out,
        device=args.device,
        command=command,
        base=args.base,
        dtype=dtype,
        log=lambda m: print(m, file=sys.stderr),
        resume=args.resume,
        overwrite=args.overwrite,
        checkpoint_every=args.checkpoint_every,
        init=args.init,
    )
    for name, rec in records.items():
        accuracy = f"val accuracy {rec['eval']['accuracy']:.1f}%" if rec["eval"] else "no validation split"
        print(f"{name}: {accuracy}, {rec['training']['steps']} steps ({rec['training']['wall_time_s']:.0f}s)")


def _config_override(cfg, assignment: str) -> dict:
    """``{"n_heads": 8}`` from ``"n_heads=8"``, the value read as the field's current type."""
    from dataclasses import fields

    name, _, text = assignment.partition("=")
    known = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
    current = known.get(name)
    if not text or name not in known or not isinstance(current, (bool, int, float, str)):
        settable = ", ".join(k for k, v in known.items() if isinstance(v, (bool, int, float, str)))
        raise ValueError(f"--set {assignment!r}: give FIELD=VALUE with FIELD one of {settable}")
    if isinstance(current, bool):
        if text.lower() not in ("true", "false"):
            raise ValueError(f"--set {assignment!r}: {name} is true or false")
        return {name: text.lower() == "true"}
    try:
        return {name: type(current)(text)}
    except ValueError:
        kind = "a whole number" if isinstance(current, int) else "a number"
        raise ValueError(f"--set {assignment!r}: {name} must be {kind}") from None


def _cmd_compare(args: argparse.Namespace) -> None:
    from lensing.train.compare import compare
    from lensing.viz.results import find_blocks

    if args.readme and args.block not in find_blocks(Path(args.readme).read_text()):  # before hours of evaluation
        marker = f"<!-- generated:{args.block} -->"
        raise ValueError(f"{args.readme} has no '{marker}' ... '<!-- /generated:{args.block} -->' block to rewrite")
    with progress("compare", 1) as bar:
        bar.set_postfix_str(f"evaluating {len(args.models)} models")
        result = compare(args.models, n=args.n, ablate=not args.no_ablations, max_new_tokens=args.max_new_tokens)
        bar.update()
    if args.out:
        result.save(args.out)
    if args.readme:
        from lensing.viz.results import splice_blocks

        readme = Path(args.readme)
        readme.write_text(splice_blocks(readme.read_text(), {args.block: result.readme_block()}))
    if args.json:
        from lensing._json import dumps

        reasons = {
            "ci_low": "one seed: no interval over seeds",
            "ci_high": "one seed: no interval over seeds",
        }
        print(dumps(result.to_dataframe().to_dict(orient="records"), reasons))
    else:
        print(result.to_markdown())


def _cmd_eval(args: argparse.Namespace) -> None:
    from lensing.tasks import make_splits
    from lensing.train import evaluate
    from lensing.zoo import load

    with progress("eval", 2) as bar:
        bar.set_postfix_str("loading the model")
        lm = load(args.model, device=args.device)
        bar.update()
        training = lm.meta.get("record", {}).get("training", {})
        seed = training.get("data_seed", training.get("seed", 0))  # the splits the model was trained on
        split = make_splits(0, 0, args.n, seed=seed, task=lm.meta.get("task", "arith")).test
        bar.set_postfix_str(f"generating for {len(split)} test problems")
        result = evaluate(lm, split)
        bar.update()
    table = result.to_dataframe()
    if args.json:
        from lensing._json import dumps

        report = result.to_dict()
        for row in report["table"]:  # difficulty rows count steps; the overall row is labelled "all"
            row["steps"] = int(row["steps"]) if str(row["steps"]).isdigit() else row["steps"]
        print(dumps({"model": args.model, **report}, indent=2))
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
    from lensing.probes import attach

    lens = attach(lm).logit_lens(trace, top_k=3)
    last = trace.prompt_length - 1
    print(f"\nlogit lens at the last prompt position ({last}): top-3 per layer")
    for layer, label in enumerate(lens.layer_labels):
        tops = ", ".join(
            f"{lens.id_to_str[int(i)]!r} {float(p):.2f}"
            for i, p in zip(lens.stats.top_ids[layer, last], lens.stats.top_probs[layer, last], strict=True)
        )
        print(f"  {label:>6s}: {tops}")


def progress(command: str, total: int):
    """lensing's own progress bar for a command's stages: on stderr, shown only on a terminal."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=command, unit="stage", file=sys.stderr, disable=None)


def _test_problems(n: int, steps: int | None = None, seed: int = 0):
    from lensing.tasks import MAX_STEPS, make_splits

    if steps is None:
        return make_splits(0, 0, -(-n // MAX_STEPS), seed=seed).test[:n]
    return make_splits(0, 0, n, seed=seed, difficulties=(steps,)).test


def _write_table(table, out: str | None, stem: str, reasons: dict[str, str] | None = None) -> None:
    """``stem.csv`` and ``stem.json`` (strict JSON, see :mod:`lensing._json`) in ``out``, each written
    to a temporary name and renamed."""
    from lensing._json import dumps

    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        for suffix, write in (
            ("csv", lambda f: table.to_csv(f, index=False)),
            ("json", lambda f: f.write_text(dumps(table.to_dict(orient="records"), reasons) + "\n")),
        ):
            target = Path(out) / f"{stem}.{suffix}"
            tmp = target.with_name(f".{target.name}.tmp")
            write(tmp)
            tmp.replace(target)


def positive_int(text: str) -> int:
    """argparse type for counts: a clear message for 0, negatives and non-numbers."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def check_device(name: str) -> str:
    """A device torch can use here; names the fix for a typo or a missing GPU."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {name}: CUDA is not available (this torch build or machine has no GPU); use cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: MPS is not available here; use cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {name}: lensing runs on cpu, cuda or mps")
    return name


def check_output_dir(path: str) -> None:
    """``path`` is a folder that exists or can be created, and is writable: checked before the work."""
    import tempfile

    target = Path(path)
    if target.exists() and not target.is_dir():
        raise ValueError(f"--out {path} is a file; give a folder")
    existing = target
    while not existing.exists():
        existing = existing.parent
    try:  # a real write: permission bits say nothing for root or read-only mounts
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as err:
        raise ValueError(f"--out {path}: cannot write in {existing} ({err.strerror}); choose another folder") from None


# why a field of a --json record can be null (see lensing._json)
_SAME_EMBED = "at the embed read-out every trail starts from the same prompt-end token, so distances are undefined"
TRAILS_NULL_REASONS = {
    "depth_within": _SAME_EMBED,
    "depth_between": _SAME_EMBED,
    "depth_ratio": _SAME_EMBED,
    "capture_rate": _SAME_EMBED,
    "chain_within": _SAME_EMBED,
    "chain_between": _SAME_EMBED,
    "chain_ratio": _SAME_EMBED,
    # the rut test records (lensing.studies.latent_trails)
    "step": "chain trails and text positions have no latent step (depth trails at latents give theirs)",
    "value": "undefined: every trail is the same point here (at embed every prompt ends with one token) "
    "or the trails hold one structure",
    "ci_low": "undefined where the value is",
    "ci_high": "undefined where the value is",
}
COLLAPSE_NULL_REASONS = {"seed": "the checkpoint does not record its training seed"}


def _cmd_collapse(args: argparse.Namespace) -> None:
    import pandas as pd

    from lensing.studies.records import bundled_variants, collapse_records, records_frame
    from lensing.zoo import load

    # --latents N (a whole number) is the older spelling of --chain N, with both kinds measured
    kinds, chain = ("both", int(args.latents)) if args.latents.isdigit() else (args.latents, args.chain)
    if kinds not in ("natural", "forced", "both") or chain < 1:
        raise ValueError(f"--latents {args.latents!r}: give natural, forced or both (--chain sets the chain length)")
    if args.folds == 1 or args.folds < 0:
        raise ValueError(f"--folds {args.folds}: give 0 (no probes) or at least 2")
    latents = ("natural", "forced") if kinds == "both" else (kinds,)
    names = list(dict.fromkeys(args.model or bundled_variants()))
    layers = None if args.layers == "all" else tuple(part.strip() for part in args.layers.split(",") if part.strip())
    labels = tuple(dict.fromkeys(part.strip() for part in args.labels.split(",") if part.strip()))
    if not labels or any(label not in ("value", "last") for label in labels):
        raise ValueError(f"--labels {args.labels!r}: give value, last or value,last")
    with progress("collapse", len(latents) * (2 * len(names) + 1) + 1) as bar:
        bar.set_postfix_str(f"loading {len(names)} models")
        models = {name: load(name) for name in names}
        bar.update()

        def log(message: str) -> None:
            bar.set_postfix_str(message)
            bar.update()

        records = collapse_records(
            models,
            n=args.n,
            latents=latents,
            chain=chain,
            layers=layers,
            folds=args.folds,
            labels=labels,
            seed=args.seed,
            log=log,
        )
    table = records_frame(records)
    _write_table(table, args.out, "collapse", COLLAPSE_NULL_REASONS)
    if args.json:
        from lensing._json import dumps

        print(dumps(records, COLLAPSE_NULL_REASONS))
        return
    cells = table.assign(
        cell=[
            f"{v:.3g} [{lo:.3g}, {hi:.3g}]" for v, lo, hi in zip(table.value, table.ci_low, table.ci_high, strict=True)
        ],
        step=table.step.astype(str),
    )
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.max_rows", 2000):
        for (task, kind), part in cells.groupby(["task", "latents"], sort=False):
            print(
                f"\n== {task}: {kind} latents, {args.n} test problems; value [95% CI over problems]; "
                "step = latent order in the trace, all = every latent pooled =="
            )
            wide = part.pivot_table(
                index=["metric", "step", "layer"], columns="variant", values="cell", aggfunc="first", sort=False
            )
            print(wide.fillna("").to_string())


def _cmd_trails(args: argparse.Namespace) -> None:
    import pandas as pd

    from lensing.studies import trails_study
    from lensing.studies.latent_trails import latent_trails_study
    from lensing.studies.records import model_identity
    from lensing.tasks import make_splits
    from lensing.zoo import load

    kinds = {"both": ("natural", "forced"), "natural": ("natural",), "forced": ("forced",), "none": ()}
    if args.latents not in kinds:
        raise ValueError(f"--latents {args.latents!r}: give natural, forced, both or none")
    with progress("trails", 3) as bar:
        bar.set_postfix_str("loading the model")
        lm = load(args.model)
        task = model_identity(lm, args.model)[0]
        problems = make_splits(0, 0, args.n, seed=args.seed, difficulties=(args.steps,), task=task).test
        bar.update()
        bar.set_postfix_str(f"{args.n} problems: text-position trails and attribution")
        report = trails_study(lm, problems, seed=args.seed)
        bar.update()
        bar.set_postfix_str(f"{args.n} problems: trails through the latents, rut tests with bootstrap CIs")
        rut = latent_trails_study(
            lm,
            problems,
            latents=kinds[args.latents],
            force_latents=args.chain,
            resamples=args.resamples,
            seed=args.seed,
            name=args.model,
        )
        bar.update()
    text = report.table.copy()
    text.insert(0, "positions", "text positions")  # prompt end and CoT line ends: no latent involved
    _write_table(text, args.out, "trails", TRAILS_NULL_REASONS)
    _write_table(rut.table, args.out, "trails_rut", TRAILS_NULL_REASONS)
    if args.json:
        from lensing._json import dumps

        layers = text.to_dict(orient="records")
        attribution = report.attribution.to_dict(orient="records")
        out = {"layers": layers, "attribution_trail": attribution, "rut": rut.records()}
        print(dumps(out, TRAILS_NULL_REASONS))
        return
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.max_rows", 500):
        print(
            f"{args.model}: trails on {len(problems)} {args.steps}-step {task} test problems "
            f"({len(set(p.structure for p in problems))} structures)"
        )
        print(
            "\n== rut test: within/between-structure distance ratio (< 1: rut), library capture rate, the "
            "bag-of-tokens capture of the same problems and the paired gain; value [95% CI over problems] =="
        )
        print(rut.summary().fillna("").to_string())
        print("\n== text positions (depth trail at the prompt end, chain trail at CoT line ends), no CIs ==")
        print(report.table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
        print("\nattribution trail of the first answer digit (problem 1):")
        print(report.attribution.to_string(index=False, float_format=lambda x: f"{x:.3f}"))


def _cmd_figures(args: argparse.Namespace) -> None:
    from lensing.viz.paper import FIGURE_NAMES, build_figures, check_output_folder, output_files, write_figures
    from lensing.viz.results import BLOCKS, readme_blocks, splice_blocks

    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    readme = Path(args.readme) if args.readme else None
    only = args.only or None
    for name in only or ():
        if name not in FIGURE_NAMES:
            raise ValueError(f"--only {name}: no such figure; choose from {', '.join(FIGURE_NAMES)}")
    if only and readme is not None:
        raise ValueError("--readme needs every analysis: drop --only to rewrite the README's numbers")
    # fail before the long run, not after it
    check_output_folder(args.out, output_files(only or FIGURE_NAMES, formats))
    if readme is not None:
        splice_blocks(readme.read_text(), dict.fromkeys(BLOCKS, ""))
    run = build_figures(args.model, log=lambda m: print(m, file=sys.stderr), only=only)
    partial = bool(only) or bool(run.failed)
    out = write_figures(run.figures, args.out, formats, run.facts, keep=partial, failed=run.failed)
    extra = "results.json and " if run.facts is not None else ""
    print(f"wrote {len(run.figures)} figure(s) x {len(formats)} format(s) (+ CSV), {extra}an index to {out}")
    if readme is not None and run.facts is not None:
        text = splice_blocks(readme.read_text(), readme_blocks(run.facts))
        tmp = readme.with_name(f".{readme.name}.tmp")
        tmp.write_text(text)
        tmp.replace(readme)
        print(f"updated the generated result blocks in {readme}")
    elif readme is not None:
        print(f"{readme} not updated: an analysis behind its numbers failed", file=sys.stderr)
    if run.failed:
        for name, error in run.failed.items():
            print(f"  failed: {name}: {error}", file=sys.stderr)
        total = len(only or FIGURE_NAMES)
        raise SystemExit(f"lensing figures: {len(run.failed)} of {total} figure(s) failed (listed above)")


def check_output_file(path: str, suffix: str = ".html") -> Path:
    """``path`` is a file that can be written (its folder exists or can be made): checked before the work."""
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"--out {path} is a folder; give a file name such as {target / ('explore' + suffix)}")
    if target.suffix.lower() != suffix:
        raise ValueError(f"--out {path}: give a file name ending in {suffix}")
    check_output_dir(str(target.parent))
    return target


def _cmd_explore(args: argparse.Namespace) -> None:
    from lensing.probes import attach
    from lensing.viz.explore import explore
    from lensing.zoo import load

    out = check_output_file(args.out_file)
    with progress("explore", 4) as bar:
        bar.set_postfix_str("loading the model")
        lm = load(args.model, device=args.device)
        bar.update()
        if args.prompt:
            prompts = [p.replace("\\n", "\n") for p in args.prompt]
            if lm.answer_marker:
                prompts = [p if p.endswith("\n") else p + "\n" for p in prompts]
        else:
            prompts = [p.prompt for p in _test_problems(args.n)]
        bar.set_postfix_str(f"generating {len(prompts)} trace(s)")
        traces = lm.generate(prompts, max_new_tokens=args.max_new_tokens)
        bar.update()
        bar.set_postfix_str("probing")
        page = explore(attach(lm), traces, top_k=args.top_k, title=f"lensing explore {args.model}")
        bar.update()
        bar.set_postfix_str("writing")
        page.save(out)
        bar.update()
    size = out.stat().st_size / 2**20
    print(f"wrote the explorer for {len(traces)} trace(s) of {args.model} to {out} ({size:.1f} MiB, works offline)")


def _cmd_collect(args: argparse.Namespace) -> None:
    """Streaming statistics into --out; under torchrun each rank takes its chunks and only rank 0 prints."""
    from lensing.collect import collect_run, format_summary
    from lensing.zoo import resolve_dtype

    dtype = resolve_dtype(args.dtype)
    summary = collect_run(
        args.model,
        args.n,
        args.out,
        task=args.task,
        seed=args.seed,
        chunk_size=args.chunk,
        max_new_tokens=args.max_new_tokens,
        force_latents=args.force_latents,
        max_steps=args.max_steps,
        device=args.device,
        dtype=dtype,
        log=(lambda m: print(m, file=sys.stderr)) if getattr(args, "verbose", False) else None,
    )
    if summary is None:  # not rank 0
        return
    if args.json:
        from lensing._json import dumps

        print(dumps(summary))
    else:
        print(format_summary(summary))
        print(f"statistics and summary in {args.out}")


def _validate(args: argparse.Namespace) -> None:
    """Arguments checked before any work starts."""
    if getattr(args, "device", None) is not None:
        check_device(args.device)
    if getattr(args, "out", None):
        check_output_dir(args.out)


MODEL_HELP = "bundled name (arith-tiny, arith-tiny:cot, :hidden, :lt), smollm2-135m, or a model folder"
# help for arguments many commands share; filled in where a command registers one without help
COMMON_HELP = {
    "model": MODEL_HELP,
    "--json": "print JSON (strict: no NaN or Infinity; a missing number is null with a reason)",
    "--device": "cpu, cuda, cuda:N or mps",
    "--seed": "random seed (problems, sampling, bootstrap)",
    "--n": "number of test problems",
    "--out": "output folder",
}


def _fill_common_help(parser: argparse.ArgumentParser) -> None:
    """Every argument shows a help line: shared arguments registered without one get the common text."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _fill_common_help(sub)
        elif action.help is None:
            key = action.option_strings[0] if action.option_strings else action.dest
            action.help = COMMON_HELP.get(key)


# what a user can cause and fix: one line, no traceback (anything else is a bug and keeps its traceback)
USER_ERRORS = (ValueError, OSError, ModuleNotFoundError)


def main(argv: list[str] | None = None) -> None:
    """Runs one command. Ctrl-C at any moment (start-up included) prints one line and exits 130."""
    words = sys.argv[1:] if argv is None else argv
    command = next((w for w in words if not w.startswith("-")), "")
    try:
        _main(argv)
    except KeyboardInterrupt:
        hint = "; finished stages are kept, continue with --resume" if command == "train" else ""
        print(f"lensing {command}: interrupted, nothing half-written{hint}".replace(" :", ":"), file=sys.stderr)
        if argv is None:  # the process's own command line: leave now, with 130
            # a normal interpreter exit after this caught interrupt ended in -SIGINT in about 1 run of 4
            # under load (CPython re-raises at exit an interrupt it flagged as unhandled on the way up)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)
        raise SystemExit(130) from None


def _main(argv: list[str] | None) -> None:
    args = build_parser().parse_args(argv)
    from lensing._quiet import quiet

    quiet(args.verbose)
    try:
        _validate(args)
        args.func(args)
    except USER_ERRORS as err:
        raise SystemExit(f"lensing {args.command}: {_one_line(err)}") from None


def build_parser() -> argparse.ArgumentParser:
    """The ``lensing`` command's parser: every command, argument and help line (nothing is run)."""
    parser = argparse.ArgumentParser(prog="lensing", description="Look inside latent-reasoning language models.")
    parser.add_argument("--version", action="version", version=f"lensing {_version()}")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show third-party progress bars, log lines and warnings (hidden by default)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a curriculum (LT-Tuning by default) on a task")
    p.add_argument("--task", default="arith", help="a registered task: arith, hops, graph or your own")
    p.add_argument(
        "--curriculum", default=None, help="cot, nocot, lt, coconut, stepsup or pause (default: the preset's)"
    )
    p.add_argument("--latent-kind", default=None, help="coconut/stepsup latents: hidden, fusion or prediction")
    p.add_argument("--latents-per-step", type=positive_int, default=None, help="Coconut's c: latents per CoT line")
    p.add_argument("--max-steps", type=positive_int, default=None, help="total optimizer steps, split over the stages")
    p.add_argument(
        "--preset", default=None, help="tiny (arith default), hops (hops-direct, hops-rev), smoke or base (with --base)"
    )
    p.add_argument("--base", default=None, help="pretrained model to tune instead of a fresh tiny Llama")
    p.add_argument("--out", required=True, help="run folder (must be empty unless --resume or --overwrite)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default="fp32", help="fp32, bf16 or fp16")
    p.add_argument("--steps", default=None, help="steps per stage, e.g. 600,300,300 for lt")
    p.add_argument("--seed", type=int, default=0, help="seed for data, initialisation and batch order")
    p.add_argument("--lr", default=None, help="peak learning rate per stage, e.g. 2e-3,1e-3 (the last repeats)")
    p.add_argument(
        "--lr-schedule", choices=("cosine", "constant"), default=None, help="after warmup: cosine decay or constant"
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="FIELD=VALUE",
        help="any other scalar TrainConfig field, e.g. --set n_train=30000 --set tie_embeddings=false (repeatable)",
    )
    p.add_argument(
        "--init",
        default=None,
        help="start from this stage checkpoint (e.g. RUN/cot) and skip the stages it has done; "
        "a checkpoint of the curriculum's last stage is trained further (a restart)",
    )
    p.add_argument(
        "--advance-at",
        type=float,
        default=None,
        help="end a stage once its validation accuracy reaches this percent (--steps become maxima)",
    )
    p.add_argument("--check-every", type=positive_int, default=200, help="steps between --advance-at checks")
    p.add_argument(
        "--mix-previous", type=float, default=None, help="share of a latent stage's examples from earlier stages"
    )
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("--overwrite", action="store_true", help="start over, removing the run already in --out")
    p.add_argument(
        "--checkpoint-every", type=positive_int, default=200, help="steps between periodic checkpoints in a stage"
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="accuracy and latent counts by difficulty on the test split")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--n", type=positive_int, default=100, help="problems per difficulty")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser(
        "compare", help="variants across seeds: accuracy by difficulty with 95%% intervals over seeds, and ablations"
    )
    p.add_argument("models", nargs="+", help="checkpoints or names; models differing only in seed are grouped")
    p.add_argument("--n", type=positive_int, default=100, help="test problems per difficulty")
    p.add_argument("--json", action="store_true", help="print JSON records instead of a table")
    p.add_argument(
        "--no-ablations", action="store_true", help="skip the zeroed-latent and swapped-latent runs"
    )
    p.add_argument("--max-new-tokens", type=positive_int, default=160, help="generation budget per problem")
    p.add_argument("--out", help="also write the per-seed rows here as JSON (Comparison.load reads them back)")
    p.add_argument("--readme", help="rewrite this README's generated block (--block) with the table")
    p.add_argument("--block", default="seeds", help="name of the generated README block --readme rewrites")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("trace", help="generate for one question and show latents and confidence")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("question", help="the prompt to continue, e.g. 'a=12;b=a+3;b?' (a final newline is added)")
    p.add_argument("--max-new-tokens", type=positive_int, default=160, help="generation budget")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    p.set_defaults(func=_cmd_trace)

    p = sub.add_parser(
        "collapse", help="collapse, mismatch and decodability of natural and forced latents, with bootstrap CIs"
    )
    p.add_argument(
        "--model", action="append", help="a model to measure (repeat for several; default: every bundled variant)"
    )
    p.add_argument("--n", type=positive_int, default=300, help="test problems of each model's task (all difficulties)")
    p.add_argument(
        "--latents",
        default="both",
        help="natural (the latents the models emit), forced (a chain forced after the prompt) or both",
    )
    p.add_argument("--chain", type=positive_int, default=6, help="length of the forced chain and last step reported")
    p.add_argument(
        "--layers", default="embed,last", help="read-out layers, comma-separated (last: each model's last; or all)"
    )
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds of the linear probes (0: no probes)")
    p.add_argument(
        "--labels",
        default="value,last",
        help="what the probes decode, comma-separated: value (the whole value) and/or last (its last character)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the test problems, probe folds and bootstraps")
    p.add_argument("--json", action="store_true", help="print a JSON list of records instead of tables")
    p.add_argument("--out", help="directory for collapse.csv and collapse.json (the records)")
    p.set_defaults(func=_cmd_collapse)

    p = sub.add_parser(
        "trails", help="trails through the latents and at text positions, rut tests against a bag of tokens"
    )
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--steps", type=positive_int, default=3, help="problem difficulty (one, so chains align)")
    p.add_argument("--n", type=positive_int, default=200, help="test problems")
    p.add_argument(
        "--latents",
        default="both",
        help="latent trails to test: natural, forced (a chain after the prompt), both or none",
    )
    p.add_argument("--chain", type=positive_int, default=6, help="length of the forced latent chain")
    p.add_argument("--resamples", type=positive_int, default=1000, help="bootstrap draws for the 95%% CIs")
    p.add_argument("--seed", type=int, default=0, help="seed of the test problems, library splits and bootstraps")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--out", help="directory for trails.csv/.json (text positions) and trails_rut.csv/.json")
    p.set_defaults(func=_cmd_trails)

    p = sub.add_parser("figures", help="regenerate every paper figure from the bundled models")
    p.add_argument("--model", default="arith-tiny", help="bundled name or checkpoint folder")
    p.add_argument("--out", default="figures", help="folder for the figures (only files lensing wrote are replaced)")
    p.add_argument("--formats", default="png,svg,pdf,html", help="comma-separated: png, svg, pdf, html")
    p.add_argument("--readme", help="README whose generated result blocks are rewritten from this run's numbers")
    p.add_argument(
        "--only", action="append", metavar="NAME", help="rebuild just this figure (repeat for several); others are kept"
    )
    p.set_defaults(func=_cmd_figures)

    p = sub.add_parser("explore", help="write one offline HTML page to browse a model's traces (lens, attention, DLA)")
    p.add_argument("model", help="bundled name (arith-tiny, arith-tiny:cot ...), smollm2-135m or a model folder")
    p.add_argument("--prompt", action="append", help="a prompt to trace (repeat for several); default: test problems")
    p.add_argument("--n", type=positive_int, default=6, help="test problems to trace when no --prompt is given")
    p.add_argument("--max-new-tokens", type=positive_int, default=160, help="generation budget per prompt")
    p.add_argument("--top-k", type=positive_int, default=5, help="tokens shown per layer in the logit lens")
    p.add_argument("--out", dest="out_file", required=True, metavar="FILE.html", help="the HTML file to write")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    p.set_defaults(func=_cmd_explore)

    p = sub.add_parser("collect", help="mergeable statistics over many traces (runs under torchrun too)")
    p.add_argument("model")
    p.add_argument(
        "--n",
        "-n",
        type=positive_int,
        default=1000,
        help="test problems (all difficulties, interleaved); under torchrun write -n (torchrun reads --n as its own)",
    )
    p.add_argument("--out", required=True, help="folder for stats.safetensors, summary.json and resumable chunks")
    p.add_argument("--task", default="arith", help="a registered task (arith, hops, graph ...)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk", type=positive_int, default=32, help="problems per chunk (one batch, one resumable file)")
    p.add_argument("--max-new-tokens", type=positive_int, default=160, help="generation budget per problem")
    p.add_argument("--force-latents", type=int, default=0, help="force this many latents after each prompt")
    p.add_argument("--max-steps", type=positive_int, default=8, help="latent steps with their own moment statistics")
    p.add_argument("--device", default="cpu", help="cpu, cuda (under torchrun: each rank's cuda:LOCAL_RANK) or mps")
    p.add_argument("--dtype", default="fp32", help="fp32, bf16 or fp16")
    p.set_defaults(func=_cmd_collect)

    from lensing.interventions.cli import add_commands as add_intervention_commands

    add_intervention_commands(sub)

    _fill_common_help(parser)
    return parser


def _version() -> str:
    from lensing import __version__

    return __version__


def _one_line(err: BaseException) -> str:
    if isinstance(err, OSError) and err.filename is not None:
        return f"{err.strerror or err}: {err.filename}"
    return " ".join(str(err).split()) or type(err).__name__


if __name__ == "__main__":
    main()
