"""Errors a person can act on. The CLI turns every StrataError into a short message and exit 2."""


class StrataError(Exception):
    """Bad input from the user: config, data, checkpoint, command line. Exit code 2."""


class ConfigError(StrataError):
    pass


class DataError(StrataError):
    pass


class CheckpointError(StrataError):
    pass


class Interrupted(Exception):
    """Training stopped by a signal after saving `last` (at `saved`); exit code 130 (SIGINT) or 143 (SIGTERM)."""

    def __init__(self, signum: int, run_dir, saved):
        import signal

        self.signum = signum
        self.exit_code = 128 + signum
        self.run_dir = run_dir
        super().__init__(f"interrupted by {signal.Signals(signum).name}; saved {saved}")
