"""Every exception llava-prumerge raises for bad input, settings or files: one base class, `PruMergeError`.

It is a `ValueError`, so `except ValueError` keeps working; the ones about files are also the
matching `OSError` subclass. Library code raises them; only `llava_prumerge.cli.main` turns them into
a one-line message and exit status 2 (set LLAVA_PRUMERGE_TRACEBACK=1 or pass --traceback for the
traceback).
"""

from __future__ import annotations

from .modeling.errors import NonFiniteError, PruMergeError, ReductionSettingsError, VisualInputError


class UsageError(PruMergeError):
    """A command-line option, or a combination of them, cannot work; the message names the option."""


class OutputExistsError(PruMergeError, FileExistsError):
    """An output folder already exists and would be replaced."""


class MissingInputError(PruMergeError, FileNotFoundError):
    """An input file or folder is missing."""


class ConversionError(PruMergeError):
    """An original-format checkpoint cannot be converted; the message names the file or key."""


class RemoteCodeError(PruMergeError):
    """A package source cannot travel as remote code."""


class InvalidHubFolder(PruMergeError):
    """A folder is not a complete, loadable PruMerge Hub folder."""


class UnservableBudgetError(PruMergeError):
    """A checkpoint's visual-token count varies per image, so a serving engine that sizes placeholder runs
    before the vision tower runs (vLLM) cannot serve it; the message names the fixed budgets to use."""


class DataError(PruMergeError):
    """Training data cannot be used; the message names the file or sample."""


class BadSample(DataError):
    """One training sample cannot be trained on; the message says why."""


__all__ = [
    "BadSample",
    "ConversionError",
    "DataError",
    "InvalidHubFolder",
    "MissingInputError",
    "NonFiniteError",
    "OutputExistsError",
    "PruMergeError",
    "ReductionSettingsError",
    "RemoteCodeError",
    "UnservableBudgetError",
    "UsageError",
    "VisualInputError",
]
