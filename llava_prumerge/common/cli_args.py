"""Argument types and choices the subcommands share (standard library only: `--help` needs no torch)."""

from __future__ import annotations

import argparse

from ..errors import UsageError

COMPARED_METHODS = ("none", "prumerge", "prumerge_plus")  # what bench, analyze and demo compare
DTYPE_NAMES = ("float32", "float16", "bfloat16")


def int_at_least(minimum: int):
    """An argparse type: an integer >= `minimum`."""

    def parse(text: str) -> int:
        if not text.strip().lstrip("-").isdigit() or int(text) < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        return int(text)

    return parse


positive_int = int_at_least(1)


def float_in(low: float, high: float | None = None, low_open: bool = False, high_open: bool = False):
    """An argparse type: a number in the interval from `low` to `high` (None: no upper end), either end open."""
    left, right = "(" if low_open else "[", ")" if high_open or high is None else "]"
    interval = f"{left}{low:g}, {'inf' if high is None else format(high, 'g')}{right}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number in {interval}, got {text!r}") from None
        above = value > low if low_open else value >= low
        below = high is None or (value < high if high_open else value <= high)
        if not (above and below):
            raise argparse.ArgumentTypeError(f"must be a number in {interval}, got {text!r}")
        return value

    return parse


positive_float = float_in(0, low_open=True)
non_negative_int = int_at_least(0)


def positive_int_list(text: str) -> list[int]:
    """Comma-separated positive integers, e.g. "1,8,32": none left out ("1,,2" is a typo, not "1,2"), repeats
    dropped (each would run again)."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        values = []
    if not values or any(value <= 0 for value in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return list(dict.fromkeys(values))


def subset_of(choices: tuple[str, ...], noun: str):
    """An argparse type: a non-empty comma-separated subset of `choices`, in the order given."""

    def parse(text: str) -> list[str]:
        values = [value.strip() for value in text.split(",") if value.strip()]
        unknown = [value for value in values if value not in choices]
        if unknown or not values:
            raise argparse.ArgumentTypeError(
                f"unknown {noun}(s) {unknown or text!r}; use a comma-separated subset of {','.join(choices)}"
            )
        return values

    return parse


compared_methods = subset_of(COMPARED_METHODS, "method")


def split_method_label(label: str) -> tuple[str, int | None]:
    """("prumerge", 256) from "prumerge@256", ("prumerge", None) from "prumerge": a compared method and,
    after "@", a fixed budget (adaptive=False) of tokens per image or video. ValueError if neither fits."""
    method, at, budget = label.partition("@")
    if method not in COMPARED_METHODS:
        raise ValueError(f"unknown method {method!r}")
    if not at:
        return method, None
    if method == "none" or not budget.isdigit() or int(budget) < 1:
        raise ValueError(f"{label!r}: only prumerge and prumerge_plus take a budget, a positive integer")
    return method, int(budget)


def is_method_label(label: str) -> bool:
    try:
        split_method_label(label)
    except ValueError:
        return False
    return True


def compared_method_labels(text: str) -> list[str]:
    """An argparse type: comma-separated methods, each optionally with a fixed budget ("none,prumerge@256")."""
    labels = [label.strip() for label in text.split(",") if label.strip()]
    unknown = [label for label in labels if not is_method_label(label)]
    if unknown or not labels:
        raise argparse.ArgumentTypeError(
            f"unknown method(s) {unknown or text!r}; use a comma-separated subset of {','.join(COMPARED_METHODS)}, "
            "each of the last two optionally with @TOKENS, a fixed budget per image or video (e.g. prumerge@256)"
        )
    return labels


def add_reduction_arguments(parser: argparse.ArgumentParser, default_help: str) -> None:
    """Flags for the reducer fields people set most; unset flags keep `default_help`'s values."""
    from ..modeling.reduction_settings import IMPORTANCE_SCORES, TOKEN_REDUCTION_METHODS

    group = parser.add_argument_group("token reduction", f"unset flags keep {default_help}")
    group.add_argument("--token-reduction", choices=TOKEN_REDUCTION_METHODS)
    group.add_argument(
        "--adaptive",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="per-image IQR outlier count (--no-adaptive: a fixed --num-visual-tokens or --reduction-ratio)",
    )
    group.add_argument("--num-visual-tokens", type=positive_int, help="with --no-adaptive: tokens per image")
    group.add_argument("--reduction-ratio", type=positive_float, help="with --no-adaptive: kept fraction")
    group.add_argument(
        "--num-video-tokens",
        type=positive_int,
        help="with --no-adaptive: tokens per video, split over its frames (Video-LLaVA; 256 / 512 for 8 frames)",
    )
    group.add_argument(
        "--importance",
        choices=IMPORTANCE_SCORES,
        help="where patch importance comes from: the [CLS] row (cls), or a stand-in for towers without one",
    )


def reduction_fields_from_args(args: argparse.Namespace) -> dict:
    """The reducer fields set on the command line (see `add_reduction_arguments`); flags that could not take
    effect together are refused, naming them."""
    names = (
        "token_reduction",
        "adaptive",
        "num_visual_tokens",
        "reduction_ratio",
        "num_video_tokens",
        "importance",
    )
    fields = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    flags = {name: "--" + name.replace("_", "-") for name in names}
    if fields.get("token_reduction") == "none" and len(fields) > 1:
        ignored = [flags[name] for name in fields if name != "token_reduction"]
        raise UsageError(
            f"{', '.join(ignored)} {'takes' if len(ignored) == 1 else 'take'} no effect with --token-reduction "
            "none (every patch is kept)"
        )
    counts = [name for name in ("num_visual_tokens", "num_video_tokens", "reduction_ratio") if name in fields]
    if fields.get("adaptive") and counts:
        raise UsageError(
            f"{', '.join(flags[name] for name in counts)} {'takes' if len(counts) == 1 else 'take'} effect with "
            "--no-adaptive, not --adaptive (each image keeps its IQR outliers)"
        )
    if "num_visual_tokens" in fields and "reduction_ratio" in fields:
        raise UsageError(
            "pass one of --num-visual-tokens (a count) and --reduction-ratio (a share), not both"
        )
    return fields
