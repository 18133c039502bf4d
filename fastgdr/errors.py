"""Exceptions that carry a complete, user-facing message.

Tools catch :class:`FastGDRError` and print its message without a traceback; anything
else is a bug and keeps its traceback.
"""


class FastGDRError(Exception):
    """Base class for errors caused by user input (files, configs, names, arguments)."""


class ConfigError(FastGDRError):
    """A config file or override has an unknown key or an invalid value."""


class CheckpointError(FastGDRError):
    """A checkpoint file is missing, unreadable, or does not match the model."""


class UnknownNameError(FastGDRError):
    """A name (backbone preset, registry entry) is not known."""


class MissingDependencyError(FastGDRError):
    """An optional dependency needed for the requested feature is not installed."""


class DatasetError(FastGDRError):
    """A dataset file is missing or malformed; the message names the file and the field."""


class ResultsFormatError(FastGDRError):
    """A pose-results file (BOP CSV) is malformed; the message names the file and line."""


class OutputError(FastGDRError):
    """An output would replace finished results or an input, lies outside ``--out``, or
    cannot be written; the message names the path and what to do."""


class TrainingError(FastGDRError):
    """Training cannot go on (a non-finite loss, gradient or weight); the message names
    the iteration, the terms and the checkpoint that is kept."""


class FastGDRWarning(UserWarning):
    """Input that can be processed but is probably not what was meant; tools print the
    message as one ``warning:`` line."""


class ResultsWarning(FastGDRWarning):
    """A pose-results file that is scored but looks wrong (matrices that are not rotations,
    no estimates, a dataset name that does not fit the data)."""
