"""The latent explorer and the shipped HTML figures, opened in a real headless Chromium with no network.

Chromium (Debian's ``chromium``, the one kaleido uses) is driven over the DevTools protocol
(``tests/browser.py``): name resolution and http(s)/ws(s) are blocked and the network is
emulated offline, and every request a page attempts is recorded, so a page that needed a CDN
would both fail to render and show up in ``page.requests``.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

import lensing
from lensing.cli import main
from lensing.viz.explore import explore

from browser import CHROMIUM, Browser

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a=12;b=a+3;c=b-5;c?", "a=97;b=a+8;c=b-9;d=c+4;d?", "a=5;a?"]
needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (make setup)")


def _strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


class _Links(HTMLParser):
    """Every script tag and every URL-valued attribute of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict] = []
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script":
            self.scripts.append(attrs)
        self.urls += [v for k, v in attrs.items() if k in ("src", "href", "action", "data") and v]


def _links(path: Path) -> _Links:
    parser = _Links()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


@pytest.fixture(scope="module")
def page_file(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("explore") / "x.html"
    args = ["explore", "arith-tiny", "--out", str(out)]
    for prompt in PROMPTS:
        args += ["--prompt", prompt]
    main(args)
    return out


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("needs Debian's chromium (make setup)")
    with Browser() as b:
        yield b


def test_explorer_page_is_self_contained(page_file):
    links = _links(page_file)
    assert links.scripts and all("src" not in s for s in links.scripts), links.scripts  # everything inline
    assert links.urls == [], links.urls
    text = page_file.read_text(encoding="utf-8")
    assert "Plotly" in text and "plotly.js v" in text  # the library itself is in the file
    data = re.search(r'<script type="application/json" id="lensing-data">(.*?)</script>', text, re.S).group(1)
    data = _strict_json(data)
    assert len(data["traces"]) == 3 and data["layer_labels"] == ["embed", "L0", "L1", "L2", "L3"]
    first = data["traces"][0]
    assert first["tokens"][: len(PROMPTS[0]) + 1] == ["<s>", *PROMPTS[0]]  # the prompt, then the newline
    assert first["kinds"].count("latent") == len(first["latents"]) > 0
    assert first["answer"] is not None and len(first["attention"]) == 4 and len(first["attention"][0]) == 4


def test_source_contributions_sum_to_each_heads_logit_attribution():
    """Per-source contributions to the answer logit add up, per head, to the head's DLA from decompose."""
    lm = lensing.load("arith-tiny")
    probe = lensing.attach(lm)
    traces = lm.generate([p + "\n" for p in PROMPTS[:2]])
    page = explore(probe, traces)
    for b, trace in enumerate(traces):
        answer = page.data["traces"][b]["answer"]
        parts = probe.decompose([trace], positions=[answer["query"]])
        assert int(parts.target_ids[0]) == int(trace.token_ids[answer["query"] + 1])
        summed = torch.tensor(answer["contrib"]).sum(-1).flatten()
        assert torch.allclose(summed, parts.head_dla[:, 0], atol=2e-3 * len(trace)), (summed, parts.head_dla[:, 0])
    # the notebook view: the same page in an iframe, and a one-line repr
    assert page._repr_html_().startswith("<iframe srcdoc=") and "lensing-data" in page._repr_html_()
    assert repr(page) == "Explorer(2 trace(s), 4 layers x 4 heads)"


def _texts(page, selector: str) -> str:
    return page.eval(f"[...document.querySelectorAll({json.dumps(selector)})].map(t => t.textContent).join('|')")


@needs_chromium
def test_explorer_renders_offline_and_follows_the_selection(browser, page_file):
    page = browser.open(page_file)
    page.wait("document.body.dataset.ready === '1'")
    count = lambda sel: page.eval(f"document.querySelectorAll({json.dumps(sel)}).length")  # noqa: E731
    for panel in ("lens", "decode", "attn-row", "attn-seg", "dla", "dla-strip"):
        assert count(f"#{panel} svg.main-svg") >= 1, panel
    assert count("#lens g.hm image") == 1 and count("#decode g.hm image") == 1 and count("#dla g.hm image") == 1
    first = json.loads(page.eval("document.getElementById('lensing-data').textContent"))["traces"]
    pos = page.eval("+document.querySelector('#strip .tok.sel').dataset.pos")
    assert first[0]["kinds"][pos] == "latent"  # opens on the first latent
    assert count("#attn-row g.point") == pos + 1  # one bar per key position up to the query
    assert count("#strip .tok") == len(first[0]["tokens"])
    selected, lens = page.eval("document.getElementById('selected').textContent"), _texts(page, "#lens text")
    assert f"position {pos} · latent" in selected and f"logit lens at {pos}:◆" in lens

    page.click('#strip .tok[data-pos="5"]')  # a real mouse click on another position
    page.wait("document.querySelector('#strip .tok.sel').dataset.pos === '5'", 10)
    assert "position 5 · prompt" in page.eval("document.getElementById('selected').textContent")
    assert _texts(page, "#lens text") != lens and count("#attn-row g.point") == 6
    assert "logit lens at 5:;" in _texts(page, "#lens text")

    bar_paths = "[...document.querySelectorAll('#attn-row g.point path')].map(p => p.getAttribute('d')).join()"
    bars = page.eval(bar_paths)
    page.eval("(() => {const s = document.getElementById('layer-slider'); s.value = 0;"
              " s.dispatchEvent(new Event('input'));})()")
    assert "layer 0" in _texts(page, "#attn-row text")
    assert page.eval(bar_paths) != bars
    page.eval("(() => {const s = document.getElementById('head-select'); s.value = '2';"
              " s.dispatchEvent(new Event('change'));})()")
    assert "head 2" in _texts(page, "#attn-row text")

    page.eval("(() => {const s = document.getElementById('trace-select'); s.value = '1';"
              " s.dispatchEvent(new Event('change'));})()")
    page.wait(f"document.querySelectorAll('#strip .tok').length === {len(first[1]['tokens'])}", 10)
    assert page.eval("document.getElementById('selected').textContent").startswith("trace 1 ·")
    assert "c=b-9" in page.eval("document.getElementById('strip').textContent")

    page.eval("(() => {const s = document.getElementById('trace-select'); s.value = '2';"
              " s.dispatchEvent(new Event('change'));})()")
    page.wait("document.getElementById('selected').textContent.startsWith('trace 2 ·')", 10)
    page.click("#strip .tok:last-child")
    assert "no contribution" in page.eval("document.getElementById('dla-note').textContent")

    assert page.errors == []
    assert [u for u in page.requests if not u.startswith(("file://", "data:"))] == []
    assert page.requests[0] == page_file.resolve().as_uri()


@needs_chromium
def test_shipped_figures_render_offline_from_one_local_bundle(browser):
    figures = sorted((ROOT / "figures").glob("*.html"))
    assert figures
    for path in figures:
        links = _links(path)
        assert [s.get("src") for s in links.scripts if "src" in s] == ["plotly.min.js"], path.name
        assert all(not u.startswith(("http:", "https:", "//")) for u in links.urls), (path.name, links.urls)
        assert path.stat().st_size < 200_000, path.name  # no inlined library
    assert (ROOT / "figures" / "plotly.min.js").stat().st_size > 1_000_000
    page = browser.open(ROOT / "figures" / "attention.html")
    page.wait("document.querySelector('.js-plotly-plot svg.main-svg') !== null", 20)
    assert page.eval("document.querySelectorAll('g.hm image').length") == 2  # pattern and segment shares
    # the modebar sits in its own band: it overlaps no title
    overlaps = page.eval(
        """(() => {const m = document.querySelector('.modebar').getBoundingClientRect();
        return [...document.querySelectorAll('.gtitle, .annotation-text, .g-gtitle text')].filter(t => {
          const r = t.getBoundingClientRect();
          return r.width > 0 && !(r.right < m.left || r.left > m.right || r.bottom < m.top || r.top > m.bottom);
        }).map(t => t.textContent);})()"""
    )
    assert page.eval("document.querySelector('.modebar').getBoundingClientRect().width") > 0
    assert overlaps == []
    assert page.errors == []
    assert [u for u in page.requests if not u.startswith(("file://", "data:"))] == []
    assert any(u.endswith("/figures/plotly.min.js") for u in page.requests)


def test_explore_refuses_a_folder_or_a_non_html_name_before_any_work(tmp_path, capsys):
    for bad, message in ((tmp_path, "is a folder"), (tmp_path / "x.txt", "ending in .html")):
        with pytest.raises(SystemExit) as exit_info:
            main(["explore", "no-such-model", "--out", str(bad)])
        assert message in str(exit_info.value) and str(exit_info.value).startswith("lensing explore: ")
