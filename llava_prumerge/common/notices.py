"""Upstream notices the command line hides, because they ask nothing of the user.

transformers 5 says, once per image processor class, that torchvision is not installed and that it
falls back to the PIL processor. Images are processed either way (the README says how the two
backends differ and how to get torchvision); every command would otherwise open with it.
Without --verbose, the commands also hide transformers' and huggingface_hub's progress bars (loading
and writing weights take a second on the models the commands build) and the FutureWarnings that
transformers, PEFT and accelerate raise about their own deprecated names, and torch.compile's notes on
where a graph breaks (adaptive counts are read back: `bench --compile` says so itself).
"""

from __future__ import annotations

import logging
import warnings

TORCHVISION_FALLBACK = "requires torchvision (not installed); falling back to"
UPSTREAM_MODULES = r"(transformers|peft|accelerate|huggingface_hub)(\.|$)"  # where their warnings are raised


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


def hide_upstream_noise() -> None:
    """Progress bars off and upstream FutureWarnings ignored (see the module docstring)."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    disable_progress_bars()
    warnings.filterwarnings("ignore", category=FutureWarning, module=UPSTREAM_MODULES)
    logging.getLogger("torch._dynamo").setLevel(logging.ERROR)  # `bench --compile`: graph-break notes


def warnings_as_lines(command: str) -> None:
    """Each warning once, as one line naming the command (`llava-prumerge export: warning: ...`), not Python's
    two lines with a source file and line; a warning raised again (settings are rebuilt often) is not repeated."""
    import sys

    shown = set()

    def show(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        if text not in shown:
            shown.add(text)
            print(f"llava-prumerge {command}: warning: {text}", file=file or sys.stderr)

    warnings.showwarning = show
