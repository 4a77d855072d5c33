"""Mergeable statistics over many traces, on one process or under torchrun (`lensing collect`)."""

from lensing.collect.core import CollectStats, all_merge, chunk_stats, collect_run, format_summary, read_results

__all__ = ["CollectStats", "all_merge", "chunk_stats", "collect_run", "format_summary", "read_results"]
