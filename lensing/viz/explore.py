"""The latent explorer: browse a model's traces in one self-contained, offline HTML page.

``explore(probe, traces)`` runs one hooked forward over the traces and packs what a researcher
clicks through: for every position the logit lens top-k at every layer, the attention it pays
and receives (per layer and head, by segment), what each latent decodes to per layer (and the
token embeddings nearest its input vector), and its direct contribution, through every head, to
the logit of the first answer token. The page inlines plotly.js and the data: it makes no
network request, so it works on a cluster node, in a mail attachment or in a notebook.

``lensing explore MODEL --out FILE.html`` writes the page; in Jupyter the returned
:class:`Explorer` displays itself inline.
"""

from __future__ import annotations

import html
import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from lensing.model.trace import KINDS, Trace
from lensing.viz.style import KIND_COLORS, LATENT_MARK

ATTENTION_BUDGET = 4_000_000  # attention weights kept per page (all traces, layers, heads); beyond it, head means only
_DIGITS = 3  # decimals kept for probabilities and attention weights


def _round(x: float, digits: int = _DIGITS) -> float | None:
    x = float(x)
    return round(x, digits) if math.isfinite(x) else None


def _answer_query(trace: Trace) -> int | None:
    """The position whose output predicts the first answer token after the answer marker (a digit
    in the arith task), or None when the trace has no answer."""
    answer = [i for i, k in enumerate(trace.kinds) if k == "answer"]
    if not answer:
        return None
    digits = [i for i in answer if trace.tokens[i].strip() and trace.tokens[i].strip()[0].isalnum()]
    target = digits[0] if digits else answer[0]
    return target - 1 if target > 0 else None


