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


class Diverged(StrataError):
    """The loss or the gradients stopped being finite numbers ([trainer] nonfinite)."""


class StorageError(StrataError):
    """A file could not be written: the disk is full, a quota is reached, the file system is read-only."""


_SPACE = "free some space, or write to another disk"
_RIGHTS = "write to a folder you may write to"
# errno name -> (what it means for a run that was writing a file, the fix)
STORAGE_ERRNOS = {"ENOSPC": ("no space left on the device", _SPACE), "EDQUOT": ("the disk quota is exceeded", _SPACE),
                  "EFBIG": ("the file is larger than the file system allows", _SPACE),
                  "EROFS": ("the file system is read-only", _RIGHTS), "EACCES": ("permission denied", _RIGHTS),
                  "EPERM": ("the operation is not permitted", _RIGHTS)}


def storage_error(e: OSError, path=None) -> StorageError | None:
    """A StorageError naming the file, the reason and the fix, when `e` is one a person can act on."""
    import errno

    for name, (reason, fix) in STORAGE_ERRNOS.items():
        if getattr(errno, name, None) == e.errno:
            return StorageError(f"cannot write {path or e.filename or 'a file'}: {reason}; {fix}")
    return None


# What a model that does not fit its data raises from inside torch or the task (shapes, missing keys).
MISFIT_ERRORS = (RuntimeError, ValueError, IndexError, KeyError, TypeError, AttributeError)


def model_misfit(cfg, e: BaseException) -> ConfigError:
    """The one-line error for a model, task and data set that do not go together."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if isinstance(e, KeyError):
        first = f"the task needs {first} in each batch or in the data's facts, which '{cfg.data.name}' does not give"
    return ConfigError(f"[model] '{cfg.model.name}' does not fit the data of '{cfg.data.name}' with task "
                       f"'{cfg.task.name}': {first}. Check the [model] and [task] keys against the data "
                       "(`strata summary CONFIG` shows the shapes)")
