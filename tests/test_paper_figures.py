"""What the paper figures claim is what they draw: shared PCA ranges, the decomposition's digit, one
quantity per axis in the trails figures, the logit-lens window and the accuracy caption's numbers."""

from types import SimpleNamespace

import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from lensing.probes.logit_lens import LogitLensResult
from lensing.studies.trails import TrailsReport, centred_cosine_matrix, group_means, within_between
from lensing.train.evaluate import EvalResult
from lensing.viz import paper
from lensing.viz.results import _accuracy_block, overall_accuracy_sentence, wilson_interval


# ------------------------------------------------------------------ latent_pca_and_collapse
def _fake_collapse_report(models: list[str]) -> SimpleNamespace:
    steps = range(1, 7)
    rank = {m: [10.0 + s + i for s in steps] for i, m in enumerate(models)}
    cosine = {m: [0.9 - 0.05 * s * (i + 1) for s in steps] for i, m in enumerate(models)}
    tables = {"effective_rank": pd.DataFrame(rank, index=steps), "mean_cosine": pd.DataFrame(cosine, index=steps)}
    return SimpleNamespace(compare=lambda metric: tables[metric])


def test_pca_panels_of_a_row_share_explicit_ranges_that_hold_every_point():
    gen = torch.Generator().manual_seed(0)
    # the spread grows tenfold along the chain: autoscaled panels would hide exactly this
    scale = torch.linspace(0.3, 3.0, 6)[None, :, None]
    chains = {
        "hidden": torch.randn(20, 6, 16, generator=gen) * scale + torch.arange(6.0)[None, :, None],
        "lt": 0.1 * torch.randn(20, 6, 16, generator=gen),
    }
    models = ["arith-tiny:hidden", "arith-tiny:lt"]
    fig = paper.pca_collapse_figure(chains, _fake_collapse_report(models)).figure
    ranges = {}
    for row in (1, 2):
        for col in range(1, 5):
            sub = fig.get_subplot(row, col)
            x_range, y_range = tuple(sub.xaxis.range), tuple(sub.yaxis.range)
            ranges.setdefault(row, set()).add((x_range, y_range))
            anchor = (sub.xaxis.plotly_name.replace("axis", ""), sub.yaxis.plotly_name.replace("axis", ""))
            points = [t for t in fig.data if t.mode == "markers" and (t.xaxis, t.yaxis) == anchor]
            assert len(points) == 1 and len(points[0].x) == 20
            assert x_range[0] < min(points[0].x) and max(points[0].x) < x_range[1]
            assert y_range[0] < min(points[0].y) and max(points[0].y) < y_range[1]
    assert len(ranges[1]) == 1 and len(ranges[2]) == 1  # one x and one y range per row
    assert ranges[1] != ranges[2]  # the rows have their own bases, and say so
    caption = paper.pca_collapse_figure(chains, _fake_collapse_report(models)).caption
    assert "one basis per row" in caption and "share one x and one y range, the two rows do not" in caption


# ------------------------------------------------------------------ residual_decomposition and logit_lens
@pytest.fixture(scope="module")
def lt_run():
    import lensing
    from lensing.tasks import make_splits

    lm = lensing.load("arith-tiny:lt")
    problem = next(p for p in make_splits(0, 0, 6, seed=0).test if p.steps == 6 and p.answer >= 10)
    trace = lm.generate([problem.prompt])[0]
    return lensing.attach(lm), trace, problem


def test_decomposition_attributes_to_the_first_answer_digit(lt_run):
    probe, trace, problem = lt_run
    first_digit = next(i for i, k in enumerate(trace.kinds) if k == "answer" and trace.tokens[i].isdigit())
    assert "".join(trace.tokens[first_digit:]).startswith(str(problem.answer))  # the model got it right
    parts = probe.decompose([trace], positions="answer")
    built = paper.decomposition_figure(parts)
    column = parts.answer_digit_column(digit=0)
    # the attribution is read one position before the digit: there the model predicts it
    assert parts.position[column] == first_digit - 1
    assert int(parts.target_ids[column]) == int(trace.token_ids[first_digit])
    assert parts.target_tokens[column] == str(problem.answer)[0]
    # the old figure's column (the digit's own position) predicts the second digit
    assert parts.position[parts.answer_digit_column(digit=1)] == first_digit
    assert parts.target_tokens[parts.answer_digit_column(digit=1)] == str(problem.answer)[1]
    # the figure plots that column and its title and caption name the digit
    bars = next(t for t in built.figure.data if isinstance(t, go.Bar))
    torch.testing.assert_close(torch.as_tensor(bars.y, dtype=torch.float32), parts.dla[:, column])
    assert f"logit of '{str(problem.answer)[0]}' (answer digit 1) at position {first_digit - 1}:" in (
        built.figure.layout.title.text
    )
    assert f"first answer digit '{str(problem.answer)[0]}' (answer '{problem.answer}')" in built.caption
    assert f"position {first_digit - 1} ('#')" in built.caption
    assert set(built.data.position) == {first_digit - 1}
    assert parts.dla[:, column].sum() == pytest.approx(float(parts.logit[column]), abs=1e-3)


