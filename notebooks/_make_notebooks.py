"""Writes the tutorial notebooks (temporary generator; deleted once the notebooks exist)."""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent

SETUP = '''import sys
import time

T0 = time.perf_counter()

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
import torch

import lensing
from lensing.tasks import extract_answer, make_problem, make_splits

pio.renderers.default = "plotly_mimetype+notebook"
pd.set_option("display.width", 160)
torch.manual_seed(0)
print("kernel python:", sys.executable)'''

FOOTER = 'print(f"notebook ran in {time.perf_counter() - T0:.1f} s")'


def md(text: str):
    return new_markdown_cell(text.strip("\n"))


def code(text: str):
    return new_code_cell(text.strip("\n"))


def write(name: str, cells: list) -> None:
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for i, cell in enumerate(nb.cells):
        cell.id = f"{name[:2]}-{i:02d}"
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    nbformat.validate(nb)
    nbformat.write(nb, HERE / name)


# ---------------------------------------------------------------------------------------------- 01
write("01_quickstart.ipynb", [
    md("""
# 01 · Quickstart: a model that thinks in vectors

`lensing` ships `arith-tiny`, a 4-layer Llama (about a million parameters) trained with
**Latent Thoughts Tuning** (LT-Tuning, arXiv 2602.10229) on multi-step arithmetic chains.
Besides ordinary characters it can emit a special `<thinking>` token. When it does, the next
input is not that token's embedding but a *continuous* vector built from its own state:

$$e_{\\text{latent}} = \\alpha\\, h + (1-\\alpha)\\, \\mathrm{TopP}(\\mathrm{softmax}(\\text{logits}/T))\\, E$$

(`h` = a hidden state, the second term = the expected embedding of the predicted next token).

**Question of this notebook:** what does the model write, where does it decide to think
silently, and how accurate is it? Everything runs on CPU in a few seconds.
"""),
    code(SETUP),
    md("""
## Load the bundled model

`lensing.load` accepts a bundled name or a checkpoint directory. `arith-tiny` is the final
LT-Tuning stage; `:cot` and `:hidden` are the two earlier stages of the curriculum
(plain chain of thought, then Coconut-style latents made of the raw hidden state).
"""),
    code('''
print("bundled models:", lensing.available())
lm = lensing.load("arith-tiny")
cfg = lm.model.config
n_params = sum(p.numel() for p in lm.parameters())
print(f"{cfg.num_hidden_layers} layers, d_model={lm.d_model}, vocabulary of {len(lm.tokenizer)} tokens, "
      f"{n_params / 1e6:.2f}M parameters, <thinking> id {lm.thinking_id}")
print(lm.config)
'''),
    md("""
`mode='fusion'` with `alpha` is the LT-Tuning fusion above; `layer=-2` says which hidden state
plays the role of `h`; `tau` and `insert_probs` are only used when training data is built
(Confidence-Driven Insertion: latents go where the previous stage was unsure).

## The task

A problem gives a start value and a chain of one-digit updates modulo 100. Difficulty is the
number of steps (1-6). The gold completion writes one line per step and the answer after `###`.
"""),
    code('''
import random

problem = make_problem(steps=3, rng=random.Random(1))
print(problem.prompt + problem.completion)
print("structure:", repr(problem.structure), " intermediates:", problem.intermediates)
'''),
    md("""
## Generate

`lm.generate` decodes greedily with the KV cache and builds a latent every time the argmax is
`<thinking>`. It returns one `Trace` per prompt: every position's token, its *kind*
(`prompt`, `cot`, `latent`, `answer`), the input vector actually fed, and the model's
confidence there. `trace.text("◆")` renders latents as diamonds.
"""),
    code('''
trace = lm.generate(problem.prompt, max_new_tokens=160)[0]
print(trace.text("◆"))
print()
print("extracted answer:", extract_answer(trace.text()), " gold:", problem.answer)
print("latent positions:", trace.latent_positions, f"({trace.n_latents} latents)")
'''),
    md("""
`print(trace)` lists every position. Read `p_max` / `H` at position *t* as the confidence of the
prediction made **at** *t* (about the token at *t+1*). The row just before a `[LATENT]` is where
the model chose `<thinking>`.
"""),
    code("print(trace)"),
    code('''
kind_colors = {"prompt": "#999999", "cot": "#0072B2", "latent": "#D55E00", "answer": "#009E73"}
labels = [f"{i}:{'◆' if k == 'latent' else t.replace(chr(10), '⏎')}" for i, (t, k) in enumerate(zip(trace.tokens, trace.kinds))]
fig = go.Figure(go.Bar(x=labels, y=trace.entropy.numpy(), marker_color=[kind_colors[k] for k in trace.kinds],
                       hovertext=trace.kinds))
fig.update_layout(title="next-token entropy at every position (colour = kind, orange = latent)",
                  yaxis_title="entropy (nats)", width=900, height=330, template="simple_white")
fig.show()
'''),
    md("""
## Accuracy and latent usage on a small test set

`make_splits(n_train, n_val, n_test)` draws disjoint, seeded problem sets with `n` problems
*per difficulty*; `evaluate` generates greedily and checks the extracted answer exactly. Ten
problems per difficulty keep this fast; `lensing eval arith-tiny --n 100` does the full job.
"""),
    code('''
from lensing.train import evaluate

problems = make_splits(0, 0, 10, seed=0).test
print(len(problems), "test problems")
result = evaluate(lm, problems)
table = result.to_dataframe()
table
'''),
    code('''
by_steps = table[table.steps != "all"].astype({"steps": int})
harder = by_steps.mean_latents.iloc[-1] > by_steps.mean_latents.iloc[0]
print(f"overall accuracy {result.accuracy:.1f}% on {len(problems)} problems")
print(f"mean latents per problem: {by_steps.mean_latents.iloc[0]:.2f} at 1 step, "
      f"{by_steps.mean_latents.iloc[-1]:.2f} at 6 steps -> the model thinks "
      f"{'more' if harder else 'not more'} on longer chains in this sample")
'''),
    md("""
## Where does the model choose to think?

Confidence-Driven Insertion put latents in the training data before tokens the CoT model found
hard. If the final model learned that policy, the token written right after a run of latents
should be informative, e.g. a digit of an intermediate result rather than punctuation. Let's
count, over all generated traces, which token follows each latent run.
"""),
    code('''
from collections import Counter

after = Counter()
for t in result.traces:
    for i in t.latent_positions:
        if i + 1 < len(t) and t.kinds[i + 1] != "latent":
            tok = t.tokens[i + 1]
            after["digit" if tok.isdigit() else repr(tok)] += 1
total = sum(after.values())
if total:
    print(f"{total} latent runs; token written right after them:")
    for tok, n in after.most_common(8):
        print(f"  {tok:8s} {n:4d}  ({100 * n / total:.0f}%)")
else:
    print("no latents were emitted on these problems")
'''),
    md("""
Compare with the stage-1 chain-of-thought model, which never emits latents: it writes every
step out in text. The accuracy gap (if any) between the two rows is what the latent curriculum
cost or bought on this sample.
"""),
    code('''
cot = lensing.load("arith-tiny:cot")
cot_result = evaluate(cot, problems)
pd.DataFrame({"arith-tiny:cot": cot_result.to_dataframe().set_index("steps").accuracy,
              "arith-tiny (lt)": table.set_index("steps").accuracy}).round(1)
'''),
    md("""
## Traces are data

A `Trace` saves to safetensors + JSON and loads back exactly, so expensive generations can be
kept and probed later (the probes in the next notebooks re-run the recorded input vectors).
"""),
    code('''
import tempfile
from pathlib import Path

with tempfile.TemporaryDirectory() as tmp:
    trace.save(Path(tmp) / "example")
    again = lensing.Trace.load(Path(tmp) / "example")
print("same tokens:", again.tokens == trace.tokens,
      "| same input vectors:", torch.equal(again.input_embeds, trace.input_embeds))
print("latent parts stored:", tuple(again.latent_h.shape), "(h) and", tuple(again.latent_pred.shape), "(e_pred)")
'''),
    md("""
**Next:** `02_logit_lens` asks what each layer predicts, `03_attention` whether the answer
looks at the latents, `04_residual_decomposition` which heads write the answer,
`05_feature_collapse` and `06_trails` study the geometry of latents and reasoning paths, and
`07_paper_figures` rebuilds paper figures.
"""),
    code(FOOTER),
])

