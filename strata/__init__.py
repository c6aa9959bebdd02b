"""strata: define, train, evaluate, explain and use deep neural networks, from one TOML file."""

__version__ = "0.1.0"