def test_logit_lens_figure_shows_the_answer(lt_run):
    probe, trace, problem = lt_run
    results = probe.run([trace], ["logit_lens", "decode_latents"])
    lens = results["logit_lens"]
    assert len(trace) > paper.LOGIT_LENS_POSITIONS  # long enough that the figure must window it
    built = paper.logit_lens_figure(lens, results["decode_latents"])
    cols = lens.window(0, paper.LOGIT_LENS_POSITIONS)
    answer = [i for i, k in enumerate(trace.kinds) if k == "answer"]
    shown = [lens.position[c] for c in cols]
    assert set(answer) <= set(shown) and shown[-1] == len(trace) - 1
    assert trace.latent_positions[0] in shown
    ticks = list(built.figure.layout.xaxis.ticktext)
    assert ticks[-len(answer) :] == [f"{p}:{trace.tokens[p].replace(chr(10), '⏎')}" for p in answer]
    assert f"through the answer '{problem.answer}'" in built.caption


def _lens_stub(kinds: list[str]) -> LogitLensResult:
    n = len(kinds)
    return LogitLensResult("logit", [], [0] * n, list(range(n)), kinds, ["x"] * n, torch.zeros(n), None, None, {})


def test_logit_lens_window_keeps_the_answer_and_starts_as_early_as_it_can():
    kinds = ["prompt"] * 40 + ["cot"] * 20 + ["latent"] + ["cot"] * 30 + ["answer"] * 5  # 96 positions
    lens = _lens_stub(kinds)
    assert lens.window(0, 96) == list(range(96))  # fits: all of it
    assert lens.window(0, 57) == list(range(39, 96))  # from the last prompt token
    assert lens.window(0, 40) == list(range(58, 96))  # two positions before the first latent
    assert lens.window(0, 20) == list(range(76, 96))  # the answer end, whatever the length
    with pytest.raises(ValueError, match="no trace 3"):
        lens.window(3)


# ------------------------------------------------------------------ trails figures
def _synthetic_trails(n_per: int = 6, d: int = 12, layers: int = 3) -> TrailsReport:
    """Chain trails whose steps go along a structure's own direction plus noise."""
    gen = torch.Generator().manual_seed(1)
    names = ["++", "+-", "-+", "--"]
    directions = {s: torch.randn(2, layers, d, generator=gen) for s in names}
    chains, structures = [], []
    for s in names:
        for _ in range(n_per):
            steps = directions[s] + 0.5 * torch.randn(2, layers, d, generator=gen)
            start = torch.randn(1, layers, d, generator=gen)
            chains.append(torch.cat([start, start + steps.cumsum(0)]))  # [3 steps, layer, d]
            structures.append(s)
    rows = []
    for layer in range(layers):
        deltas = torch.stack([c[:, layer].diff(dim=0).flatten() for c in chains]).double()
        within, between = within_between(centred_cosine_matrix(deltas), structures)
        rows.append(
            {
                "layer": f"L{layer}",
                "depth_ratio": 0.5 + 0.1 * layer,
                "chain_within": within,
                "chain_between": between,
                "chain_ratio": (1 - within) / (1 - between),
                "capture_rate": 0.6,
                "baseline_capture_rate": 0.3,
            }
        )
    return TrailsReport(pd.DataFrame(rows), chains, structures, pd.DataFrame())


def test_step_similarity_is_the_chain_statistic_by_structure_pair():
    report = _synthetic_trails()
    grid = report.step_similarity("L1")
    assert list(grid.index) == list(grid.columns) == ["++", "+-", "-+", "--"]
    inside = pd.Series([grid.loc[s, s] for s in grid.index])
    outside = grid.to_numpy()[~torch.eye(4, dtype=torch.bool).numpy()]
    assert inside.min() > outside.max()  # same structure, same step directions
    # with equal group sizes the blocks weigh alike, so the mean of the diagonal blocks is the
    # within-structure similarity the table reports, and the mean of the others the between one
    assert float(inside.mean()) == pytest.approx(report.table.chain_within[1], abs=1e-9)
    assert float(outside.mean()) == pytest.approx(report.table.chain_between[1], abs=1e-9)


def test_group_means_by_hand():
    sim = torch.tensor([[1.0, 0.4, 0.1], [0.4, 1.0, -0.3], [0.1, -0.3, 1.0]])
    grid = group_means(sim, ["b", "b", "a"])
    assert grid.loc["b", "b"] == pytest.approx(0.4)
    assert grid.loc["a", "b"] == grid.loc["b", "a"] == pytest.approx(-0.1)
    assert pd.isna(grid.loc["a", "a"])


