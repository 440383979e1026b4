"""`bench --compile`: the stages it times, compiled with torch.compile (imported on use: `--help` needs no torch).

The vision path (tower, then reducer) and the LLM are compiled as the user would compile them; with a fixed
budget the reducer has static shapes and compiles whole, adaptive counts break its graph where they are read.
"""

from __future__ import annotations

# --compile CHOICE -> torch.compile's keywords
COMPILE_OPTIONS = {
    "inductor": {"backend": "inductor"},
    "reduce-overhead": {"backend": "inductor", "mode": "reduce-overhead"},  # CUDA graphs on a GPU
    "aot_eager": {"backend": "aot_eager"},  # traced, not code-generated: quick to check a graph
    "eager": {"backend": "eager"},
}
COMPILE_CHOICES = tuple(COMPILE_OPTIONS)


def compiled(function, choice: str | None, **options):
    """`function` under torch.compile with the options of `choice` and `options` (itself when None)."""
    if choice is None:
        return function
    import torch

    return torch.compile(function, **COMPILE_OPTIONS[choice], **options)
