"""LatentLM: a Hugging Face causal LM that reasons with `<thinking>` latent tokens.

Every `<thinking>` position gets its input vector from the position before it (DESIGN §1):
training runs the sequence in segments cut at the latent positions, reusing the KV cache, and
generation is greedy with the KV cache, building a latent whenever the argmax is `<thinking>`.
"""

from __future__ import annotations

import inspect
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float, Int
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, PreTrainedModel

from lensing.model.config import THINKING_TOKEN, LatentConfig
from lensing.model.fusion import latent_embedding, make_adapter
from lensing.model.trace import Trace, confidence

CHECKPOINT_FORMAT = 1
META_FILE = "lensing.json"
ADAPTER_FILE = "adapter.safetensors"


class CheckpointError(ValueError):
    """A checkpoint directory is missing, corrupt or does not match its metadata."""


@dataclass
class LatentForward:
    """Output of the teacher-forced latent forward.

    ``latent_h`` / ``latent_pred`` are zero except at `<thinking>` positions (only filled when
    asked for with ``return_parts=True``).
    """

    logits: Float[Tensor, "batch pos vocab"]
    inputs_embeds: Float[Tensor, "batch pos d_model"]
    loss: Float[Tensor, ""] | None = None
    latent_h: Float[Tensor, "batch pos d_model"] | None = None
    latent_pred: Float[Tensor, "batch pos d_model"] | None = None


