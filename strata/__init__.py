"""strata: define, train, evaluate, explain and use deep neural networks, from one TOML file or Python.

    import strata
    run = strata.fit(my_module, (x, y), epochs=10)   # any torch.nn.Module, your own arrays or Dataset
    run.predict(x_new); strata.load(run.run_dir)
"""

__version__ = "0.1.0"

__all__ = ["fit", "load", "Run", "Task", "Loss", "Callback", "StrataError"]


def __getattr__(name: str):
    # Imported on first use: `strata` on the command line starts without loading torch for --help.
    if name in ("fit", "load", "Run"):
        from strata import fitting

        return getattr(fitting, name)
    if name in ("Task", "Loss"):
        from strata.tasks import base

        return getattr(base, name)
    if name == "Callback":
        from strata.train import callbacks

        return callbacks.Callback
    if name == "StrataError":
        from strata.errors import StrataError

        return StrataError
    raise AttributeError(f"module 'strata' has no attribute {name!r}")