# ---------------------------------------------------------------------------------------------- 02
write("02_logit_lens.ipynb", [
    md("""
# 02 · Logit lens: what does each layer already know?

The **logit lens** reads the residual stream at every layer through the model's own final norm
and unembedding, as if the network stopped there. The **tuned lens** first applies a small
learned affine map per layer, which corrects for the basis drifting between layers.

**Questions:** at which depth does the model settle on the next token? What do the latent
positions "say" when read as tokens? And at which layer does the decision to emit
`<thinking>` appear?
"""),
    code(SETUP),
    code('''
lm = lensing.load("arith-tiny")
problems = make_splits(0, 0, 4, seed=0).test          # 4 per difficulty = 24 test problems
traces = lm.generate([p.prompt for p in problems], max_new_tokens=160)
with_latents = [t for t in traces if t.n_latents]
print(f"{len(with_latents)} of {len(traces)} traces contain latents")
focus = (with_latents + [t for t in traces if not t.n_latents])[:8]   # traces with latents first
print(focus[0].text("◆"))
'''),
    md("""
`lensing.attach(lm)` boots a TransformerLens bridge on the same weights (no copy) and re-runs
the traces with the input vectors generation fed, latents included. Read-out points are the
input of each block (`embed` = the input vectors, `L0`...) plus the final output.
"""),
    code('''
probe = lensing.attach(lm)
print("read-out layers:", probe.layer_labels)
lens = probe.logit_lens(focus, top_k=5)
df = lens.to_dataframe()
df.head()
'''),
    md("""
One row per (layer, position). `target` is the token that actually came next;
`target_prob` / `target_rank` say how well that layer's read-out predicts it, `kl_to_final`
how far it is from the model's final distribution, and `prediction_depth` the first layer from
which the top-1 token no longer changes.

The table below averages over positions of each kind. The last read-out *is* the model's
output, so its KL is 0 by construction.
"""),
    code('''
summary = (df.groupby(["layer_label", "kind"], sort=False)[["target_prob", "kl_to_final"]].mean()
           .unstack("kind").round(3))
summary
'''),
    code('''
final = df[df.layer == df.layer.max()]
depth = final.groupby("kind").prediction_depth.mean()
print("mean prediction depth by kind (0 = already decided at the input, "
      f"{df.layer.max()} = only at the output):")
print(depth.round(2).to_string())
print(f"-> the most 'late-decided' kind here is {depth.idxmax()!r}, the earliest {depth.idxmin()!r}")
'''),
    md("""
The heatmap shows one trace: layers × positions, the top-1 token in each cell, colour = the
probability of the token that really came next. Latent columns are outlined (◆).
"""),
    code('lens.plot(trace=0, value="target_prob").show()'),
    code('lens.plot(trace=0, value="kl_to_final").show()'),
    md("""
## Following one token: when does the model decide to think?

`target=` follows one token at every position instead of the next one. With
`target="<thinking>"` we can compare, layer by layer, the probability of `<thinking>` at
positions where the model then emitted a latent versus everywhere else in the generated text.
"""),
    code('''
think = probe.logit_lens(focus, target="<thinking>").to_dataframe()
next_is_latent = []
for t in focus:
    next_is_latent += [i + 1 < len(t) and t.kinds[i + 1] == "latent" for i in range(len(t))]
generated = think.kind != "prompt"
think["before_latent"] = np.tile(next_is_latent, df.layer.nunique())
p_think = (think[generated].groupby(["layer_label", "before_latent"], sort=False).target_prob.mean()
           .unstack().rename(columns={True: "next is latent", False: "next is text"}))
p_think.round(4)
'''),
    code('''
if "next is latent" in p_think and "next is text" in p_think:
    gap = p_think["next is latent"] - p_think["next is text"]
    first = gap[gap > 0.5].index[:1].tolist()
    print("p(<thinking>) gap (latent-next minus text-next) by layer:", gap.round(3).to_dict())
    print("first read-out where the gap exceeds 0.5:", first[0] if first else "none")
else:
    print("no latents in these traces: nothing to compare")
'''),
    md("""
## Tuned lens

The logit lens can be unfair to early layers whose basis differs from the output's. We train
one affine translator per layer on traces of the **validation** split (disjoint from the test
problems above) and compare the KL to the final layer on the held-out `focus` traces.
"""),
    code('''
val = make_splits(0, 6, 0, seed=0).val
train_traces = lm.generate([p.prompt for p in val], max_new_tokens=160)
probe.train_tuned_lens(train_traces, steps=150)
tuned = probe.logit_lens(focus, lens="tuned")
kl = pd.DataFrame({"logit lens": lens.mean_kl_by_layer().numpy(), "tuned lens": tuned.mean_kl_by_layer().numpy()},
                  index=probe.layer_labels)
kl.round(4)
'''),
    code('''
inner = kl.iloc[:-1]
better = int((inner["tuned lens"] < inner["logit lens"]).sum())
print(f"on held-out traces the tuned lens has lower KL at {better} of {len(inner)} intermediate read-outs")
'''),
    md("""
## Decoding the latents

What is a latent position "about"? `decode_latents` reads every latent position through the
logit lens at every layer and also reports which token embeddings its *input vector* is
closest to (cosine). Coconut found continuous thoughts decode to intermediate results.
"""),
    code('''
dec = probe.decode_latents(focus)
ddf = dec.to_dataframe()
ddf[ddf.layer == ddf.layer.max()][["trace", "position", "latent_step", "top_tokens", "p_top1",
                                   "nearest_input_tokens", "nearest_cosine"]].head(10)
'''),
    code('''
last = ddf[ddf.layer == ddf.layer.max()]
if len(last):
    share_digit = last.top1.str.fullmatch(r"\\d").mean()
    share_think = (last.top1 == "<thinking>").mean()
    print(f"{len(last)} latent positions: at the last layer {100 * share_digit:.0f}% decode to a digit, "
          f"{100 * share_think:.0f}% to <thinking> (another latent next)")
    print(f"mean cosine of a latent input to its nearest token embedding: {last.nearest_cosine.mean():.3f}")
else:
    print("no latent positions to decode")
'''),
    code('dec.plot(trace=0).show() if len(ddf) else print("no latents")'),
    md("""
**Take-away.** The tables above say, for this model and these problems, how deep the answer is
decided, whether the logit lens or the tuned lens tracks the final output better, and what
latents read out as. Re-run with more problems (`make_splits(0, 0, n, ...)`) for tighter
numbers.
"""),
    code(FOOTER),
])

