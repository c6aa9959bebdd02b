"""Measures that are not a single batch mean: Frechet distances, judges of generated images."""
