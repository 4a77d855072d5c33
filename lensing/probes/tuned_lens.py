"""Tuned lens: one affine translator per layer, trained so the read-out matches the final layer."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from jaxtyping import Float
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn


class TunedLens(nn.Module):
    """Translator ``h -> h + A_l h + b_l`` for every read-out layer but the last (identity at init).

    Trained by minimising KL(final || lens) over the positions of task traces (Belrose et al.).
    """

    def __init__(self, n_layers: int, d_model: int) -> None:
        super().__init__()
        self.translators = nn.ModuleList(nn.Linear(d_model, d_model) for _ in range(n_layers))
        for t in self.translators:
            nn.init.zeros_(t.weight)
            nn.init.zeros_(t.bias)

    def translate(self, layer: int, h: Float[Tensor, "n d_model"]) -> Float[Tensor, "n d_model"]:
        t = self.translators[layer]
        return h + t(h.to(t.weight.dtype)).to(h.dtype)

    @classmethod
    def fit(
        cls, probe, traces, steps: int = 300, lr: float = 1e-2, seed: int = 0, batch_positions: int = 1024
    ) -> TunedLens:
        """Trains translators on every position of ``traces`` (the model itself stays frozen)."""
        _, cache, batch = probe.run_with_cache(traces, probe.resid_names())
        resid = batch.flat(probe.resid_stack(cache), batch_dim=1).detach().float()  # [layer, n, d]
        n_read, n, d = resid.shape
        lens = cls(n_read - 1, d).to(resid.device)
        with torch.no_grad():
            final_logp = torch.log_softmax(probe.unembed(resid[-1]).float(), -1)
        optimizer = torch.optim.Adam(lens.parameters(), lr=lr)
        gen = torch.Generator().manual_seed(seed)
        frozen = [p for p in probe.lm.parameters() if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        try:
            for _ in range(steps):
                idx = torch.randint(0, n, (min(batch_positions, n),), generator=gen)
                loss = 0.0
                for layer in range(n_read - 1):
                    logp = torch.log_softmax(probe.unembed(lens.translate(layer, resid[layer, idx])).float(), -1)
                    target = final_logp[idx]
                    loss = loss + (target.exp() * (target - logp)).sum(-1).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        finally:
            for p in frozen:
                p.requires_grad_(True)
        return lens.eval()

    def save(self, path: str | Path) -> None:
        """Writes ``path.safetensors`` and ``path.json`` (shape metadata)."""
        path = Path(path)
        n, d = len(self.translators), self.translators[0].weight.shape[0]
        tmp = path.with_suffix(".safetensors.tmp")
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(tmp))
        path.with_suffix(".json").write_text(json.dumps({"n_layers": n, "d_model": d}))
        tmp.replace(path.with_suffix(".safetensors"))

    @classmethod
    def load(cls, path: str | Path, probe=None) -> TunedLens:
        """Reads a saved lens; with ``probe``, checks it fits that model."""
        path = Path(path)
        try:
            shape = json.loads(path.with_suffix(".json").read_text())
            state = load_file(str(path.with_suffix(".safetensors")))
        except (OSError, json.JSONDecodeError, SafetensorError) as err:
            raise ValueError(f"cannot read tuned lens {path}: {err}") from err
        if probe is not None and (shape["n_layers"] != probe.n_layers or shape["d_model"] != probe.bridge.cfg.d_model):
            raise ValueError(
                f"tuned lens {path} was trained for {shape['n_layers']} layers x d_model {shape['d_model']}, "
                f"the model has {probe.n_layers} x {probe.bridge.cfg.d_model}"
            )
        lens = cls(shape["n_layers"], shape["d_model"])
        lens.load_state_dict(state)
        return lens.eval()
