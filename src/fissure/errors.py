"""User-facing errors.

Everything a user can get wrong (a path, a config key, a corrupted file) raises a
:class:`UserError` subclass. The CLI prints these as one line and exits non-zero;
any other exception escaping to the CLI is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the user's input: printed as one line, exit code 2."""

    exit_code = 2


class ConfigError(UserError):
    """A malformed config file, an unknown key or a bad override."""


class DataError(UserError):
    """Missing, empty, binary or otherwise unusable text data."""


class CheckpointError(UserError):
    """A checkpoint directory that is missing, incomplete or corrupted."""


class GenerationError(UserError):
    """A generation request the model cannot serve (e.g. prompt longer than its context)."""


class TaskFailed(UserError):
    """Some tasks of a run failed (each named); what the others finished is saved, and resuming
    the run redoes only the failed ones. Not the user's input: exit code 1."""

    exit_code = 1