# ---------------------------------------------------------------------------------------------- 03
write("03_attention.ipynb", [
    md("""
# 03 · Attention: does the answer look at the latent thoughts?

If latent tokens carry reasoning, later positions, and the answer above all, should read from
them. Paper Fig. 4 (right) plots the attention mass on `<thinking>` positions along the
sequence. Here we measure it per layer and per segment, compare it with the share you would
get by attending uniformly, and look at individual heads.
"""),
    code(SETUP),
    code('''
lm = lensing.load("arith-tiny")
problems = make_splits(0, 0, 5, seed=0).test              # 30 test problems
traces = lm.generate([p.prompt for p in problems], max_new_tokens=160)
print(sum(t.n_latents > 0 for t in traces), "of", len(traces), "traces contain latents")
probe = lensing.attach(lm)
attn = probe.attention(traces)
print("one pattern per trace, shape [layer, head, query, key]:", tuple(attn.patterns[0].shape))
'''),
    md("""
## Segment shares

`segment_shares()` averages, over all queries of one kind, the head-averaged attention mass on
keys of each kind. For each query kind the shares over key kinds sum to 1, which we check.
"""),
    code('''
shares = attn.segment_shares()
last_layer = shares.layer.max()
table = shares[shares.layer == last_layer].pivot(index="query_kind", columns="key_kind", values="share")
print(f"layer {last_layer} (last); rows = query kind, columns = key kind")
print("row sums:", table.sum(axis=1).round(4).to_dict())
table.round(3)
'''),
    md("""
A share means little on its own: answers are long after the prompt, so they *could* spread
attention uniformly over many keys. The **enrichment** below divides the answer → latent share
by the fraction of visible keys that are latents (uniform attention gives 1; above 1 means
latents get more than their fair share).
"""),
    code('''
def uniform_share(traces, query_kind, key_kind):
    """Mean over queries of the fraction of visible (causal) keys that have key_kind."""
    values = []
    for t in traces:
        is_key = np.array([k == key_kind for k in t.kinds], dtype=float)
        seen = np.cumsum(is_key) / np.arange(1, len(t) + 1)
        values += [seen[i] for i, k in enumerate(t.kinds) if k == query_kind]
    return float(np.mean(values)) if values else float("nan")

base = uniform_share(traces, "answer", "latent")
per_layer = shares[(shares.query_kind == "answer") & (shares.key_kind == "latent")].set_index("layer").share
enrich = pd.DataFrame({"answer->latent share": per_layer, "uniform share": base, "enrichment": per_layer / base})
enrich.round(3)
'''),
    code('''
if base > 0:
    top = enrich.enrichment.idxmax()
    print(f"latents are {enrich.enrichment.max():.2f}x over-attended by answer tokens at layer {top} "
          f"({'more' if enrich.enrichment.max() > 1 else 'less'} than uniform attention would give)")
else:
    print("no latent positions before the answers in these traces")
'''),
    md("""
## Along one sequence (paper Fig. 4, right)

`share_on("latent", layer=-1)` gives, for every query position of every trace, the
head-averaged last-layer mass on latent keys.
"""),
    code('''
i = next((j for j, t in enumerate(traces) if t.n_latents), 0)
t = traces[i]
share = attn.share_on("latent", layer=-1)[i].numpy()
kind_colors = {"prompt": "#999999", "cot": "#0072B2", "latent": "#D55E00", "answer": "#009E73"}
labels = [f"{p}:{'◆' if k == 'latent' else tok.replace(chr(10), '⏎')}" for p, (tok, k) in enumerate(zip(t.tokens, t.kinds))]
fig = go.Figure(go.Bar(x=labels, y=share, marker_color=[kind_colors[k] for k in t.kinds]))
fig.update_layout(title=f"trace {i}: last-layer attention mass on latent positions, per query",
                  yaxis_title="share on latents", width=900, height=320, template="simple_white")
fig.show()
print(t.text("◆"))
'''),
    md("""
## The full pattern

`plot(trace, layer)` draws the head-averaged pattern (latent rows and columns dotted) next to
the segment-share matrix of that layer.
"""),
    code("attn.plot(trace=i, layer=-1).show()"),
    md("""
## Heads

`head_entropy()` is the mean entropy (nats) of each head's attention distribution. Low entropy
= a focused head that reads few positions; high = a head that averages broadly. Below we also
rank heads by how much of their attention goes to latents from answer positions.
"""),
    code('''
H = attn.head_entropy()
fig = go.Figure(go.Heatmap(z=H.numpy(), x=[f"H{h}" for h in range(H.shape[1])], y=[f"L{l}" for l in range(H.shape[0])],
                           colorscale="Viridis", colorbar={"title": "nats"}, text=H.numpy().round(2), texttemplate="%{text}"))
fig.update_layout(title="mean attention entropy per head", width=420, height=320, template="simple_white")
fig.show()
'''),
    code('''
rows = []
for pattern, t in zip(attn.patterns, traces):
    q = torch.tensor([k == "answer" for k in t.kinds])
    k = torch.tensor([k == "latent" for k in t.kinds])
    if q.any() and k.any():
        rows.append(pattern[:, :, q][:, :, :, k].sum(-1).mean(-1))   # [layer, head]
if rows:
    per_head = torch.stack(rows).mean(0)
    ranked = sorted(((float(per_head[l, h]), f"L{l}H{h}") for l in range(per_head.shape[0])
                     for h in range(per_head.shape[1])), reverse=True)
    print("heads ranked by answer->latent attention (traces that have both):")
    for v, name in ranked[:5]:
        print(f"  {name}: {v:.3f}")
else:
    print("no trace has both answer and latent positions")
'''),
    md("""
## Versus the chain-of-thought model

The stage-1 model writes every step in text. How much of the answer's attention goes to the
reasoning segment (`cot` + `latent` keys) in each model? If latents replace text lines
without losing information, the LT model's answer should still read its reasoning segment.
"""),
    code('''
cot_lm = lensing.load("arith-tiny:cot")
cot_traces = cot_lm.generate([p.prompt for p in problems], max_new_tokens=160)
cot_shares = lensing.attach(cot_lm).attention(cot_traces).segment_shares()

def reasoning_share(s):
    a = s[(s.query_kind == "answer") & s.key_kind.isin(["cot", "latent"])]
    return a.groupby("layer").share.sum()

pd.DataFrame({"arith-tiny:cot": reasoning_share(cot_shares), "arith-tiny (lt)": reasoning_share(shares)}).round(3)
'''),
    code(FOOTER),
])

