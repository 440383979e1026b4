# Copyright 2026 The llava-prumerge developers. Licensed under the Apache License, Version 2.0.
"""The package's exceptions: one base class, a `ValueError`, so `except ValueError` keeps working.

Library code raises these; only the command line turns them into a one-line message and exit
status 2. This module travels inside Hub folders as remote code (standard library only).
"""

from __future__ import annotations


class PruMergeError(ValueError):
    """Base class of every error llava-prumerge raises for bad input, settings or files."""


class ReductionSettingsError(PruMergeError):
    """A token-reduction setting has a value the reducer does not support."""


class VisualInputError(PruMergeError):
    """Images, videos or their placeholders in the prompt are malformed or do not match."""


class NonFiniteError(VisualInputError):
    """A NaN or inf reached the vision tower or the reducer."""


__all__ = ["NonFiniteError", "PruMergeError", "ReductionSettingsError", "VisualInputError"]