class LatentLM(nn.Module):
    """Wraps a causal LM and its tokenizer; adds the `<thinking>` token if it is missing.

    Args:
        model: any Hugging Face causal LM (Llama family tested).
        tokenizer: its tokenizer; `<thinking>` is added as a special token when absent, with its
            embedding and LM-head rows copied from ``init_token`` (default: the EOS token).
        config: how latents are built.
        answer_marker: text after which generated tokens count as the answer (``kinds``).
        add_bos: whether prompts start with the BOS token (as the model was trained).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer,
        config: LatentConfig | None = None,
        answer_marker: str | None = None,
        init_token: str | None = None,
        add_bos: bool = True,
    ) -> None:
        super().__init__()
        self.add_bos = add_bos
        self.model = model
        self._cache_keyword = cache_keyword(model)
        self.tokenizer = tokenizer
        self.config = config or LatentConfig()
        self.answer_marker = answer_marker
        self.meta: dict = {}
        if THINKING_TOKEN not in tokenizer.get_vocab():
            tokenizer.add_tokens([THINKING_TOKEN], special_tokens=True)
        self.thinking_id = tokenizer.convert_tokens_to_ids(THINKING_TOKEN)
        if model.get_input_embeddings().num_embeddings <= self.thinking_id:
            self._add_thinking_rows(init_token or tokenizer.eos_token)
        self.adapter = make_adapter(self.d_model, self.config.adapter_hidden) if self.config.adapter_hidden else None

    def _add_thinking_rows(self, init_token: str) -> None:
        source = self.tokenizer.convert_tokens_to_ids(init_token)
        self.model.resize_token_embeddings(len(self.tokenizer), mean_resizing=False)
        with torch.no_grad():
            emb = self.model.get_input_embeddings().weight
            emb[self.thinking_id] = emb[source]
            head = self.model.get_output_embeddings()
            if head is not None and head.weight is not emb:
                head.weight[self.thinking_id] = head.weight[source]

    # ----------------------------------------------------------------- basics
    @property
    def config(self) -> LatentConfig:
        return self._config

    @config.setter
    def config(self, config: LatentConfig) -> None:
        """Checked against the model: ``layer`` must index one of its hidden states."""
        n_states = self.model.config.num_hidden_layers + 1  # Hugging Face's hidden_states: embeddings, then each block
        if not -n_states <= config.layer < n_states:
            raise ValueError(
                f"LatentConfig.layer={config.layer} does not exist: this model has {n_states} hidden states "
                f"(give an index in [{-n_states}, {n_states - 1}]; -1 is after the final norm)"
            )
        self._config = config

    @property
    def d_model(self) -> int:
        return self.model.get_input_embeddings().embedding_dim

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def max_length(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048))

    def embed(self, ids: Int[Tensor, "..."]) -> Float[Tensor, "... d_model"]:
        return self.model.get_input_embeddings()(ids)

    def latent_embedding(
        self, h: Float[Tensor, "... d_model"], logits: Float[Tensor, "... vocab"]
    ) -> tuple[Float[Tensor, "... d_model"], Float[Tensor, "... d_model"]]:
        """The latent input built from the previous position's hidden state and logits."""
        return latent_embedding(
            h, logits, self.model.get_input_embeddings().weight, self.config, self.thinking_id, self.adapter
        )

    def encode(self, text: str, add_bos: bool | None = None, allow_special: bool = False) -> list[int]:
        """Token ids of ``text`` (BOS first when ``add_bos``, default: the model's own convention).

        Characters the tokenizer cannot represent raise ValueError. So does a special token string
        typed in the text (``<thinking>``, ``</s>``, ...): the tokenizer would read it as the control
        token, so a prompt could fake a latent or an end of sequence. Pass ``allow_special=True``
        only for text that means those tokens (a probe target such as ``"</s>"``).
        """
        add_bos = self.add_bos if add_bos is None else add_bos
        if not allow_special:
            found = sorted(t for t in self.special_tokens if t in text)
            if found:
                raise ValueError(
                    f"text {text!r} contains special token(s) {found}, which the tokenizer reads as control "
                    "tokens; remove them from the prompt (or pass allow_special=True if they are meant)"
                )
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        unk = self.tokenizer.unk_token_id
        if unk is not None and unk in ids:
            bad = sorted({ch for ch in text if unk in self.tokenizer(ch, add_special_tokens=False)["input_ids"]})
            raise ValueError(f"text {text!r} contains characters outside the model's vocabulary: {bad}")
        bos = self.tokenizer.bos_token_id
        return ([bos] if add_bos and bos is not None else []) + ids

    @property
    def special_tokens(self) -> set[str]:
        """Every special token string of the tokenizer, `<thinking>` included."""
        added = {t.content for t in self.tokenizer.added_tokens_decoder.values() if t.special}
        return added | set(self.tokenizer.all_special_tokens) | {THINKING_TOKEN}

    def token_strings(self, ids: list[int]) -> list[str]:
        return [self.tokenizer.decode([i]) for i in ids]

    def _forward(self, embeds, mask, positions, cache):
        out = self.model(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            output_hidden_states=True,
            **{self._cache_keyword: cache},
        )
        return out.logits, out.hidden_states[self.config.layer]

    # ------------------------------------------------------- training forward
    def forward(
        self,
        input_ids: Int[Tensor, "batch pos"],
        attention_mask: Int[Tensor, "batch pos"] | None = None,
        labels: Int[Tensor, "batch pos"] | None = None,
        return_parts: bool = False,
    ) -> LatentForward:
        """Teacher-forced forward where every `<thinking>` input is computed from the position before.

        The batch is laid out in blocks (see :func:`depth_layout`): the position before every latent
        ends a block and the latent opens the next, so one forward pass per block builds the latents
        of all rows at once from the previous pass's last column, with one KV cache (about one pass
        per latent depth, as in Coconut, instead of one per distinct latent column). Masked gap
        columns keep the rows aligned; position ids keep each token's own position, so every real
        position sees exactly the keys it would see in the plain sequence. Gradients flow through the
        latents. ``labels`` are the input ids with -100
        where no loss is wanted; the loss is next-token cross-entropy.
        """
        if input_ids.numel() == 0:
            raise ValueError("empty batch: input_ids has no tokens")
        if input_ids.shape[1] > self.max_length:
            raise ValueError(
                f"sequence of {input_ids.shape[1]} tokens exceeds the model's context of {self.max_length}"
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        is_latent = (input_ids == self.thinking_id) & attention_mask.bool()
        if is_latent[:, 0].any():
            raise ValueError("a sequence cannot start with <thinking>: a latent needs a previous position")
        layout = depth_layout(is_latent)
        batch, width = input_ids.shape
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        embeds = self.embed(input_ids)
        # the aligned batch: gap columns are masked out and never read back
        col = layout.column
        wide = layout.widths.sum().item()
        rows = torch.arange(batch, device=input_ids.device)[:, None].expand(-1, width)
        a_embeds = embeds.new_zeros(batch, wide, embeds.shape[-1]).index_put((rows, col), embeds)
        a_mask = attention_mask.new_zeros(batch, wide).index_put((rows, col), attention_mask)
        a_pos = positions.new_zeros(batch, wide).index_put((rows, col), positions)
        a_latent = is_latent.new_zeros(batch, wide).index_put((rows, col), is_latent)
        cache = DynamicCache()
        logits_parts, fed_parts, h_parts, pred_parts = [], [], [], []
        prev_logits = prev_h = None
        for start, end in zip(layout.offsets[:-1], layout.offsets[1:], strict=True):
            segment = a_embeds[:, start:end]
            h_seg = pred_seg = None
            where = a_latent[:, start:end, None]
            if start and bool(where.any()):  # a block's latents come from the previous block's last column
                latent, e_pred = self.latent_embedding(prev_h, prev_logits)
                segment = torch.where(where, latent.to(segment.dtype)[:, None], segment)
                if return_parts:
                    h_seg = torch.where(where, prev_h[:, None], 0)
                    pred_seg = torch.where(where, e_pred[:, None], 0)
            if return_parts:
                h_parts.append(torch.zeros_like(segment) if h_seg is None else h_seg)
                pred_parts.append(torch.zeros_like(segment) if pred_seg is None else pred_seg)
            logits, hidden = self._forward(segment, a_mask[:, :end], a_pos[:, start:end], cache)
            prev_logits, prev_h = logits[:, -1], hidden[:, -1]
            logits_parts.append(logits)
            fed_parts.append(segment)

        def back(parts: list[Tensor]) -> Tensor:
            """From the aligned layout back to the caller's positions."""
            wide_tensor = torch.cat(parts, dim=1)
            return wide_tensor.gather(1, col[..., None].expand(-1, -1, wide_tensor.shape[-1]))

        logits = back(logits_parts)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=-100
            )
        parts = (back(h_parts), back(pred_parts)) if return_parts else (None, None)
        return LatentForward(logits, back(fed_parts), loss, *parts)

    # --------------------------------------------------------------- scoring
    @torch.no_grad()
    def score(
        self, prompt_ids: list[list[int]], completion_ids: list[list[int]], meta: list[dict] | None = None
    ) -> list[Trace]:
        """Teacher-forced traces of ``prompt + completion`` (completions may hold `<thinking>` ids).

        ``gold_prob`` is the probability the model gives each next token of the sequence.
        """
        if not prompt_ids:
            raise ValueError("empty batch: no sequences to score")
        seqs = [p + c for p, c in zip(prompt_ids, completion_ids, strict=True)]
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        out = self.forward(ids.to(self.device), mask.to(self.device), return_parts=True)
        traces = []
        for i, s in enumerate(seqs):
            n = len(s)
            logits = out.logits[i, :n].float().cpu()
            gold = torch.full((n,), float("nan"))
            gold[:-1] = torch.softmax(logits[:-1], -1).gather(1, ids[i, 1:n, None]).squeeze(1)
            is_lat = ids[i, :n] == self.thinking_id
            traces.append(
                self._make_trace(
                    s,
                    len(prompt_ids[i]),
                    out.inputs_embeds[i, :n],
                    out.latent_h[i, :n][is_lat],
                    out.latent_pred[i, :n][is_lat],
                    logits,
                    gold,
                    (meta or [{}] * len(seqs))[i],
                )
            )
        return traces

    @property
    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.tokenizer.eos_token_id

    def _kinds(self, ids: list[int], n_prompt: int) -> list[str]:
        """prompt / latent / cot, and answer from the first character of the answer marker on."""
        pieces = ["" if i == self.thinking_id else self.tokenizer.decode([i]) for i in ids[n_prompt:]]
        text = "".join(pieces)
        answer_from = text.find(self.answer_marker) if self.answer_marker else -1
        kinds, offset = ["prompt"] * n_prompt, 0
        for i, piece in zip(ids[n_prompt:], pieces, strict=True):
            offset += len(piece)
            if i == self.thinking_id:
                kinds.append("latent")
            else:
                kinds.append("answer" if 0 <= answer_from < offset else "cot")
        return kinds

    def _make_trace(self, ids, n_prompt, embeds, lat_h, lat_pred, logits, gold, meta) -> Trace:
        max_prob, entropy = confidence(logits)
        special = [t for t in self.tokenizer.all_special_tokens if t != THINKING_TOKEN]
        return Trace(
            token_ids=torch.tensor(ids),
            tokens=self.token_strings(ids),
            kinds=self._kinds(ids, n_prompt),
            input_embeds=embeds.detach().float().cpu(),
            latent_h=lat_h.detach().float().cpu().reshape(-1, self.d_model),
            latent_pred=lat_pred.detach().float().cpu().reshape(-1, self.d_model),
            logits=logits,
            max_prob=max_prob,
            entropy=entropy,
            gold_prob=gold,
            meta={**meta, "special_tokens": special},
        )

    # ------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(
        self,
        prompts: str | list[str],
        max_new_tokens: int = 128,
        meta: list[dict] | None = None,
        force_latents: int = 0,
        intervention=None,
    ) -> list[Trace]:
        """Batched greedy generation with the KV cache; a latent is fed whenever argmax is `<thinking>`.

        Prompts are left-padded; a row stops after it emits EOS or after
        ``min(max_new_tokens, context - its prompt length)`` tokens, so a short prompt is not cut by
        a long one in the same batch. Empty prompts, ``max_new_tokens < 1`` and special token strings
        typed in a prompt (see :meth:`encode`) raise ValueError. ``force_latents=k`` makes the first
        k generated positions latents whatever the argmax (Coconut's "forcing k thoughts"), so every
        sample has a chain of exactly k latents to compare. Returns one :class:`Trace` per prompt
        holding the prompt and every generated position.

        ``intervention`` (default None: no call, no cost) is an object with two methods, called
        at every step (see ``lensing.interventions``): ``tokens(step, token, logits)`` returns the
        ``[batch]`` token ids to feed (it may turn `<thinking>` decisions on or off), and
        ``latents(step, latent, h, e_pred, is_latent)`` returns the ``[batch, d_model]`` latent
        input vectors to feed at rows where ``is_latent`` (called only when some row thinks).
        The trace records what was fed.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ValueError("empty batch: no prompts to generate from")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        empty = [i for i, p in enumerate(prompts) if not p]
        if empty:
            raise ValueError(f"prompt(s) {empty} are empty; give every prompt some text")
        encoded = [self.encode(p) for p in prompts]
        longest = max(map(len, encoded))
        if longest >= self.max_length:
            raise ValueError(
                f"prompt of {longest} tokens does not fit the model's context of {self.max_length} tokens; shorten it"
            )
        batch, dev = len(prompts), self.device
        budgets = torch.tensor([min(max_new_tokens, self.max_length - len(e)) for e in encoded], device=dev)
        ids = torch.full((batch, longest), self._pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, e in enumerate(encoded):
            ids[i, longest - len(e) :] = torch.tensor(e)
            mask[i, longest - len(e) :] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        embeds = self.embed(ids)
        logits_prefill, hidden = self._forward(embeds, mask, positions, cache)
        last_logits, last_h, last_pos = logits_prefill[:, -1], hidden[:, -1], positions[:, -1]
        steps_ids, steps_emb, steps_logits, steps_h, steps_pred = [], [], [], [], []
        finished = torch.zeros(batch, dtype=torch.bool, device=dev)
        lengths = torch.zeros(batch, dtype=torch.long)
        eos = self.tokenizer.eos_token_id
        for step in range(int(budgets.max())):
            finished = finished | (budgets <= step)
            token = last_logits.argmax(-1) if step >= force_latents else torch.full_like(last_pos, self.thinking_id)
            if intervention is not None:
                token = intervention.tokens(step, token, last_logits)
            token = torch.where(finished, self._pad_id, token)
            lengths += (~finished).long().cpu()
            emb = self.embed(token)
            is_lat = (token == self.thinking_id)[:, None]
            h_part = pred_part = torch.zeros_like(emb)
            if is_lat.any():
                latent, e_pred = self.latent_embedding(last_h, last_logits)
                if intervention is not None:
                    latent = intervention.latents(step, latent, last_h, e_pred, is_lat[:, 0])
                emb = torch.where(is_lat, latent.to(emb.dtype), emb)
                h_part, pred_part = torch.where(is_lat, last_h, 0), torch.where(is_lat, e_pred, 0)
            finished = finished | (token == eos)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            last_pos = (last_pos + 1).clamp(max=self.max_length - 1)  # finished rows past their budget stay in range
            logits, hidden = self._forward(emb[:, None], mask, last_pos[:, None], cache)
            last_logits, last_h = logits[:, -1], hidden[:, -1]
            for store, value in zip(
                (steps_ids, steps_emb, steps_logits, steps_h, steps_pred),
                (token, emb, last_logits, h_part, pred_part),
                strict=True,
            ):
                store.append(value.float().cpu() if value.is_floating_point() else value.cpu())
            if finished.all():
                break
        steps = {
            name: torch.stack(v, dim=1) if v else None
            for name, v in zip(
                ("ids", "emb", "logits", "h", "pred"),
                (steps_ids, steps_emb, steps_logits, steps_h, steps_pred),
                strict=True,
            )
        }
        prefill_logits, prefill_emb = logits_prefill.float().cpu(), embeds.float().cpu()
        traces = []
        for i, e in enumerate(encoded):
            n_new, pad = int(lengths[i]), longest - len(e)
            gen_ids = steps["ids"][i, :n_new].tolist() if n_new else []
            is_lat = torch.tensor([t == self.thinking_id for t in gen_ids], dtype=torch.bool)
            row_logits, row_emb = prefill_logits[i, pad:], prefill_emb[i, pad:]
            lat_h = lat_pred = torch.zeros(0, self.d_model)
            if n_new:
                row_logits = torch.cat([row_logits, steps["logits"][i, :n_new]])
                row_emb = torch.cat([row_emb, steps["emb"][i, :n_new]])
                lat_h, lat_pred = steps["h"][i, :n_new][is_lat], steps["pred"][i, :n_new][is_lat]
            seq = e + gen_ids
            gold = torch.full((len(seq),), float("nan"))
            traces.append(
                self._make_trace(
                    seq,
                    len(e),
                    row_emb,
                    lat_h,
                    lat_pred,
                    row_logits,
                    gold,
                    {"prompt": prompts[i], **((meta or [{}] * batch)[i])},
                )
            )
        return traces

    # ------------------------------------------------------------ checkpoints
    def save_pretrained(self, directory: str | Path, extra: dict | None = None) -> None:
        """Writes a Hugging Face model directory plus ``lensing.json`` (and the adapter, if any).

        Everything is written to a temporary sibling directory first and moved into place at the
        end, so a failure never leaves a half-written checkpoint. An existing checkpoint is renamed
        aside, not deleted, until the new one is in place, and is put back if that fails: there is
        always a complete checkpoint at ``directory``, or its old one beside it.
        """
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        old = tmp.with_name(f"{tmp.name}.old")
        try:
            self.model.save_pretrained(str(tmp), safe_serialization=True)
            self.tokenizer.save_pretrained(str(tmp))
            if self.adapter is not None:
                save_file({k: v.contiguous() for k, v in self.adapter.state_dict().items()}, str(tmp / ADAPTER_FILE))
            meta = {
                "format": CHECKPOINT_FORMAT,
                "latent_config": self.config.to_dict(),
                "answer_marker": self.answer_marker,
                "thinking_id": self.thinking_id,
                "vocab_size": self.model.get_input_embeddings().num_embeddings,
                "d_model": self.d_model,
                "attn_implementation": self.model.config._attn_implementation,
                "add_bos": self.add_bos,
                **(extra or {}),
            }
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
            if directory.exists():
                directory.rename(old)
            try:
                tmp.rename(directory)
            except BaseException:
                if old.exists():
                    old.rename(directory)
                raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
            if old.exists() and directory.exists():
                shutil.rmtree(old)

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> LatentLM:
        """Loads a directory written by :meth:`save_pretrained` (safetensors and JSON only)."""
        directory = Path(directory)
        meta = read_checkpoint_meta(directory)
        try:
            model = load_causal_lm(
                directory, dtype=dtype or torch.float32, attn_implementation=meta.get("attn_implementation", "sdpa")
            )
            tokenizer = AutoTokenizer.from_pretrained(str(directory))
        except CheckpointError:  # already names the checkpoint and what is wrong
            raise
        except (OSError, ValueError, SafetensorError, json.JSONDecodeError) as err:
            raise CheckpointError(f"checkpoint {directory} is corrupt or incomplete: {err}") from err
        rows = model.get_input_embeddings().num_embeddings
        if (
            rows != meta["vocab_size"]
            or model.get_input_embeddings().embedding_dim != meta["d_model"]
            or tokenizer.convert_tokens_to_ids(THINKING_TOKEN) != meta["thinking_id"]
            or len(tokenizer) > rows
        ):
            raise CheckpointError(
                f"checkpoint {directory} does not match its {META_FILE}: model has {rows} x "
                f"{model.get_input_embeddings().embedding_dim} embeddings and tokenizer {len(tokenizer)} tokens, "
                f"metadata says {meta['vocab_size']} x {meta['d_model']} with <thinking> id {meta['thinking_id']}"
            )
        lm = cls(
            model,
            tokenizer,
            LatentConfig.from_dict(meta["latent_config"]),
            meta.get("answer_marker"),
            add_bos=meta.get("add_bos", True),
        )
        if lm.adapter is not None:
            try:
                lm.adapter.load_state_dict(load_file(str(directory / ADAPTER_FILE)))
            except (OSError, SafetensorError, RuntimeError) as err:
                raise CheckpointError(f"adapter weights in {directory} are missing or do not fit: {err}") from err
        lm.meta = meta
        return lm.to(device).eval()


@dataclass
class DepthLayout:
    """Where each token goes when a batch is laid out in blocks, one forward pass per block (:func:`depth_layout`)."""

    column: Int[Tensor, "batch pos"]  # column of each token in the laid-out batch
    widths: Int[Tensor, " blocks"]  # width of each block
    offsets: list[int]  # first column of each block, then the total width


PASS_COST_COLUMNS = 8  # one extra forward pass costs about as much as this many more columns (2-core CPU, batch 64)
_WIDTH_QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)


def depth_layout(is_latent: Int[Tensor, "batch pos"], pass_cost: float = PASS_COST_COLUMNS) -> DepthLayout:
    """Lays a batch out in blocks so that the position before every latent ends a block and the latent opens the next.

    Then one forward pass per block computes every latent of the block from the previous pass's
    last column, for all rows at once. Each row's tokens keep their order; a row that reaches the
    position before its next latent early is right-aligned in its block (masked gap columns before
    it), other rows fill the block. The block width is chosen per block as a quantile of the rows'
    distances to their next latent; of the quantile rules tried, the layout with the least
    ``pass_cost * passes + total width`` wins. With the largest distance it is Coconut's one pass per
    latent depth; with the smallest it is close to one pass per distinct latent column. Loops run
    over blocks only, never over rows or positions.
    """
    batch, width = is_latent.shape
    device = is_latent.device
    pos = torch.arange(width, device=device).expand(batch, -1)
    # stops: the position before each latent, then the last position; [batch, n_stops]
    before = torch.zeros_like(is_latent)
    before[:, :-1] = is_latent[:, 1:]
    before[:, -1] = True
    n_stops = before.sum(1)
    stops = torch.full((batch, int(n_stops.max())), width - 1, dtype=torch.long, device=device)
    order = torch.where(before, pos, width).sort(1).values[:, : stops.shape[1]]
    stops = torch.where(order < width, order, stops)
    best = None
    for q in _WIDTH_QUANTILES:
        column, widths = _pack(stops, n_stops, width, q)
        cost = pass_cost * len(widths) + sum(widths)
        if best is None or cost < best[0]:
            best = (cost, column, widths)
    _, column, widths = best
    widths_t = torch.tensor(widths, dtype=torch.long, device=device)
    return DepthLayout(column, widths_t, [0, *widths_t.cumsum(0).tolist()])


def _pack(stops, n_stops, width, quantile) -> tuple[Tensor, list[int]]:
    """Every token's column when each block is as wide as the ``quantile`` of the rows' distances to their next stop."""
    batch = stops.shape[0]
    device = stops.device
    rows = torch.arange(batch, device=device)
    pos = torch.arange(width, device=device)[None]
    column = torch.zeros(batch, width, dtype=torch.long, device=device)
    nxt = torch.zeros(batch, dtype=torch.long, device=device)  # next position to place
    k = torch.zeros(batch, dtype=torch.long, device=device)  # index of the next stop
    widths, offset = [], 0
    while True:
        active = nxt < width
        if not active.any():
            return column, widths
        stop = stops[rows, k.clamp(max=stops.shape[1] - 1)]
        dist = stop - nxt + 1
        w = int(torch.quantile(dist[active].double(), quantile, interpolation="lower"))
        done = active & (dist <= w)  # reach their stop in this block: right-aligned
        take = torch.where(done, dist, torch.where(active, torch.full_like(dist, w), 0))
        first = offset + torch.where(done, w - dist, 0)  # column of each row's first token in the block
        placed = (pos >= nxt[:, None]) & (pos < (nxt + take)[:, None])
        column = torch.where(placed, first[:, None] + pos - nxt[:, None], column)
        nxt = nxt + take
        k = k + done.long()
        widths.append(w)
        offset += w


def load_causal_lm(directory: str | Path, **kwargs) -> PreTrainedModel:
    """A Hugging Face causal LM from safetensors, refusing weights that do not match its config.

    Hugging Face only reports missing, unexpected or mis-shaped tensors (and fills missing ones
    with random values); here any of them raises CheckpointError naming the tensors, so a
    damaged checkpoint or a config edited to another depth never loads with wrong weights.
    """
    model, info = AutoModelForCausalLM.from_pretrained(
        str(directory), use_safetensors=True, output_loading_info=True, **kwargs
    )
    problems = {
        kind: sorted(str(k) for k in info.get(kind) or ())
        for kind in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")
    }
    problems = {kind: keys for kind, keys in problems.items() if keys}
    if problems:
        listed = "; ".join(
            f"{kind.replace('_', ' ')}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
            for kind, keys in problems.items()
        )
        raise CheckpointError(
            f"weights in {directory} do not match its config.json ({listed}); the checkpoint is damaged or its "
            "config was edited: restore it from a good copy"
        )
    return model


def cache_keyword(model: PreTrainedModel) -> str:
    """The forward keyword that takes the KV cache: ``cache`` from transformers 5.24 on, ``past_key_values`` before.

    Passing the old name to 5.24 still works but warns (it is removed in 5.40), so ask the signature.
    """
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def read_checkpoint_meta(directory: Path) -> dict:
    """Parses and checks ``lensing.json``; raises CheckpointError naming what is wrong."""
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    path = directory / META_FILE
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise CheckpointError(f"{directory} is not a lensing checkpoint: {META_FILE} is missing") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is corrupt: {err}") from err
    required = {"format", "latent_config", "thinking_id", "vocab_size", "d_model"}
    if not isinstance(meta, dict) or required - set(meta):
        raise CheckpointError(f"{path} lacks fields {sorted(required - set(meta if isinstance(meta, dict) else {}))}")
    if meta["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} has format {meta['format']}; this lensing reads format {CHECKPOINT_FORMAT}")
    return meta