# ---------------------------------------------------------------------------------------------- 04
write("04_residual_decomposition.ipynb", [
    md("""
# 04 · Residual decomposition: who writes the answer digit?

The final residual stream is a sum: the input vector plus every layer's attention and MLP
output. Freeze the final RMSNorm's scale at its value for a position and the logit of any token
becomes linear in those parts, so each part gets a **direct logit attribution** (DLA) that sums
*exactly* to the logit. Attention outputs split further into heads.

**Question:** which layers and heads push up the correct answer digit, and against which
competitor?
"""),
    code(SETUP),
    code('''
lm = lensing.load("arith-tiny")
problems = make_splits(0, 0, 3, seed=0).test                # 18 test problems
traces = lm.generate([p.prompt for p in problems], max_new_tokens=160)
probe = lensing.attach(lm)
parts = probe.decompose(traces, positions="answer")         # target = the next token
df = parts.to_dataframe()
print(len(parts.position), "answer positions;", len(parts.component_labels), "parts:", parts.component_labels)
df.head()
'''),
    md("""
## Sanity checks first

Two identities must hold up to float error: the parts' DLAs sum to the model's logit, and the
heads of a layer sum to that layer's attention output.
"""),
    code('''
err_logit = (parts.dla.sum(0) - parts.logit).abs().max().item()
n_layers, n_heads = probe.n_layers, probe.n_heads
heads = parts.heads.reshape(n_layers, n_heads, *parts.heads.shape[1:]).sum(1)
attn_parts = parts.components[1::2]                          # L0.attn, L1.attn, ...
err_heads = (heads - attn_parts).abs().max().item()
print(f"max |sum of DLA - logit|        = {err_logit:.2e}  (logits are of order {parts.logit.abs().mean():.1f})")
print(f"max |sum of heads - attn output| = {err_heads:.2e}")
'''),
    md("""
## Which parts write the answer digits?

Answer positions include the `###` marker; we keep the positions whose next token is a digit,
i.e. the ones that actually write the answer.
"""),
    code('''
targets = [lm.tokenizer.decode([int(i)]) for i in parts.target_ids]
digit_cols = [j for j, s in enumerate(targets) if s.isdigit()]
print(f"{len(digit_cols)} positions predict an answer digit")
mean_dla = pd.Series(parts.dla[:, digit_cols].mean(1).numpy(), index=parts.component_labels)
fig = go.Figure(go.Bar(x=mean_dla.index, y=mean_dla.values,
                       marker_color=["#999999" if "embed" in p else "#0072B2" if "attn" in p else "#E69F00"
                                     for p in mean_dla.index]))
fig.update_layout(title="mean DLA to the answer digit by part (grey embed, blue attention, orange MLP)",
                  yaxis_title="logits", width=760, height=330, template="simple_white")
fig.show()
print(f"largest mean contributor: {mean_dla.abs().idxmax()} ({mean_dla[mean_dla.abs().idxmax()]:+.2f} logits); "
      f"attention total {mean_dla.filter(like='attn').sum():+.2f}, MLP total {mean_dla.filter(like='mlp').sum():+.2f}")
'''),
    code('''
head_dla = pd.Series(parts.head_dla[:, digit_cols].mean(1).numpy(), index=parts.head_labels)
head_dla.sort_values(key=abs, ascending=False).head(6).round(3).to_frame("mean DLA to answer digit")
'''),
    md("""
`plot()` shows one position: by default the first answer digit of the first trace.
"""),
    code("parts.plot().show()"),
    md("""
## Target versus foil

A logit alone mixes "this digit" with "any digit". With `foil=`, DLA attributes the logit
*difference* target − foil. For one trace, at the position that writes the first answer digit,
we take the model's runner-up digit as the foil.
"""),
    code('''
t = traces[0]
pos = next(i for i in range(len(t) - 1) if t.kinds[i] == "answer" and t.tokens[i + 1].isdigit())
gold = t.tokens[pos + 1]
digit_ids = {d: lm.tokenizer.convert_tokens_to_ids(d) for d in "0123456789"}
ranked = sorted(digit_ids, key=lambda d: -float(t.logits[pos, digit_ids[d]]))
foil = next(d for d in ranked if d != gold)
contrast = probe.decompose([t], target=gold, foil=foil, positions=[pos])
margin = pd.Series(contrast.dla[:, 0].numpy(), index=contrast.component_labels)
print(f"trace 0, position {pos}: writes {gold!r}; runner-up digit {foil!r}; logit margin {float(contrast.logit[0]):+.2f}")
print(f"the part adding most to the margin: {margin.idxmax()} ({margin.max():+.2f}); "
      f"most against it: {margin.idxmin()} ({margin.min():+.2f})")
margin.round(3).to_frame("DLA to logit(gold) - logit(foil)").T
'''),
    md("""
## Residual norms: are latent inputs out of scale?

A latent input is built from a hidden state, not looked up in the embedding table, so its norm
can differ from a token embedding's. `norms_dataframe()` gives the residual norm (and the RMS
that the final norm divides by) at every read-out layer and position.
"""),
    code('''
all_parts = probe.decompose(traces[:8], positions="all")
norms = all_parts.norms_dataframe()
pivot = norms.groupby(["layer_label", "kind"], sort=False).resid_norm.mean().unstack("kind")
pivot.round(2)
'''),
    code('''
if "latent" in pivot:
    tokens = pivot.loc["embed", [k for k in ("prompt", "cot", "answer") if k in pivot]].mean()
    print(f"at the input, latent vectors have norm {pivot.loc['embed', 'latent']:.2f} vs {tokens:.2f} for "
          f"token embeddings (ratio {pivot.loc['embed', 'latent'] / tokens:.2f})")
else:
    print("no latents in these traces")
'''),
    md("""
## Everything from one forward

`probe.run(traces)` computes the logit lens, attention, decomposition and latent decoding
from a single hooked forward. Its decomposition matches the dedicated call.
"""),
    code('''
results = probe.run(traces[:4], positions="answer")
print(sorted(results))
same = torch.allclose(results["decompose"].dla, probe.decompose(traces[:4], positions="answer").dla, atol=1e-5)
print("run() decomposition equals decompose():", same)
'''),
    code(FOOTER),
])

