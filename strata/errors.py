"""Errors a person can act on. The CLI turns every StrataError into a short message and exit 2."""


class StrataError(Exception):
    """Bad input from the user: config, data, checkpoint, command line. Exit code 2."""


class ConfigError(StrataError):
    pass


class DataError(StrataError):
    pass


class CheckpointError(StrataError):
    pass
