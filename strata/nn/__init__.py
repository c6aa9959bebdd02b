"""Reusable building blocks: attention, rotary positions, feed-forward blocks, token sampling, and the
weight average (EMA) that tasks keep for evaluation. No training loop."""
