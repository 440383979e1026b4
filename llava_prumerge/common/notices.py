"""transformers notices the command line hides, because they ask nothing of the user.

transformers 5 says, once per image processor class, that torchvision is not installed and that it
falls back to the PIL processor. Images are processed either way (the README says how the two
backends differ and how to get torchvision); every command would otherwise open with it.
"""

from __future__ import annotations

import logging

TORCHVISION_FALLBACK = "requires torchvision (not installed); falling back to"


class _HideTorchvisionFallback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return TORCHVISION_FALLBACK not in record.getMessage()


def hide_torchvision_fallback_notice() -> None:
    """Drop that notice from transformers' log handlers (its other messages are untouched)."""
    from transformers.utils import logging as transformers_logging

    root = transformers_logging.get_logger("transformers")  # the library's root: its handlers print
    for handler in root.handlers:
        if not any(isinstance(f, _HideTorchvisionFallback) for f in handler.filters):
            handler.addFilter(_HideTorchvisionFallback())