# ---------------------------------------------------------------------------------------------- 05
write("05_feature_collapse.ipynb", [
    md("""
# 05 · Feature collapse: do long latent chains lose information?

Coconut-style latents feed the raw hidden state back as the next input. The LT-Tuning paper
argues that over a long chain such latents **collapse** (different problems end up with nearly
the same vector) and drift away from the token-embedding distribution the model was trained on
(**distribution mismatch**); fusing in the predicted-token embedding is meant to fix both. The
paper shows a PCA; `lensing` measures it.

We force a chain of 6 latents after each prompt (Coconut's "forcing k thoughts") for the stage-2
model (`:hidden`, latent = h) and the stage-3 model (`:lt`, latent = 0.6 h + 0.4 e_pred), and
compare the latent input vectors step by step.
"""),
    code(SETUP),
    code('''
from lensing.studies import collapse_study

problems = make_splits(0, 0, 10, seed=0).test            # 60 test problems, 10 per difficulty
models = {"arith-tiny:hidden": lensing.load("arith-tiny:hidden"), "arith-tiny:lt": lensing.load("arith-tiny")}
report = collapse_study(models, problems, where="latent", force_latents=6)
table = report.to_dataframe()
print(table.shape, "rows = model x latent step x read-out layer")
table.head()
'''),
    md("""
## Diversity across problems

* **effective rank** (entropy of the normalised singular values of the centred samples; higher
  = the latents of different problems spread over more directions);
* **mean pairwise cosine** between problems (1 = everything points the same way).

Both at the `embed` read-out, i.e. the latent input vectors themselves.
"""),
    code('''
rank = report.compare("effective_rank")
cos = report.compare("mean_cosine")
pd.concat({"effective rank": rank, "cross-problem cosine": cos}, axis=1).round(3)
'''),
    code('''
last = rank.index.max()
winner = rank.loc[last].idxmax()
print(f"at latent step {last}: effective rank " + ", ".join(f"{m} {v:.2f}" for m, v in rank.loc[last].items())
      + f" -> {winner} keeps the more diverse latents")
for m in rank.columns:
    trend = rank[m].iloc[-1] - rank[m].iloc[0]
    print(f"  {m}: effective rank changes by {trend:+.2f} from step 1 to step {last}")
'''),
    md("""
## Does the chain move, and is it on the token manifold?

* **step cosine**: mean cosine between a problem's latent at step k and at step k-1 (near 1 =
  the chain stalls, repeating itself);
* **norm ratio**: mean latent norm over mean token-embedding norm (1 = same scale as tokens);
* **Fréchet distance to tokens**: the FID formula between a Gaussian fitted to the latents and
  one fitted to the token-embedding table (0 = same first two moments).
"""),
    code('''
pd.concat({m: report.compare(m) for m in ("step_cosine", "norm_ratio", "frechet_to_tokens")}, axis=1).round(3)
'''),
    code('''
fd = report.compare("frechet_to_tokens").mean()
nr = report.compare("norm_ratio").mean()
print("mean Fréchet distance to the token cloud:", fd.round(2).to_dict(), "-> closer:", fd.idxmin())
print("mean norm ratio to tokens:", nr.round(2).to_dict(), "-> closer to 1:", (nr - 1).abs().idxmin())
'''),
    code("report.plot().show()"),
    md("""
## Is the information still there?

A latent could be diverse yet useless. The report fits a cross-validated linear probe that
decodes the last digit of the **first** intermediate result and of the **answer** from the
latent at each step, next to the majority-class baseline. With 60 problems this is a coarse,
noisy check; `lensing collapse --n 300` gives firmer numbers.
"""),
    code('''
cols = ["probe_first_result", "probe_first_result_baseline", "probe_answer", "probe_answer_baseline"]
sub = table[(table.layer == "embed")][["model", "step", *[c for c in cols if c in table]]]
sub.round(3)
'''),
    md("""
## The same numbers by hand

The study is built from pure metric functions in `lensing.metrics`. Here we regenerate the
forced chains, stack the latent input vectors into `[problems, steps, d]` and recompute
effective rank and cosines, then use linear CKA to ask how similar the *geometry* of step-k
latents is to step 1 (1 = same up to rotation and scale).
"""),
    code('''
from lensing.metrics import effective_rank, linear_cka, step_cosines

prompts = [p.prompt for p in problems]
chains = {}
for name, model in models.items():
    traces = model.generate(prompts, max_new_tokens=8, force_latents=6)
    chains[name] = torch.stack([t.input_embeds[t.latent_positions[:6]] for t in traces])   # [n, 6, d]

rows = []
for name, x in chains.items():
    sc = step_cosines(x)
    for k in range(x.shape[1]):
        rows.append({"model": name, "step": k + 1, "effective_rank": float(effective_rank(x[:, k])),
                     "cross_cosine": float(sc.cross_sample[k]), "cka_to_step1": float(linear_cka(x[:, 0], x[:, k]))})
by_hand = pd.DataFrame(rows)
by_hand.pivot(index="step", columns="model", values=["effective_rank", "cka_to_step1"]).round(3)
'''),
    code('''
mine = by_hand.pivot(index="step", columns="model", values="effective_rank")
diff = (mine - rank[mine.columns]).abs().max().max()
print(f"largest difference between the study's effective rank and the by-hand one: {diff:.2e}")
'''),
    md("""
**Reading the result.** The cells above print which model keeps the more diverse latents at
the end of the chain, how fast each model's diversity changes with the number of steps, and
which latents sit closer to the token-embedding cloud. The paper's claim is that `:lt` should
win on all three; on this tiny model and small sample, judge it from the printed numbers.
"""),
    code(FOOTER),
])

