"""Probe: a TransformerLens bridge over a LatentLM's own weights, re-running traces in one hooked forward."""

from __future__ import annotations

import copy
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from lensing.model import LatentLM, Trace

ALL_PROBES = ("logit_lens", "attention", "decompose", "decode_latents")


@dataclass
class Batch:
    """Traces right-padded into one batch; ``flat`` gathers real positions in trace order."""

    traces: list[Trace]
    embeds: Float[Tensor, "batch pos d_model"]
    mask: Int[Tensor, "batch pos"]
    positions: Int[Tensor, "batch pos"]

    @classmethod
    def from_traces(
        cls, traces: Trace | Sequence[Trace], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> Batch:
        traces = [traces] if isinstance(traces, Trace) else list(traces)
        if not traces:
            raise ValueError("empty batch: give at least one Trace")
        width = max(len(t) for t in traces)
        d_model = traces[0].input_embeds.shape[1]
        embeds = torch.zeros(len(traces), width, d_model, dtype=dtype)
        mask = torch.zeros(len(traces), width, dtype=torch.long)
        for i, t in enumerate(traces):
            if t.input_embeds.shape[1] != d_model:
                raise ValueError(f"trace {i} has d_model {t.input_embeds.shape[1]}, trace 0 has {d_model}")
            embeds[i, : len(t)] = t.input_embeds.to(dtype)
            mask[i, : len(t)] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return cls(traces, embeds.to(device), mask.to(device), positions.to(device))

    @property
    def lengths(self) -> list[int]:
        return [len(t) for t in self.traces]

    def flat(self, x: Tensor, batch_dim: int = 0) -> Tensor:
        """Keeps the real positions: ``x`` has batch at ``batch_dim`` and positions right after it;
        those two dimensions become one of all positions, trace after trace."""
        return torch.cat(
            [x.select(batch_dim, i).narrow(batch_dim, 0, n) for i, n in enumerate(self.lengths)], dim=batch_dim
        )

    def index(self) -> tuple[list[int], list[int], list[str], list[str]]:
        """Trace index, position, kind and token string of every real position, in ``flat`` order."""
        trace, pos, kind, tok = [], [], [], []
        for i, t in enumerate(self.traces):
            trace += [i] * len(t)
            pos += list(range(len(t)))
            kind += t.kinds
            tok += t.tokens
        return trace, pos, kind, tok

    def next_tokens(self) -> Int[Tensor, " n_positions"]:
        """The next token at every position (-1 at each trace's last position)."""
        return torch.cat([torch.cat([t.token_ids[1:], torch.tensor([-1])]) for t in self.traces])


def shadow_copy(model: nn.Module) -> nn.Module:
    """A structural copy of ``model`` that shares every parameter and buffer with it.

    Booting a TransformerLens bridge rewrites the model it is given (bridge wrappers replace its
    submodules, eager attention, renamed ``state_dict`` keys), so probes boot it on this copy:
    the original keeps its modules, hooks, attention implementation, generation and
    ``save_pretrained``, while both read the same storage (an in-place weight edit is seen by both).
    A parameter *replaced* on the original afterwards (e.g. by ``resize_token_embeddings``) is not
    seen by the copy: attach again after such a change.
    """
    memo = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return copy.deepcopy(model, memo)


class Probe:
    """Hook-based probes on a :class:`LatentLM`, through a TransformerLens ``TransformerBridge``.

    The bridge is booted on a shadow copy of the model that shares its weights (see
    :func:`shadow_copy`), so attaching never alters ``lm``; every hook a probe adds lives on the
    shadow and is removed when the call returns, also on error. Calls from several threads are
    safe: hooked forwards on the shared bridge take turns (a lock), the read-outs run in parallel.
    """

    def __init__(self, lm: LatentLM) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformer_lens.model_bridge import TransformerBridge

        self.lm = lm
        self.bridge = TransformerBridge.boot_transformers(
            getattr(lm.model.config, "_name_or_path", "") or "lensing-model",
            hf_model=shadow_copy(lm.model),
            tokenizer=lm.tokenizer,
            device=str(lm.device),
            dtype=lm.model.dtype,
        )
        self.bridge.eval()
        self.tuned_lens = None
        self._forward_lock = threading.Lock()  # the bridge's hook points hold per-call state

    # --------------------------------------------------------------- model facts
    @property
    def n_layers(self) -> int:
        return self.bridge.cfg.n_layers

    @property
    def n_heads(self) -> int:
        return self.bridge.cfg.n_heads

    @property
    def W_U(self) -> Float[Tensor, "d_model vocab"]:
        return self.bridge.W_U

    @property
    def layer_labels(self) -> list[str]:
        """Residual-stream read-out points: the input of each block, then the final output."""
        return ["embed"] + [f"L{layer}" for layer in range(self.n_layers)]

    def final_norm(self, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        """The model's own final norm (RMSNorm with its weight, as in the forward pass)."""
        return self.lm.model.model.norm(resid)

    def unembed(self, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... vocab"]:
        """Final norm then the LM head: what the model would predict from this residual."""
        return self.lm.model.get_output_embeddings()(self.final_norm(resid.to(self.lm.model.dtype)))

    # ------------------------------------------------------------------ forward
    @torch.no_grad()
    def run_with_cache(
        self, traces: Trace | Sequence[Trace], names: Iterable[str] | Callable[[str], bool]
    ) -> tuple[Float[Tensor, "batch pos vocab"], dict[str, Tensor], Batch]:
        """One hooked forward over the traces' recorded input embeddings, caching only ``names``."""
        batch = Batch.from_traces(traces, device=self.lm.device, dtype=self.lm.model.dtype)
        if batch.embeds.shape[1] > self.lm.max_length:
            raise ValueError(
                f"trace of {batch.embeds.shape[1]} positions exceeds the model's context of {self.lm.max_length}"
            )
        if callable(names):
            keep = names
        else:
            wanted = set(names)
            keep = wanted.__contains__
        with self._forward_lock:
            logits, cache = self.bridge.run_with_cache(
                batch.embeds,
                attention_mask=batch.mask,
                position_ids=batch.positions,
                names_filter=keep,
            )
        return logits, cache, batch

    def resid_names(self) -> list[str]:
        return [f"blocks.{layer}.hook_resid_pre" for layer in range(self.n_layers)] + [
            f"blocks.{self.n_layers - 1}.hook_resid_post"
        ]

    def resid_stack(self, cache) -> Float[Tensor, "layer batch pos d_model"]:
        return torch.stack([cache[name] for name in self.resid_names()])

    def hook_names(self, probes: Iterable[str]) -> set[str]:
        """Union of the hooks the requested probes read."""
        names: set[str] = set()
        for probe in probes:
            if probe not in ALL_PROBES:
                raise ValueError(f"unknown probe {probe!r}; available: {', '.join(ALL_PROBES)}")
            if probe in ("logit_lens", "decode_latents"):
                names.update(self.resid_names())
            if probe == "attention":
                names.update(f"blocks.{layer}.attn.hook_pattern" for layer in range(self.n_layers))
            if probe == "decompose":
                names.update(self.resid_names())
                names.update(
                    f"blocks.{layer}.{h}"
                    for layer in range(self.n_layers)
                    for h in ("hook_attn_out", "hook_mlp_out", "attn.hook_z", "hook_resid_mid")
                )
                names.add("ln_final.hook_scale")
        return names

    # ------------------------------------------------------------------- probes
    def logit_lens(self, traces, lens: str = "logit", target=None, top_k: int = 5, chunk: int | None = None):
        """Per layer and position: top-k, entropy, KL to the final layer, target rank and probability.

        ``lens`` is ``"logit"`` or ``"tuned"`` (uses :attr:`tuned_lens`). ``target`` defaults to the
        next token of each trace; give a token id or string to follow one token everywhere.
        ``chunk`` positions are read out at a time (default: as many as keep 8M final-layer logits).
        """
        from lensing.probes.logit_lens import compute_logit_lens

        _, cache, batch = self.run_with_cache(traces, self.resid_names())
        return compute_logit_lens(self, cache, batch, lens, target, top_k, chunk)

    def attention(self, traces):
        """Attention patterns per layer and head, segment shares and per-head entropy."""
        from lensing.probes.attention import compute_attention

        _, cache, batch = self.run_with_cache(traces, self.hook_names(["attention"]))
        return compute_attention(self, cache, batch)

    def decompose(self, traces, target=None, foil=None, positions: str | Sequence[int] = "all"):
        """Residual stream split into embed / heads / attention / MLP, with direct logit attribution."""
        from lensing.probes.decompose import compute_decomposition

        _, cache, batch = self.run_with_cache(traces, self.hook_names(["decompose"]))
        return compute_decomposition(self, cache, batch, target, foil, positions)

    def decode_latents(self, traces, top_k: int = 5):
        """What every latent position decodes to at every layer (and its nearest token embeddings)."""
        from lensing.probes.logit_lens import compute_latent_decoding

        _, cache, batch = self.run_with_cache(traces, self.resid_names())
        return compute_latent_decoding(self, cache, batch, top_k)

    def run(self, traces, probes: Sequence[str] = ALL_PROBES, **options) -> dict:
        """All requested probes from a single hooked forward; returns ``{probe name: result}``."""
        from lensing.probes.attention import compute_attention
        from lensing.probes.decompose import compute_decomposition
        from lensing.probes.logit_lens import compute_latent_decoding, compute_logit_lens

        _, cache, batch = self.run_with_cache(traces, self.hook_names(probes))
        out = {}
        if "logit_lens" in probes:
            out["logit_lens"] = compute_logit_lens(
                self, cache, batch, options.get("lens", "logit"), options.get("target"), options.get("top_k", 5), None
            )
        if "attention" in probes:
            out["attention"] = compute_attention(self, cache, batch)
        if "decompose" in probes:
            out["decompose"] = compute_decomposition(
                self, cache, batch, options.get("target"), options.get("foil"), options.get("positions", "all")
            )
        if "decode_latents" in probes:
            out["decode_latents"] = compute_latent_decoding(self, cache, batch, options.get("top_k", 5))
        return out

    def explore(self, traces, top_k: int = 5, title: str = ""):
        """The latent explorer: displays inline in Jupyter; ``.save("x.html")`` writes the page."""
        from lensing.viz.explore import explore

        return explore(self, traces, top_k=top_k, title=title)

    # --------------------------------------------------------------- tuned lens
    def train_tuned_lens(self, traces, steps: int = 300, lr: float = 1e-2, seed: int = 0):
        """Fits one affine translator per layer (KL to the final distribution) and uses it for ``lens="tuned"``."""
        from lensing.probes.tuned_lens import TunedLens

        self.tuned_lens = TunedLens.fit(self, traces, steps=steps, lr=lr, seed=seed)
        return self.tuned_lens

    def load_tuned_lens(self, path):
        from lensing.probes.tuned_lens import TunedLens

        self.tuned_lens = TunedLens.load(path, self)
        return self.tuned_lens


def attach(lm: LatentLM) -> Probe:
    """Attaches probes to ``lm``: a bridge on a weight-sharing shadow copy; ``lm`` itself is left untouched.

    >>> import lensing
    >>> probe = lensing.attach(lensing.load("arith-tiny"))
    >>> probe.layer_labels
    ['embed', 'L0', 'L1', 'L2', 'L3']
    """
    return Probe(lm)


def resolve_token(lm: LatentLM, token) -> int:
    """A token id from an int or a single-token string; anything else raises ValueError."""
    if isinstance(token, int):
        if not 0 <= token < lm.model.get_output_embeddings().weight.shape[0]:
            raise ValueError(f"token id {token} is outside the vocabulary")
        return token
    ids = lm.encode(token, add_bos=False, allow_special=True) if token != "<thinking>" else [lm.thinking_id]
    if len(ids) != 1:
        raise ValueError(f"target {token!r} is {len(ids)} tokens; give a single token")
    return ids[0]
