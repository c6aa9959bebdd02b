"""Reusable layers: attention, rotary positions, feed-forward blocks, sampling. No training code."""
