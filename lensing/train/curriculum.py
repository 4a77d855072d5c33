"""Training a curriculum (LT-Tuning by default) on a task: the config, the model, the stage loop.

Each stage trains with a fresh AdamW on its own data (built from the plain CoT examples by the
model as the previous stage left it; see :mod:`lensing.train.curricula`), ends with an
evaluation on the validation split and is saved as a checkpoint directory named after it
(``cot``, ``hidden``, ``lt`` for LT-Tuning).
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM

from lensing.metrics.geometry import closest_pair
from lensing.model import LatentConfig, LatentLM
from lensing.tasks import ANSWER_MARKER, build_char_tokenizer, make_splits
from lensing.tasks import get as get_task
from lensing.tasks.tokenizer import save_and_reload
from lensing.train.curricula import Stage, split_budget, stages
from lensing.train.data import Example, collate, encode_problems
from lensing.train.evaluate import evaluate
from lensing.train.runs import TOKENIZER_DIR, RunFolder

LR_SCHEDULES = ("cosine", "constant")


@dataclass
class TrainConfig:
    """Task, curriculum, model size, data sizes and optimisation for a whole run.

    ``steps`` and ``lr`` have one entry per stage (``lr``'s last entry repeats); with ``budget``
    the curriculum's stages share that many steps by their weights instead. ``n_*`` count
    problems per difficulty (``n_val=0`` skips the evaluation after each stage).
    ``insertion_scoring`` is how LT's Confidence-Driven Insertion reads p(gold): over the real
    vocabulary (``real-vocab``) or with `<thinking>` in the softmax (``with-thinking``, the rule
    the bundled arith models were trained with).

    With ``advance_at`` the run moves on to the next stage as soon as the current one's
    validation accuracy (checked every ``check_every`` steps, on the stage's own inference rule)
    reaches that many percent, so ``steps`` become the most those stages may take; the last stage
    always takes its full count (so single-stage controls keep their budget). ``mix_previous``
    is the share of a latent stage's examples drawn from earlier stages (Coconut's mixing).
    Each stage warms up linearly over ``warmup`` steps, then follows ``lr_schedule``: ``cosine``
    (decay to 10% of the peak at the stage's last step) or ``constant`` (the peak throughout).
    ``tie_embeddings`` shares the unembedding with the input embedding: untied, a hops CoT model
    was seen to collapse the unembedding rows of four node letters onto one direction (cosine
    0.99), after which it could not write those letters apart and sat at chance. ``prompt_loss``
    also trains the model to predict the prompt's own tokens (cross-entropy stages only; the
    CODI stage keeps its loss).
    """

    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    max_len: int = 256
    task: str = "arith"
    curriculum: str = "lt"
    latent_kind: str = "hidden"  # coconut / stepsup latents: hidden, fusion or prediction
    latents_per_step: int = 1
    steps: tuple[int, ...] = (1000, 400, 600)
    lr: tuple[float, ...] = (1e-3, 5e-4, 5e-4)
    budget: int | None = None
    insertion_scoring: str = "real-vocab"
    advance_at: float | None = None
    check_every: int = 200
    mix_previous: float = 0.0
    lr_schedule: str = "cosine"
    tie_embeddings: bool = False
    prompt_loss: bool = False

    def __post_init__(self) -> None:
        self.steps, self.lr = tuple(self.steps), tuple(self.lr)
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.insertion_scoring not in ("real-vocab", "with-thinking"):
            raise ValueError(f"insertion_scoring must be real-vocab or with-thinking, got {self.insertion_scoring!r}")
        if self.latents_per_step < 1:
            raise ValueError(f"latents_per_step must be at least 1, got {self.latents_per_step}")
        if self.advance_at is not None and not 0 < self.advance_at <= 100:
            raise ValueError(f"advance_at is a validation accuracy in percent (0, 100], got {self.advance_at}")
        if not 0 <= self.mix_previous < 1:
            raise ValueError(f"mix_previous is a share of examples in [0, 1), got {self.mix_previous}")
        if self.check_every < 1:
            raise ValueError(f"check_every must be at least 1, got {self.check_every}")

    batch_size: int = 64
    warmup: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    n_train: int = 4000
    n_val: int = 50
    n_test: int = 100
    seed: int = 0
    latent: LatentConfig = field(default_factory=LatentConfig)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["latent"] = self.latent.to_dict()
        return data


# A 1M-parameter model on a deterministic task is far sharper than an LM on GSM8K: after stage 1,
# tau=0.7 (the paper's) inserted 0.02 latents per problem, while tau=0.99 marks 0.4 (1 step) to
# 4.3 (6 steps) uncertain tokens per problem (measured on 1,200 training problems).
PRESETS = {
    "tiny": TrainConfig(latent=LatentConfig(tau=0.99), insertion_scoring="with-thinking"),
    "smoke": TrainConfig(
        n_layers=2,
        d_model=32,
        n_heads=4,
        d_mlp=64,
        steps=(30, 4, 4),
        batch_size=8,
        warmup=5,
        n_train=20,
        n_val=1,
        n_test=1,
    ),
    # pointer chasing: 6,000 problems per hop count; Coconut's h is the last hidden state (after the
    # final norm); latent stages move on at 90% validation accuracy and mix in 20% of earlier stages'
    # data; tied embeddings, because untied the unembedding rows of several node letters collapsed
    # (cosine 0.96-0.99 in 2 of 2 runs) and the model could not copy them; a constant lr of 1e-3,
    # because at 2e-3 the node letters' embeddings collapsed (cosine 0.93 at step 1,300) and copying
    # a node stalled. Written CoT must pass a phase transition (the edge lookup): on `hops-direct`
    # with this recipe it came between steps 1,800 and 2,600 (seed 0) and 1,100 and 1,400 (seed 1);
    # on `hops` 3,000-5,000 steps at lr 2e-3 never reached it.
    "hops": TrainConfig(
        task="hops",
        curriculum="stepsup",
        steps=(3000, 600, 600, 600, 600, 1000),
        lr=(1e-3,),
        lr_schedule="constant",
        advance_at=90.0,
        check_every=100,
        mix_previous=0.2,
        tie_embeddings=True,
        n_train=6000,
        n_val=50,
        n_test=100,
        latent=LatentConfig(mode="hidden", layer=-1),
    ),
    # for --base (a pretrained model): the paper's learning rate, model size comes from the base
    "base": TrainConfig(
        steps=(600, 300, 300), lr=(5e-5, 5e-5, 5e-5), batch_size=16, warmup=30, n_train=2000, n_val=20, n_test=50
    ),
}
PRESETS["hops-direct"] = replace(PRESETS["hops"], task="hops-direct")
PRESETS["hops-rev"] = replace(PRESETS["hops"], task="hops-rev")


def build_model(cfg: TrainConfig, tokenizer_dir: Path) -> LatentLM:
    """A randomly initialised Llama with a character tokenizer over the task's characters and `<thinking>`."""
    tokenizer = save_and_reload(build_char_tokenizer(get_task(cfg.task).characters), tokenizer_dir)
    torch.manual_seed(cfg.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_mlp,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_heads,
        max_position_embeddings=cfg.max_len,
        tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attn_implementation="eager",  # faster than SDPA for the short cached segments on CPU
    )
    return LatentLM(LlamaForCausalLM(config), tokenizer, cfg.latent, answer_marker=ANSWER_MARKER)


def unembedding_overlap(lm: LatentLM, characters: str) -> dict | None:
    """The two task characters whose unembedding rows are closest, and their cosine (None when
    fewer than two of them are single tokens of the model's vocabulary with a nonzero row; a zero
    row has no direction, and this record must never stop a finished stage from being saved).

    Near 1, the model cannot write one without the other: a hops CoT model with untied
    embeddings was stuck at chance that way, with four node letters at cosine 0.99.
    """
    vocab, weight = lm.tokenizer.get_vocab(), lm.model.get_output_embeddings().weight.detach()
    tokens = [c for c in dict.fromkeys(characters) if c in vocab and bool(weight[vocab[c]].any())]
    if len(tokens) < 2:
        return None
    rows = weight[[vocab[c] for c in tokens]].float()
    cosine, (i, j) = closest_pair(rows)
    return {"tokens": [tokens[i], tokens[j]], "cosine": round(cosine, 4)}


def lr_at(step: int, total: int, peak: float, warmup: int, schedule: str = "cosine") -> float:
    """Linear warmup, then cosine decay to 10% of the peak (``cosine``) or the peak (``constant``).

    >>> [round(lr_at(s, 10, 1.0, 2), 3) for s in (0, 1, 9)], lr_at(9, 10, 1.0, 2, "constant")
    ([0.5, 1.0, 0.134], 1.0)
    """
    if step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant":
        return peak
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def batch_loss(lm: LatentLM, batch: list[Example], prompt_loss: bool = False) -> torch.Tensor:
    """Next-token cross-entropy of the latent forward on the examples' labels (and prompts)."""
    ids, mask, labels = collate(batch, lm._pad_id, prompt_loss)
    return lm(ids.to(lm.device), mask.to(lm.device), labels.to(lm.device)).loss


def train_stage(
    lm: LatentLM,
    examples: list[Example],
    steps: int,
    lr: float,
    cfg: TrainConfig,
    seed: int,
    desc: str,
    run: RunFolder | None = None,
    stage: str = "",
    checkpoint_every: int = 0,
    loss_fn: Callable[[LatentLM, list[Example]], torch.Tensor] | None = None,
    check: Callable[[], float] | None = None,
    checks: list[tuple[int, float]] | None = None,
) -> list[float]:
    """AdamW (fresh) on random batches of one difficulty each; returns the loss of every step.

    Drawing each batch from a single difficulty keeps padding low and lines up latent
    positions across the batch, so the latent forward needs fewer segments. With a ``run``,
    every ``checkpoint_every`` steps the model, optimiser and batch sampler are saved to its
    ``.resume/`` and a later call continues from there, giving the same weights as an
    uninterrupted stage. ``loss_fn(lm, batch)`` replaces the default loss (:func:`batch_loss`).
    With ``check`` (an accuracy in percent) and ``cfg.advance_at``, every ``cfg.check_every``
    steps the accuracy is measured, appended to ``checks`` as ``(step, accuracy)``, and the stage
    ends once it reaches ``advance_at``.
    """
    lm.train()
    params = [p for p in lm.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
    rng = random.Random(seed)
    by_steps: dict[int, list[Example]] = {}
    for e in examples:
        by_steps.setdefault(e.problem.steps, []).append(e)
    buckets = [by_steps[k] for k in sorted(by_steps)]
    start, losses = run.load_progress(stage, lm, optimizer, rng) if run is not None else (0, [])
    bar = tqdm(range(start, steps), desc=desc, file=sys.stderr, mininterval=2.0, initial=start, total=steps)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, lr, cfg.warmup, cfg.lr_schedule)
        bucket = rng.choice(buckets)
        batch = rng.sample(bucket, min(cfg.batch_size, len(bucket)))
        loss = loss_fn(lm, batch) if loss_fn else batch_loss(lm, batch, cfg.prompt_loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}")
        if check is not None and cfg.advance_at is not None and (step + 1) % cfg.check_every == 0:
            lm.eval()
            accuracy = check()
            lm.train()
            if checks is not None:
                checks.append((step + 1, accuracy))
            if accuracy >= cfg.advance_at:
                break
        if run is not None and checkpoint_every > 0 and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            run.save_progress(stage, step + 1, lm, optimizer, rng, losses)
    lm.eval()
    return losses


def stage_plan(cfg: TrainConfig) -> tuple[list[Stage], tuple[int, ...]]:
    """The curriculum's stages for the config's task and the optimizer steps of each."""
    task = get_task(cfg.task)
    plan = stages(cfg.curriculum, max(task.difficulties), cfg.latent_kind, cfg.latents_per_step)
    if cfg.budget is not None:
        return plan, split_budget(cfg.budget, plan)
    if len(cfg.steps) != len(plan):
        raise ValueError(
            f"curriculum {cfg.curriculum!r} on {cfg.task!r} has {len(plan)} stages "
            f"({', '.join(s.name for s in plan)}) but steps gives {len(cfg.steps)}; give one count per stage "
            "or a total budget"
        )
    return plan, tuple(cfg.steps)


def run_curriculum(
    cfg: TrainConfig,
    out: str | Path,
    device: str = "cpu",
    command: str = "",
    log=print,
    base: str | None = None,
    dtype: torch.dtype | None = None,
    resume: bool = False,
    overwrite: bool = False,
    checkpoint_every: int = 200,
    init: str | Path | None = None,
) -> dict[str, dict]:
    """Trains every stage of ``cfg.curriculum`` on ``cfg.task`` and writes one checkpoint per stage
    into ``out`` (``cot``, ``hidden``, ``lt`` for LT-Tuning); returns the records by stage name.

    Without ``base`` the model is a fresh Llama of the config's size with a character tokenizer;
    with ``base`` (a name or directory :func:`lensing.load` accepts) a pretrained model is tuned.
    ``out`` must be empty or absent, unless ``overwrite`` (start over) or ``resume`` (continue
    an interrupted run with the same settings from its last finished stage and its last periodic
    checkpoint, every ``checkpoint_every`` steps); this is checked before any work.

    ``init`` (a stage checkpoint of an earlier run on the same task, e.g. its ``cot``) starts the
    run from that model and skips the plan's stages up to and including that stage, so curricula
    compared from one CoT model share it exactly (a checkpoint of the plan's last stage, e.g. a
    ``cot`` checkpoint given to the ``cot`` curriculum, is trained further with a fresh optimizer:
    a restart, perhaps at another learning rate); the data splits are then the init run's (its
    seed), so no test problem was trained on, and ``cfg.seed`` only orders the batches.
    """
    plan, steps = stage_plan(cfg)
    skip: set[str] = set()
    if init is not None:
        if base is not None:
            raise ValueError("give either init (a stage checkpoint to continue from) or base, not both")
        start = LatentLM.from_pretrained(init, device=device, dtype=dtype)
        stage_name, task_name = start.meta.get("variant"), start.meta.get("task", "arith")
        names = [stage.name for stage in plan]
        if task_name != cfg.task:
            raise ValueError(f"init checkpoint {init} was trained on task {task_name!r}, not {cfg.task!r}")
        if stage_name not in names:
            raise ValueError(
                f"init checkpoint {init} is stage {stage_name!r}, which curriculum {cfg.curriculum!r} "
                f"does not have (its stages: {', '.join(names)})"
            )
        done = names.index(stage_name) + 1
        if done == len(names):  # the plan's last stage is trained further, with a fresh optimizer
            done -= 1
        skip = set(names[:done])
        trained = start.meta["record"]["training"]["train_config"]
        for key in ("n_train", "n_val", "n_test"):
            if trained[key] != getattr(cfg, key):
                raise ValueError(
                    f"init checkpoint {init} was trained with {key}={trained[key]}, this run has "
                    f"{getattr(cfg, key)}: the splits would differ and test problems could leak into training"
                )
    settings = {
        "train_config": cfg.to_dict(),
        "base": base,
        "dtype": str(dtype) if dtype else None,
        "init": str(Path(init).resolve()) if init is not None else None,
    }
    run = RunFolder.open(out, settings, tuple(stage.name for stage in plan), resume=resume, overwrite=overwrite)
    out = run.path
    if run.stages_done:
        log(f"resuming run {run.run_id} in {out}: finished stages {', '.join(run.stages_done)}")
    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if init is not None:
        trained_on = start.meta["record"]["training"]
        data_seed = trained_on.get("data_seed", trained_on["seed"])
    else:
        data_seed = cfg.seed
    splits = make_splits(cfg.n_train, cfg.n_val, cfg.n_test, seed=data_seed, task=cfg.task)
    if init is not None:
        lm = start
        lm.config = replace(lm.config, **{k: v for k, v in cfg.latent.to_dict().items() if k != "mode"})
    elif base is None:
        lm = build_model(cfg, out / TOKENIZER_DIR).to(device)
    else:
        from lensing.zoo import load

        lm = load(base, device=device, dtype=dtype)
        lm.config, lm.answer_marker = cfg.latent, ANSWER_MARKER
    plain = encode_problems(lm, splits.train)
    spent = lm.meta["record"]["training"].get("total_steps", 0) if init is not None else 0  # optimizer steps so far
    records = {}
    for index, stage in enumerate(plan):
        if stage.name in skip:
            continue
        if stage.name in run.stages_done:
            lm = LatentLM.from_pretrained(out / stage.name, device=device, dtype=dtype)
            records[stage.name] = lm.meta["record"]
            spent = records[stage.name]["training"]["total_steps"]
            continue
        t0 = time.time()
        lm.config = replace(lm.config, mode=stage.mode)
        examples = stage.build(lm, plain, cfg.seed + index, cfg)
        n_lat = sum(e.completion_ids.count(lm.thinking_id) for e in examples) / len(examples)
        if index > 0:
            log(f"stage {index + 1} ({stage.name}): {n_lat:.2f} latents per example, data in {time.time() - t0:.0f}s")
        lm.meta = {**lm.meta, "inference": stage.inference(cfg.latents_per_step)}
        t0 = time.time()
        lr = cfg.lr[min(index, len(cfg.lr) - 1)]
        checks: list[tuple[int, float]] = []
        losses = train_stage(
            lm,
            examples,
            steps[index],
            lr,
            cfg,
            cfg.seed + 100 * index,
            f"stage {index + 1} ({stage.name})",
            run=run,
            stage=stage.name,
            checkpoint_every=checkpoint_every,
            loss_fn=stage.loss,
            check=(lambda: evaluate(lm, splits.val).accuracy) if splits.val and index + 1 < len(plan) else None,
            checks=checks,
        )
        wall = time.time() - t0
        result = evaluate(lm, splits.val) if splits.val else None
        accuracy = f", val accuracy {result.accuracy:.1f}%" if result else ""
        overlap = unembedding_overlap(lm, get_task(cfg.task).characters)
        pair = " and ".join(map(repr, overlap["tokens"])) if overlap else ""
        closest = f", closest output rows {pair} at cosine {overlap['cosine']:.2f}" if overlap else ""
        log(
            f"stage {index + 1} ({stage.name}): {wall:.0f}s, "
            f"final loss {sum(losses[-50:]) / len(losses[-50:]):.4f}{accuracy}{closest}"
        )
        records[stage.name] = {
            "stage": index + 1,
            "name": stage.name,
            "training": {
                "command": command,
                "task": cfg.task,
                "curriculum": cfg.curriculum,
                "seed": cfg.seed,
                "steps": len(losses),
                "max_steps": steps[index],
                "total_steps": spent + len(losses),
                "checks": checks,
                "lr": lr,
                "init": settings["init"],
                "data_seed": data_seed,
                "wall_time_s": round(wall, 1),
                "losses": [round(x, 5) for x in losses],
                "train_config": cfg.to_dict(),
                "latents_per_example": n_lat,
                "unembedding_overlap": overlap,
            },
            "eval": {"split": "val", **result.to_dict()} if result else None,
        }
        lm.save_pretrained(
            out / stage.name,
            extra={
                "stage": index + 1,
                "variant": stage.name,
                "task": cfg.task,
                "curriculum": cfg.curriculum,
                "inference": stage.inference(cfg.latents_per_step),
                "base": base,
                "run_id": run.run_id,
                "record": records[stage.name],
            },
        )
        run.mark_finished(stage.name)
        spent += len(losses)
    run.write(complete=True)
    return records