@torch.no_grad()
def source_contributions(probe, cache, batch, queries: list[int | None]) -> list[dict | None]:
    """Direct logit attribution of each *source position* to the answer logit, through each head.

    For trace ``b`` with answer query ``q`` (target: the token at ``q + 1``), head ``(l, h)``
    writes ``sum_s A[l,h,q,s] v[l,s,h] W_O[l,h]`` into the residual at ``q``; with the final
    RMSNorm scale frozen at ``q`` the target logit is linear in that write, so each source ``s``
    contributes ``A[l,h,q,s] (v[l,s,h] W_O[l,h]) . (W_U[:, target] * gamma / scale_q)``. Summed
    over sources this is the head's DLA of :meth:`Probe.decompose`.
    Returns per trace ``{"query", "target", "contrib": [layer, head, source]}`` or None.
    """
    n_layers, n_heads = probe.n_layers, probe.n_heads
    gamma = probe.bridge.ln_final.weight.float()
    W_U = probe.W_U.float()
    out: list[dict | None] = []
    for b, (trace, q) in enumerate(zip(batch.traces, queries, strict=True)):
        if q is None:
            out.append(None)
            continue
        target = int(trace.token_ids[q + 1])
        scale = cache["ln_final.hook_scale"][b, q].float()  # [1]
        readout = W_U[:, target] * gamma / scale  # [d_model]
        rows = []
        for layer in range(n_layers):
            attn = probe.bridge.blocks[layer].attn
            v = cache[f"blocks.{layer}.attn.hook_v"][b, : q + 1].float()  # [src, kv_head, d_head]
            if v.shape[1] != n_heads:  # grouped-query attention: each kv head serves several query heads
                v = v.repeat_interleave(n_heads // v.shape[1], dim=1)
            W_O = attn.W_O.float()  # [head, d_head, d_model]
            pattern = cache[f"blocks.{layer}.attn.hook_pattern"][b, :, q, : q + 1].float()  # [head, src]
            value_logit = torch.einsum("she,hed,d->hs", v, W_O, readout)  # [head, src]
            rows.append(pattern * value_logit)
        out.append({"query": q, "target": target, "contrib": torch.stack(rows).cpu()})
    return out


def explore_data(probe, traces: Trace | Sequence[Trace], top_k: int = 5, title: str = "") -> dict:
    """Everything the explorer page shows, as plain JSON-ready Python (no NaN: ``None``)."""
    from lensing.probes.attention import compute_attention
    from lensing.probes.logit_lens import compute_latent_decoding, compute_logit_lens

    traces = [traces] if isinstance(traces, Trace) else list(traces)
    if not traces:
        raise ValueError("explore needs at least one trace")
    n_layers, n_heads = probe.n_layers, probe.n_heads
    names = probe.hook_names(["logit_lens", "attention"]) | {"ln_final.hook_scale"}
    names |= {f"blocks.{layer}.attn.hook_v" for layer in range(n_layers)}
    _, cache, batch = probe.run_with_cache(traces, names)
    lens = compute_logit_lens(probe, cache, batch, "logit", None, top_k, None)
    decoding = compute_latent_decoding(probe, cache, batch, top_k)
    attention = compute_attention(probe, cache, batch)
    queries = [_answer_query(t) for t in traces]
    contributions = source_contributions(probe, cache, batch, queries)
    del cache

    strings: list[str] = []
    index: dict[int, int] = {}

    def sid(token_id: int) -> int:
        if token_id not in index:
            index[token_id] = len(strings)
            text = lens.id_to_str.get(token_id) or decoding.id_to_str.get(token_id)
            if text is None:
                text = "<thinking>" if token_id == probe.lm.thinking_id else probe.lm.tokenizer.decode([token_id])
            strings.append(text)
        return index[token_id]

    total_attention = sum(len(t) * (len(t) + 1) // 2 for t in traces) * n_layers * n_heads
    per_head = total_attention <= ATTENTION_BUDGET
    starts = [0]
    for t in traces:
        starts.append(starts[-1] + len(t))
    out_traces = []
    for b, trace in enumerate(traces):
        cols = slice(starts[b], starts[b + 1])
        top_ids = lens.stats.top_ids[:, cols]  # [layer, pos, k]
        top_probs = lens.stats.top_probs[:, cols]
        pattern = attention.patterns[b]  # [layer, head, q, k]
        if not per_head:
            pattern = pattern.mean(1, keepdim=True)
        attn = [
            [[[_round(x) for x in pattern[layer, h, q, : q + 1].tolist()] for q in range(len(trace))] for h in
             range(pattern.shape[1])]
            for layer in range(n_layers)
        ]
        latents = {}
        for j, (tb, pos) in enumerate(zip(decoding.trace_index, decoding.position, strict=True)):
            if tb == b:
                latents[str(pos)] = {
                    "step": decoding.step[j],
                    "top": [[sid(int(i)) for i in decoding.top_ids[layer, j]] for layer in range(n_layers + 1)],
                    "p": [[_round(p) for p in decoding.top_probs[layer, j].tolist()] for layer in range(n_layers + 1)],
                    "nearest": [sid(int(i)) for i in decoding.nearest_ids[j]],
                    "nearest_cos": [_round(c) for c in decoding.nearest_cosine[j].tolist()],
                }
        contrib = contributions[b]
        answer = None
        if contrib is not None:
            c = contrib["contrib"]
            answer = {
                "query": contrib["query"],
                "target": sid(contrib["target"]),
                "logit": _round(trace.logits[contrib["query"], contrib["target"]], 4),
                "contrib": [[[_round(x, 4) for x in c[layer, h].tolist()] for h in range(n_heads)]
                            for layer in range(n_layers)],
            }
        out_traces.append(
            {
                "label": f"{b}: " + trace.text(LATENT_MARK).replace("\n", " ⏎ ")[:80],
                "tokens": list(trace.tokens),
                "kinds": list(trace.kinds),
                "top": [[[sid(int(i)) for i in top_ids[layer, p]] for p in range(len(trace))]
                        for layer in range(n_layers + 1)],
                "p": [[[_round(x) for x in top_probs[layer, p].tolist()] for p in range(len(trace))]
                      for layer in range(n_layers + 1)],
                "next_prob": [[_round(x) for x in lens.stats.target_prob[layer, cols].tolist()]
                              for layer in range(n_layers + 1)],
                "max_prob": [_round(x) for x in trace.max_prob.tolist()],
                "entropy": [_round(x) for x in trace.entropy.tolist()],
                "attention": attn,
                "latents": latents,
                "answer": answer,
            }
        )
    return {
        "title": title,
        "layer_labels": list(probe.layer_labels),
        "n_layers": n_layers,
        "n_heads": n_heads,
        "per_head_attention": per_head,
        "top_k": int(lens.stats.top_ids.shape[-1]),
        "kinds": list(KINDS),
        "kind_colors": dict(KIND_COLORS),
        "strings": strings,
        "traces": out_traces,
    }


def _script_json(data: dict) -> str:
    """JSON safe to place inside a <script> element (no ``</script>`` can end it early)."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c")  # "<" only occurs inside JSON strings, where \u003c is the same text


def render_html(data: dict) -> str:
    """One self-contained page: plotly.js, the data and the explorer's script, all inline."""
    from plotly.offline import get_plotlyjs

    title = html.escape(data.get("title") or "lensing explorer")
    return (
        _PAGE.replace("__TITLE__", title)
        .replace("__PLOTLY__", get_plotlyjs())
        .replace("__DATA__", _script_json(data))
        .replace("__APP__", _APP)
    )


class Explorer:
    """The explorer page for some traces: ``.save(path)`` writes it; in Jupyter it displays inline."""

    def __init__(self, data: dict) -> None:
        self.data = data
        self._html: str | None = None

    @property
    def html(self) -> str:
        if self._html is None:
            self._html = render_html(self.data)
        return self._html

    def save(self, path: str | Path) -> Path:
        """Writes the page to ``path`` (a temporary sibling first, then renamed into place)."""
        path = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(self.html)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return path

    def _repr_html_(self) -> str:
        # an iframe keeps the page's ids, styles and plotly copy apart from the notebook's
        return (
            f'<iframe srcdoc="{html.escape(self.html, quote=True)}" '
            'style="width:100%;height:1100px;border:1px solid #ddd" sandbox="allow-scripts"></iframe>'
        )

    def __repr__(self) -> str:
        n = len(self.data["traces"])
        return f"Explorer({n} trace(s), {self.data['n_layers']} layers x {self.data['n_heads']} heads)"


def explore(probe, traces: Trace | Sequence[Trace], top_k: int = 5, title: str = "") -> Explorer:
    """The latent explorer for ``traces`` on an attached model (``lensing.attach(lm)``).

    Returns an :class:`Explorer`: it displays inline in Jupyter, and ``.save("x.html")`` writes
    the self-contained page.
    """
    return Explorer(explore_data(probe, traces, top_k=top_k, title=title))


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
 content="default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; img-src data: blob:">
<title>__TITLE__</title>
<style>
body{font-family:"DejaVu Sans",Arial,sans-serif;margin:12px 18px;color:#222}
h1{font-size:18px;margin:4px 0 8px}
#controls{display:flex;flex-wrap:wrap;gap:14px;align-items:center;margin-bottom:8px;font-size:13px}
#controls select{max-width:560px}
#strip{font-family:"DejaVu Sans Mono",monospace;font-size:14px;line-height:2.1;margin:6px 0 4px;word-break:break-all}
.tok{padding:2px 3px;margin:0 1px;border-radius:3px;cursor:pointer;border:2px solid transparent;white-space:pre}
.tok.sel{border-color:#000}
#legend span{display:inline-block;padding:1px 6px;margin-right:6px;border-radius:3px;font-size:12px}
#selected{font-size:14px;margin:6px 0;font-weight:bold}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:8px}
.panel{border:1px solid #e3e3e3;border-radius:4px;padding:2px}
.note{font-size:12px;color:#555;margin:2px 6px}
</style></head><body>
<h1>__TITLE__</h1>
<div id="controls">
<label>trace <select id="trace-select"></select></label>
<label>layer <input type="range" id="layer-slider" min="0" value="0"> <span id="layer-value"></span></label>
<label>head <select id="head-select"></select></label>
<span class="note">click a token (or use &larr; &rarr;) to select a position</span>
</div>
<div id="legend"></div>
<div id="strip"></div>
<div id="selected"></div>
<div class="grid">
<div class="panel"><div id="lens"></div></div>
<div class="panel"><div id="decode"></div><div class="note" id="decode-note"></div></div>
<div class="panel"><div id="attn-row"></div></div>
<div class="panel"><div id="attn-seg"></div></div>
<div class="panel"><div id="dla"></div><div class="note" id="dla-note"></div></div>
<div class="panel"><div id="dla-strip"></div></div>
</div>
<script>__PLOTLY__</script>
<script type="application/json" id="lensing-data">__DATA__</script>
<script>__APP__</script>
</body></html>
"""

_APP = r"""
"use strict";
const D = JSON.parse(document.getElementById("lensing-data").textContent);
const S = D.strings, L = D.n_layers, H = D.n_heads;
const state = {trace: 0, pos: 0, layer: L - 1, head: "mean"};
const CONFIG = {displayModeBar: false, responsive: true, staticPlot: false};
const $ = (id) => document.getElementById(id);
const show = (t, kind) => kind === "latent" ? "\u25c6" : t.replace(/\n/g, "\u23ce") || "\u2205";
const esc = (s) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
const label = (tr, i) => i + ":" + show(tr.tokens[i], tr.kinds[i]);
const tint = (hex, a) => {const n = parseInt(hex.slice(1), 16);
  return `rgba(${n >> 16},${(n >> 8) & 255},${n & 255},${a})`;};
const base = (title, h) => ({title: {text: title, font: {size: 13}, x: 0.02, xanchor: "left"}, height: h || 300,
  margin: {l: 60, r: 20, t: 40, b: 60}, font: {family: "DejaVu Sans, Arial", size: 11},
  paper_bgcolor: "white", plot_bgcolor: "white"});

function T() { return D.traces[state.trace]; }
const num = (x) => x === 0 ? "0" : Math.abs(x) < 0.01 ? x.toExponential(1) : x.toFixed(2);

function defaultPos(tr) {
  const lat = tr.kinds.indexOf("latent");
  if (lat >= 0) return lat;
  const prompt = tr.kinds.lastIndexOf("prompt");
  return prompt >= 0 ? prompt : 0;
}

function pattern(tr, layer, q) {  // attention row of query q: one head or the head mean
  const heads = tr.attention[layer];
  if (state.head !== "mean" && D.per_head_attention) return heads[+state.head][q];
  const row = new Array(q + 1).fill(0);
  for (const h of heads) h[q].forEach((x, k) => { row[k] += (x || 0) / heads.length; });
  return row;
}

function drawStrip() {
  const tr = T();
  $("strip").innerHTML = tr.tokens.map((t, i) => {
    const c = D.kind_colors[tr.kinds[i]] || "#999", a = tr.kinds[i] === "latent" ? 0.45 : 0.18;
    return `<span class="tok${i === state.pos ? " sel" : ""}" data-pos="${i}" title="${i} ${tr.kinds[i]}"` +
      ` style="background:${tint(c, a)};color:#000">${esc(show(t, tr.kinds[i]))}</span>`;
  }).join("");
  for (const el of document.querySelectorAll("#strip .tok"))
    el.addEventListener("click", () => select(+el.dataset.pos));
}

function drawSelected() {
  const tr = T(), i = state.pos, kind = tr.kinds[i];
  const next = i + 1 < tr.tokens.length ? JSON.stringify(show(tr.tokens[i + 1], tr.kinds[i + 1])) : "(end)";
  const lat = tr.latents[String(i)];
  $("selected").textContent = `trace ${state.trace} \u00b7 position ${i} \u00b7 ${kind} ` +
    `${JSON.stringify(show(tr.tokens[i], kind))}` + (lat ? ` (latent step ${lat.step})` : "") +
    ` \u00b7 next token ${next} \u00b7 max p ${tr.max_prob[i]} \u00b7 entropy ${tr.entropy[i]}`;
}

function drawLens() {
  const tr = T(), i = state.pos, K = D.top_k;
  const z = [], text = [];
  for (let l = 0; l <= L; l++) {
    z.push(tr.p[l][i]);
    text.push(tr.top[l][i].map((s) => show(S[s], S[s] === "<thinking>" ? "latent" : "")));
  }
  const ranks = Array.from({length: K}, (_, k) => "top " + (k + 1));
  Plotly.react("lens", [{type: "heatmap", z: z, x: ranks, y: D.layer_labels, text: text, texttemplate: "%{text}",
    colorscale: "Viridis", zmin: 0, zmax: 1, colorbar: {title: {text: "p"}},
    hovertemplate: "%{y} %{x}: %{text} (p=%{z})<extra></extra>"},
    {type: "scatter", x: tr.next_prob.map((r) => r[i]), y: D.layer_labels, xaxis: "x2", mode: "lines+markers",
     name: "p(next token)", line: {color: "#D55E00"}, showlegend: false}],
    Object.assign(base(`logit lens at ${label(tr, i)}: top-${K} per layer`, 320),
      {xaxis: {domain: [0, 0.68]}, xaxis2: {domain: [0.8, 1], range: [0, 1], title: {text: "p(next)"}},
       yaxis: {title: {text: "layer"}}}), CONFIG);
}

function drawDecode() {
  const tr = T(), positions = Object.keys(tr.latents).map(Number).sort((a, b) => a - b);
  if (!positions.length) {
    Plotly.react("decode", [], Object.assign(base("latent decoding: this trace has no latents", 320),
      {xaxis: {visible: false}, yaxis: {visible: false}}), CONFIG);
    $("decode-note").textContent = "";
    return;
  }
  const z = [], text = [];
  for (let l = 0; l <= L; l++) {
    z.push(positions.map((p) => tr.latents[p].p[l][0]));
    text.push(positions.map((p) => show(S[tr.latents[p].top[l][0]], "")));
  }
  const xs = positions.map((p) => `\u25c6${tr.latents[p].step} @${p}`);
  const shapes = [];
  const sel = positions.indexOf(state.pos);
  if (sel >= 0) shapes.push({type: "rect", x0: sel - 0.5, x1: sel + 0.5, y0: -0.5, y1: L + 0.5,
    line: {color: "#000", width: 3}});
  Plotly.react("decode", [{type: "heatmap", z: z, x: xs, y: D.layer_labels, text: text, texttemplate: "%{text}",
    colorscale: "Viridis", zmin: 0, zmax: 1, colorbar: {title: {text: "p top-1"}}}],
    Object.assign(base("what each latent decodes to, per layer (top-1)", 320), {shapes: shapes,
      xaxis: {type: "category"}, yaxis: {title: {text: "layer"}}}), CONFIG);
  const lat = tr.latents[String(state.pos)];
  $("decode-note").textContent = lat
    ? `latent step ${lat.step} at ${state.pos}: its input vector's nearest token embeddings ` +
      lat.nearest.map((s, j) => `${JSON.stringify(show(S[s], ""))} (cos ${lat.nearest_cos[j]})`).join(", ")
    : "select a \u25c6 position to see its input's nearest token embeddings";
}

function drawAttention() {
  const tr = T(), i = state.pos, l = state.layer, n = tr.tokens.length;
  const row = pattern(tr, l, i);
  const who = state.head === "mean" ? "head mean" : "head " + state.head;
  Plotly.react("attn-row", [{type: "bar", x: row.map((_, k) => label(tr, k)), y: row,
    marker: {color: row.map((_, k) => D.kind_colors[tr.kinds[k]])}, hovertemplate: "%{x}: %{y}<extra></extra>"}],
    Object.assign(base(`attention ${label(tr, i)} pays (layer ${l}, ${who})`, 320),
      {xaxis: {type: "category", tickangle: -90, tickfont: {size: 8}},
       yaxis: {range: [0, 1], title: {text: "weight"}}}),
    CONFIG);
  const pays = {}, recv = {}, count = {};
  for (const k of D.kinds) { pays[k] = 0; recv[k] = 0; count[k] = 0; }
  row.forEach((x, k) => { pays[tr.kinds[k]] += x || 0; });
  for (let q = i; q < n; q++) {
    recv[tr.kinds[q]] += pattern(tr, l, q)[i] || 0;
    count[tr.kinds[q]] += 1;
  }
  const kinds = D.kinds;
  Plotly.react("attn-seg", [
    {type: "bar", name: "pays to segment (sum)", x: kinds, y: kinds.map((k) => pays[k]),
     marker: {color: kinds.map((k) => D.kind_colors[k])}},
    {type: "bar", name: "receives from segment (mean per query)", x: kinds,
     y: kinds.map((k) => count[k] ? recv[k] / count[k] : 0), xaxis: "x2", yaxis: "y2",
     marker: {color: kinds.map((k) => tint(D.kind_colors[k], 0.5))}}],
    Object.assign(base(`attention by segment at ${label(tr, i)} (layer ${l}, ${who})`, 320),
      {showlegend: false, xaxis: {domain: [0, 0.45], title: {text: "pays to"}},
       xaxis2: {domain: [0.55, 1], anchor: "y2", title: {text: "receives from (later queries)"}},
       yaxis: {range: [0, 1]}, yaxis2: {anchor: "x2", range: [0, 1]}}), CONFIG);
}

function drawDla() {
  const tr = T(), i = state.pos, a = tr.answer;
  if (!a) {
    Plotly.react("dla", [], Object.assign(base("no answer in this trace", 320), {xaxis: {visible: false},
      yaxis: {visible: false}}), CONFIG);
    Plotly.react("dla-strip", [], base("", 320), CONFIG);
    $("dla-note").textContent = "";
    return;
  }
  const target = JSON.stringify(show(S[a.target], ""));
  const z = [], heads = Array.from({length: H}, (_, h) => "H" + h);
  for (let l = 0; l < L; l++) z.push(a.contrib[l].map((r) => i <= a.query ? r[i] : 0));
  let bound = 1e-6, total = 0;
  for (const r of z) for (const x of r) { bound = Math.max(bound, Math.abs(x)); total += x; }
  Plotly.react("dla", [{type: "heatmap", z: z, x: heads, y: Array.from({length: L}, (_, l) => "L" + l),
    colorscale: "RdBu", zmid: 0, zmin: -bound, zmax: bound, colorbar: {title: {text: "logit"}},
    text: z.map((r) => r.map(num)), texttemplate: "%{text}"}],
    Object.assign(base(`${label(tr, i)} \u2192 answer ${target}: direct contribution per head`, 320),
      {yaxis: {autorange: "reversed"}}), CONFIG);
  $("dla-note").textContent = i <= a.query
    ? `through all heads: ${num(total)} of the answer logit ${a.logit} (read at position ${a.query})`
    : `position ${i} comes after the answer is predicted (at ${a.query}): no contribution`;
  const per = [];
  for (let s = 0; s <= a.query; s++) {
    let t = 0;
    for (let l = 0; l < L; l++) for (let h = 0; h < H; h++) t += a.contrib[l][h][s];
    per.push(t);
  }
  Plotly.react("dla-strip", [{type: "bar", x: per.map((_, s) => label(tr, s)), y: per,
    marker: {color: per.map((_, s) => s === i ? "#000" : D.kind_colors[tr.kinds[s]])}}],
    Object.assign(base(`every position's direct contribution to answer ${target} (via heads)`, 320),
      {xaxis: {type: "category", tickangle: -90, tickfont: {size: 8}}, yaxis: {title: {text: "logit"}}}), CONFIG);
}

function draw() { drawStrip(); drawSelected(); drawLens(); drawDecode(); drawAttention(); drawDla(); }

function select(pos) {
  const n = T().tokens.length;
  state.pos = Math.max(0, Math.min(n - 1, pos));
  draw();
}

function init() {
  $("trace-select").innerHTML = D.traces.map((t, i) => `<option value="${i}">${esc(t.label)}</option>`).join("");
  $("trace-select").addEventListener("change", (e) => {
    state.trace = +e.target.value; state.pos = defaultPos(T()); draw(); });
  const heads = ["mean"].concat(D.per_head_attention ? Array.from({length: H}, (_, h) => String(h)) : []);
  $("head-select").innerHTML = heads.map((h) =>
    `<option value="${h}">${h === "mean" ? "mean of heads" : "H" + h}</option>`).join("");
  $("head-select").addEventListener("change", (e) => { state.head = e.target.value; drawAttention(); });
  const slider = $("layer-slider");
  slider.max = L - 1; slider.value = L - 1; $("layer-value").textContent = "L" + (L - 1);
  slider.addEventListener("input", (e) => {
    state.layer = +e.target.value; $("layer-value").textContent = "L" + state.layer; drawAttention(); });
  document.addEventListener("keydown", (e) => {
    if (e.key === "ArrowRight") select(state.pos + 1);
    if (e.key === "ArrowLeft") select(state.pos - 1);
  });
  $("legend").innerHTML = D.kinds.map((k) =>
    `<span style="background:${tint(D.kind_colors[k], k === "latent" ? 0.45 : 0.18)}">` +
    `${k === "latent" ? "\u25c6 " : ""}${k}</span>`).join("");
  state.pos = defaultPos(T());
  draw();
  document.body.dataset.ready = "1";
}
init();
"""