# ---------------------------------------------------------------------------------------------- 06
write("06_trails.ipynb", [
    md("""
# 06 · Trails: do same-structure problems follow the same path?

Two 3-step problems like `a=12;b=a+3;c=b-5;d=c+1` and `a=70;b=a+8;c=b-2;d=c+9` share a
**structure** (`+-+`): the same operations in the same order, different numbers. If the
model has learned reusable reasoning, their internal *trails* should be more alike than those
of problems with other structures — they "fall into the same rut". `lensing.studies` measures
two kinds of trail:

* **depth trail**: the residual stream at the end of the prompt, layer by layer;
* **chain trail**: the residual at the end of each CoT line (one state per reasoning step).

Per read-out layer it reports the ratio of within- to between-structure cosine distance
(**< 1 = same-structure trails are closer**) and a retrieval test: does a trail's nearest
neighbour in a library have the same structure, compared with a bag-of-tokens baseline?
"""),
    code(SETUP),
    code('''
from collections import Counter

from lensing.studies import trails_study

problems = make_splits(0, 0, 80, seed=0, difficulties=(3,)).test      # 80 three-step problems
print("structures:", dict(sorted(Counter(p.structure for p in problems).items())))
lm = lensing.load("arith-tiny")
report = trails_study(lm, problems)
print(f"{len(report.chain_trails)} of {len(problems)} generations wrote all 3 CoT lines (complete chain trails)")
report.to_dataframe().round(3)
'''),
    code('''
t = report.to_dataframe()
rut = t[t.depth_ratio < 1].layer.tolist()
print("depth trails: layers where same-structure prompts are closer than different-structure ones:", rut or "none")
best = t.loc[t.capture_rate.idxmax()]
print(f"best library capture {best.capture_rate:.2f} at {best.layer} vs bag-of-tokens {best.baseline_capture_rate:.2f} "
      f"-> {'beats' if best.capture_rate > best.baseline_capture_rate else 'does not beat'} the baseline")
if "chain_ratio" in t:
    print("chain trails (step directions): within/between distance ratio by layer:",
          dict(zip(t.layer, t.chain_ratio.round(3))))
else:
    print("too few complete chains for chain-trail statistics")
'''),
    md("""
Chance for the retrieval test is roughly the share of library items in the query's own
structure, about 1/8 here. The bag-of-tokens baseline counts prompt characters: it knows how
many `+` and `-` a problem has but not their order, so beating it requires order information.
"""),
    code('report.plot().show() if "chain_ratio" in report.table else print("no chain statistics to plot")'),
    md("""
## Chain trails in PCA space

Each line is one problem's chain trail at the last layer (one point per CoT line), projected on
the top three principal components of all trails, coloured by structure.
"""),
    code('report.plot_pca(layer=-1).show() if len(report.chain_trails) >= 3 else print("not enough complete chains")'),
    md("""
## Trails by hand

The study is built from small pure functions in `lensing.studies.trails`. Below: the
within/between similarity of the raw chain states (not their step directions) at the last
layer, and the mean cosine between the *step directions* of two chains of the same vs different
structure.
"""),
    code('''
from lensing.studies.trails import centred_cosine_matrix, distance_ratio, step_direction_cosine, within_between

chains, groups = report.chain_trails, report.structures
if len(chains) >= 4:
    states = torch.stack([c[:, -1].flatten() for c in chains])            # [n, steps * d] at the last layer
    w, b = within_between(centred_cosine_matrix(states), groups)
    print(f"raw chain states, last layer: within {w:.3f}, between {b:.3f}, distance ratio {distance_ratio(w, b):.3f}")
    same, diff = [], []
    for i in range(len(chains)):
        for j in range(i + 1, min(len(chains), i + 25)):
            c = step_direction_cosine(chains[i][:, -1], chains[j][:, -1])
            (same if groups[i] == groups[j] else diff).append(c)
    print(f"step-direction cosine: same structure {np.mean(same):.3f} (n={len(same)}), "
          f"different {np.mean(diff):.3f} (n={len(diff)})")
else:
    print("not enough complete chains")
'''),
    md("""
## Attribution trail

For the first problem, `report.attribution` lists the strongest *token → head → logit* edges
into the token written two positions after the answer marker starts (the first answer digit):
each edge is the head's direct logit attribution times its attention to that source token.
"""),
    code("report.attribution.round(3)"),
    md("""
## Versus the chain-of-thought model

The stage-1 model always writes its chain in text, so every generation gives a complete chain
trail. Does it form ruts too, and where?
"""),
    code('''
cot_report = trails_study(lensing.load("arith-tiny:cot"), problems)
cols = [c for c in ("depth_ratio", "chain_ratio", "capture_rate") if c in cot_report.table and c in report.table]
compare = pd.concat({"arith-tiny:cot": cot_report.table.set_index("layer")[cols],
                     "arith-tiny (lt)": report.table.set_index("layer")[cols]}, axis=1)
compare.round(3)
'''),
    code(FOOTER),
])

