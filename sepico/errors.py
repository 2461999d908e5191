"""The errors sepico reports in one line (the ``sepico`` command prints them and exits with status 2).

Every error the user can fix (a configuration field, a file, a folder, a dataset) is a
``SepicoError``; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class SepicoError(Exception):
    """An error in the user's terms: one line naming the field, file or folder it is about."""


class ConfigError(SepicoError, ValueError):
    """A bad configuration: unknown key, wrong type, bad value, missing dataset folder."""


class NonFiniteLoss(ConfigError):
    """A training loss was NaN or infinite (train.on_nonfinite = "stop")."""


class DatasetError(SepicoError, ValueError):
    """A dataset folder or file that does not have the expected layout or content."""


class OutputError(SepicoError):
    """A file a command will not write: an input, a checkpoint, a link, a folder or someone else's file."""


__all__ = ["ConfigError", "DatasetError", "NonFiniteLoss", "OutputError", "SepicoError"]
