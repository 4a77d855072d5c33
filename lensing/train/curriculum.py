"""The three-stage LT-Tuning curriculum: CoT, then hidden-state latents, then fusion latents.

Stage 1 fine-tunes on the explicit chain of thought. Stages 2 and 3 rebuild the insertion data
with the previous stage's model (Confidence-Driven Insertion) and train with ``hidden`` and then
``fusion`` latents. The optimiser is reset at each stage; each stage ends with an evaluation and
a checkpoint directory (``cot``, ``hidden``, ``lt``).
"""

from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM

from lensing.model import LatentConfig, LatentLM
from lensing.tasks import ANSWER_MARKER, build_char_tokenizer, make_splits
from lensing.tasks.tokenizer import save_and_reload
from lensing.train.data import Example, collate, encode_problems, insert_latents
from lensing.train.evaluate import evaluate
from lensing.train.runs import TOKENIZER_DIR, RunFolder

STAGES = (("cot", "fusion"), ("hidden", "hidden"), ("lt", "fusion"))


@dataclass
class TrainConfig:
    """Model size, data sizes and optimisation for the whole curriculum (``steps`` per stage)."""

    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    max_len: int = 256
    steps: tuple[int, int, int] = (1000, 400, 600)
    lr: tuple[float, float, float] = (1e-3, 5e-4, 5e-4)
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
    "tiny": TrainConfig(latent=LatentConfig(tau=0.99)),
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
    # for --base (a pretrained model): the paper's learning rate, model size comes from the base
    "base": TrainConfig(
        steps=(600, 300, 300), lr=(5e-5, 5e-5, 5e-5), batch_size=16, warmup=30, n_train=2000, n_val=20, n_test=50
    ),
}


def build_model(cfg: TrainConfig, tokenizer_dir: Path) -> LatentLM:
    """A randomly initialised Llama with a character tokenizer and the `<thinking>` token."""
    tokenizer = save_and_reload(build_char_tokenizer(), tokenizer_dir)
    torch.manual_seed(cfg.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_mlp,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_heads,
        max_position_embeddings=cfg.max_len,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attn_implementation="eager",  # faster than SDPA for the short cached segments on CPU
    )
    return LatentLM(LlamaForCausalLM(config), tokenizer, cfg.latent, answer_marker=ANSWER_MARKER)


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warmup then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


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
) -> list[float]:
    """AdamW (fresh) on random batches of one difficulty each; returns the loss of every step.

    Drawing each batch from a single difficulty keeps padding low and lines up latent
    positions across the batch, so the latent forward needs fewer segments. With a ``run``,
    every ``checkpoint_every`` steps the model, optimiser and batch sampler are saved to its
    ``.resume/`` and a later call continues from there, giving the same weights as an
    uninterrupted stage.
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
            group["lr"] = lr_at(step, steps, lr, cfg.warmup)
        bucket = rng.choice(buckets)
        ids, mask, labels = collate(rng.sample(bucket, min(cfg.batch_size, len(bucket))), lm._pad_id)
        loss = lm(ids.to(lm.device), mask.to(lm.device), labels.to(lm.device)).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}")
        if run is not None and checkpoint_every > 0 and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            run.save_progress(stage, step + 1, lm, optimizer, rng, losses)
    lm.eval()
    return losses


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
) -> dict[str, dict]:
    """Trains all three stages and writes ``out/cot``, ``out/hidden`` and ``out/lt``; returns the records.

    Without ``base`` the model is a fresh Llama of the config's size with a character tokenizer;
    with ``base`` (a name or directory :func:`lensing.load` accepts) a pretrained model is tuned.
    ``out`` must be empty or absent, unless ``overwrite`` (start over) or ``resume`` (continue
    an interrupted run with the same settings from its last finished stage and its last periodic
    checkpoint, every ``checkpoint_every`` steps); this is checked before any work.
    """
    settings = {"train_config": cfg.to_dict(), "base": base, "dtype": str(dtype) if dtype else None}
    run = RunFolder.open(out, settings, tuple(name for name, _ in STAGES), resume=resume, overwrite=overwrite)
    out = run.path
    if run.stages_done:
        log(f"resuming run {run.run_id} in {out}: finished stages {', '.join(run.stages_done)}")
    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    splits = make_splits(cfg.n_train, cfg.n_val, cfg.n_test, seed=cfg.seed)
    if base is None:
        lm = build_model(cfg, out / TOKENIZER_DIR).to(device)
    else:
        from lensing.zoo import load

        lm = load(base, device=device, dtype=dtype)
        lm.config, lm.answer_marker = cfg.latent, ANSWER_MARKER
    plain = encode_problems(lm, splits.train)
    examples, records = plain, {}
    for index, (name, mode) in enumerate(STAGES):
        if name in run.stages_done:
            lm = LatentLM.from_pretrained(out / name, device=device, dtype=dtype)
            records[name] = lm.meta["record"]
            continue
        if index > 0:
            t0 = time.time()
            examples = insert_latents(lm, plain, seed=cfg.seed + index)
            lm.config = replace(lm.config, mode=mode)
            n_lat = sum(e.completion_ids.count(lm.thinking_id) for e in examples) / len(examples)
            log(f"stage {index + 1} ({name}): inserted {n_lat:.2f} latents per example in {time.time() - t0:.0f}s")
        lm.config = replace(lm.config, mode=mode)
        t0 = time.time()
        losses = train_stage(
            lm,
            examples,
            cfg.steps[index],
            cfg.lr[index],
            cfg,
            cfg.seed + 100 * index,
            f"stage {index + 1} ({name})",
            run=run,
            stage=name,
            checkpoint_every=checkpoint_every,
        )
        wall = time.time() - t0
        result = evaluate(lm, splits.val)
        log(
            f"stage {index + 1} ({name}): {wall:.0f}s, final loss {sum(losses[-50:]) / len(losses[-50:]):.4f}, "
            f"val accuracy {result.accuracy:.1f}%"
        )
        records[name] = {
            "stage": index + 1,
            "name": name,
            "training": {
                "command": command,
                "seed": cfg.seed,
                "steps": cfg.steps[index],
                "wall_time_s": round(wall, 1),
                "losses": [round(x, 5) for x in losses],
                "train_config": cfg.to_dict(),
                "latents_per_example": sum(e.completion_ids.count(lm.thinking_id) for e in examples) / len(examples),
            },
            "eval": {"split": "val", **result.to_dict()},
        }
        lm.save_pretrained(
            out / name,
            extra={
                "stage": index + 1,
                "variant": name,
                "task": "arith",
                "base": base,
                "run_id": run.run_id,
                "record": records[name],
            },
        )
        run.mark_finished(name)
    run.write(complete=True)
    return records