# ---------------------------------------------------------------------------------------------- 07
write("07_paper_figures.ipynb", [
    md("""
# 07 · Paper figures, small and fast

`lensing figures --out figures` (or `make figures`, which also sets up the environment)
regenerates every paper figure from the bundled models as PNG/SVG/PDF/HTML with the numbers
behind each one as CSV and a caption in `figures/README.md`. It takes several minutes.

This notebook rebuilds a few of them on small samples with the same builder functions from
`lensing.viz.paper`, so you can see how each figure is made and adapt it. Each builder returns a
`Figure` with `.figure` (plotly), `.data` (the numbers, a DataFrame) and `.caption` (which
states the key number, computed).
"""),
    code(SETUP),
    code('''
from lensing.studies import collapse_study, trails_study
from lensing.train import evaluate
from lensing.viz.paper import accuracy_figure, latents_figure, mismatch_figure, pca_collapse_figure, trails_ratio_figure

lms = {v: lensing.load(f"arith-tiny:{v}") for v in ("cot", "hidden", "lt")}
'''),
    md("""
## Accuracy and latents by difficulty (paper Tab. 1 / Fig. 3)

Six problems per difficulty per model; the full pipeline uses 50.
"""),
    code('''
problems = make_splits(0, 0, 6, seed=0).test
evals = {v: evaluate(lm, problems) for v, lm in lms.items()}
acc = accuracy_figure(evals)
print(acc.caption)
acc.figure.show()
'''),
    code('''
lat = latents_figure(evals)
print(lat.caption)
lat.figure.show()
'''),
    code("acc.data.pivot(index='steps', columns='variant', values='accuracy').round(1)"),
    md("""
## Latent PCA and collapse (paper Fig. 5) and distribution mismatch

The collapse study runs on 36 problems with a forced chain of 6 latents; the PCA panels use
the latent input vectors of 20 of them, as in the full pipeline.
"""),
    code('''
small = make_splits(0, 0, 6, seed=0).test
collapse = collapse_study({"arith-tiny:hidden": lms["hidden"], "arith-tiny:lt": lms["lt"]}, small,
                          where="latent", force_latents=6)
chains = {}
for v in ("hidden", "lt"):
    traces = lms[v].generate([p.prompt for p in small[:20]], max_new_tokens=8, force_latents=6)
    chains[v] = torch.stack([t.input_embeds[t.latent_positions[:6]] for t in traces])
pca = pca_collapse_figure(chains, collapse)
print(pca.caption)
pca.figure.show()
'''),
    code('''
mismatch = mismatch_figure(collapse)
print(mismatch.caption)
mismatch.figure.show()
'''),
    md("""
## Trails: same-structure similarity by layer

60 three-step problems (the full pipeline uses 160).
"""),
    code('''
trail_problems = make_splits(0, 0, 60, seed=0, difficulties=(3,)).test
trails = trails_study(lms["lt"], trail_problems)
if "chain_ratio" in trails.table:
    ratio = trails_ratio_figure(trails)
    print(ratio.caption)
    ratio.figure.show()
else:
    print("too few complete chain trails for the ratio figure; depth-trail numbers:")
    print(trails.table.round(3).to_string(index=False))
'''),
    md("""
## Writing figures

`write_figures` writes each figure with its CSV and an index README, all or nothing. Static
formats (png/svg/pdf) need Chromium through kaleido, so here we write HTML only, into a
temporary directory.
"""),
    code('''
import tempfile
from pathlib import Path

from lensing.viz.paper import write_figures

with tempfile.TemporaryDirectory() as tmp:
    out = write_figures([acc, lat, pca, mismatch], Path(tmp) / "figures", formats=("html",))
    print(sorted(p.name for p in out.iterdir()))
    print((out / "README.md").read_text()[:600])
'''),
    md("""
For the full set (accuracy, latents, entropy and latent attention, PCA/collapse, mismatch,
logit lens, latent decoding, attention, decomposition, trails) run:

```bash
make figures                       # or: .venv/bin/lensing figures --out figures
```
"""),
    code(FOOTER),
])

print("wrote", sorted(p.name for p in HERE.glob("*.ipynb")))
