"""One paper style for every figure: sizes, fonts and a colour-blind-safe (Okabe-Ito) palette."""

from __future__ import annotations

import plotly.graph_objects as go

OKABE_ITO = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky": "#56B4E9",
    "green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "purple": "#CC79A7",
    "grey": "#999999",
}
KIND_COLORS = {
    "prompt": OKABE_ITO["grey"],
    "cot": OKABE_ITO["blue"],
    "latent": OKABE_ITO["vermillion"],
    "answer": OKABE_ITO["green"],
}
VARIANT_COLORS = {
    "cot": OKABE_ITO["sky"],
    "hidden": OKABE_ITO["purple"],
    "lt": OKABE_ITO["vermillion"],
    "pretrained": OKABE_ITO["black"],
}
SEQUENTIAL = "Viridis"
DIVERGING = "RdBu"
SINGLE_COLUMN = (420, 320)  # px at 100 dpi: about 3.3 in wide, a single paper column
DOUBLE_COLUMN = (880, 380)
LATENT_MARK = "◆"


def token_label(position: int, token: str, kind: str) -> str:
    """Axis label for a position: latents as a diamond, newlines visible."""
    shown = LATENT_MARK if kind == "latent" else token.replace("\n", "⏎") or "∅"
    return f"{position}:{shown}"


def model_color(name: str) -> str:
    """Colour of a model name such as ``arith-tiny:hidden`` (a bare name is the LT variant).

    >>> model_color("arith-tiny:cot") == VARIANT_COLORS["cot"]
    True
    """
    variant = name.split(":")[-1] if ":" in name else "lt"
    return VARIANT_COLORS.get(variant, OKABE_ITO["black"])


def model_curve(x, y, model: str, show_legend: bool) -> go.Scatter:
    """One model's line in a multi-model comparison, in its variant colour, grouped in the legend."""
    return go.Scatter(
        x=x,
        y=y,
        mode="lines+markers",
        name=model,
        legendgroup=model,
        showlegend=show_legend,
        line={"color": model_color(model)},
    )


def apply_style(
    fig: go.Figure, width: int | None = None, height: int | None = None, title: str | None = None
) -> go.Figure:
    """Paper layout: white background, 12 pt sans-serif, tight margins, fixed size."""
    w, h = SINGLE_COLUMN if width is None else (width, height or SINGLE_COLUMN[1])
    fig.update_layout(
        template="simple_white",
        width=w,
        height=height or h,
        font={"family": "DejaVu Sans, Arial", "size": 12},
        margin={"l": 60, "r": 20, "t": 40 if title else 20, "b": 50},
        title={"text": title, "x": 0.5} if title else None,
        legend={"font": {"size": 10}},
    )
    return fig


def mark_latent_columns(fig: go.Figure, kinds: list[str], row: int | None = None, col: int | None = None) -> go.Figure:
    """Outlines every latent position of a heatmap whose x axis is the position index."""
    for x, kind in enumerate(kinds):
        if kind == "latent":
            fig.add_vrect(
                x0=x - 0.5,
                x1=x + 0.5,
                line={"color": KIND_COLORS["latent"], "width": 2.5},
                fillcolor="rgba(213,94,0,0.12)",
                row=row,
                col=col,
            )
    return fig