def test_trails_step_figure_is_two_dimensional_on_one_colour_scale():
    report = _synthetic_trails()
    built = paper.trails_step_figure(report)
    heatmaps = [t for t in built.figure.data if isinstance(t, go.Heatmap)]
    assert len(heatmaps) == 3 and all(t.type == "heatmap" for t in built.figure.data)
    assert len({(t.zmin, t.zmax) for t in heatmaps}) == 1 and heatmaps[0].zmin == -heatmaps[0].zmax
    assert sum(bool(t.showscale) for t in heatmaps) == 1
    for label, t in zip(report.table.layer, heatmaps, strict=True):
        torch.testing.assert_close(
            torch.tensor(t.z, dtype=torch.float64), torch.tensor(report.step_similarity(label).to_numpy())
        )
    for _, row in report.table.iterrows():
        quoted = f"{row.chain_within:.2f} vs {row.chain_between:.2f} (distance ratio {row.chain_ratio:.2f})"
        assert f"{row.layer} {quoted}" in built.caption
    assert set(built.data.columns) == {"layer", "structure_a", "structure_b", "mean_cosine"}
    assert len(built.data) == 3 * 16
    assert "trails_step_cosine" in paper.FIGURE_NAMES and "trails_pca" not in paper.FIGURE_NAMES


def test_trails_ratio_figure_has_one_y_axis_per_quantity():
    report = _synthetic_trails()
    fig = paper.trails_ratio_figure(report).figure
    axes = [k for k in fig.layout.to_plotly_json() if k.startswith("yaxis")]
    assert sorted(axes) == ["yaxis", "yaxis2"]
    assert all(fig.layout[a].overlaying is None for a in axes)  # no axis drawn over another
    x1, x2 = fig.layout.xaxis.domain, fig.layout.xaxis2.domain
    assert x1[1] < x2[0]  # two side-by-side panels, not a twin axis
    panel = {t.name: t.yaxis for t in fig.data}
    assert panel["depth trail: within/between distance"] == panel["chain trail: within/between distance"] == "y"
    assert panel["depth trail: library capture rate"] == panel["bag-of-tokens capture rate"] == "y2"
    assert tuple(fig.layout.yaxis2.range) == (0, 1.02)


# ------------------------------------------------------------------ accuracy_by_difficulty
def test_accuracy_caption_is_the_readme_sentence():
    def result(wrong: dict[int, int], n: int = 10) -> EvalResult:
        steps = [s for s in range(1, 7) for _ in range(n)]
        correct = [i >= wrong.get(s, 0) for s in range(1, 7) for i in range(n)]
        return EvalResult(steps, correct, [0] * len(steps), [])

    wrong = {"cot": {6: 1}, "hidden": {3: 4, 5: 6}, "lt": {}}
    evals = {v: result(w) for v, w in wrong.items()}
    accuracy = {
        v: {str(s): 100.0 - 10 * w.get(s, 0) for s in range(1, 7)} | {"all": 100 * (60 - sum(w.values())) / 60}
        for v, w in wrong.items()
    }
    sentence = overall_accuracy_sentence(accuracy, 10)
    assert sentence.startswith("Overall: :cot 98.3%, :hidden 83.3%, :lt 100.0%. On 60 problems per variant")
    assert ":lt is 1.7 points above :cot" in sentence and sentence.endswith("do not all overlap.")
    built = paper.accuracy_figure(evals)
    assert sentence in built.caption and "10 test problems per difficulty" in built.caption
    facts = {
        "accuracy": accuracy,
        "mean_latents": {v: {str(s): float(s) for s in range(1, 7)} | {"all": 3.5} for v in evals},
        "n_per_difficulty": 10,
        "fusion_parts": {"n_latents": 5, "alpha": 0.6, "alpha_h_norm": 3.0, "pred_part_norm": 0.1},
    }
    assert sentence in _accuracy_block(facts)  # the README block says the same, from the same function
    hidden = next(t for t in built.figure.data if isinstance(t, go.Bar) and t.name.endswith(":hidden"))
    low, high = wilson_interval(4, 10)  # 5 steps: 4 of 10 right
    assert hidden.y[4] == 40
    assert hidden.error_y.arrayminus[4] == pytest.approx(40 - low)
    assert hidden.error_y.array[4] == pytest.approx(high - 40)
    assert low < 40 < high


def test_wilson_interval_matches_known_values():
    assert wilson_interval(0, 10)[0] == 0 and wilson_interval(10, 10)[1] == 100
    low, high = wilson_interval(59, 60)
    assert (round(low, 1), round(high, 1)) == (91.1, 99.7)
