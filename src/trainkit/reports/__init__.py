"""Plots and reports made from finished runs: the only place matplotlib is imported."""
