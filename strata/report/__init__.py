"""Plots and reports written into run folders."""
