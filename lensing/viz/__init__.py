"""Plotly figure builders in one paper style, and static export."""

from lensing.viz.style import KIND_COLORS, OKABE_ITO, VARIANT_COLORS, apply_style, mark_latent_columns, token_label

__all__ = ["KIND_COLORS", "OKABE_ITO", "VARIANT_COLORS", "apply_style", "mark_latent_columns", "token_label"]
