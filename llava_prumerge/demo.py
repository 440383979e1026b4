"""Show how PruMerge adapts the number of visual tokens to the image.

Three CLIP-L/336-shaped inputs (576 patches) whose [CLS] attention has few, some and many
outliers stand in for a plain, a moderate and a cluttered image; each is reduced with every
method and the tokens kept are printed.
"""

from __future__ import annotations

import argparse

from .bench_reducer import realistic_inputs
from .modeling.token_reduction import reduce_visual_tokens

SCENES = {"plain (8 salient patches)": 8, "moderate (32)": 32, "cluttered (64)": 64}
METHODS = ("none", "prumerge", "prumerge_plus")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0)


def main_from_args(args: argparse.Namespace) -> dict:
    print("Synthetic attention maps (no model weights are involved in this first demo).")
    print(f"{'scene':<28}" + "".join(f"{m:>16}" for m in METHODS))
    results = {}
    for scene, outliers in SCENES.items():
        features, attention, keys = realistic_inputs(1, outliers=outliers, seed=args.seed)
        counts = {
            m: reduce_visual_tokens(features, attention, keys, token_reduction=m).num_tokens[0]
            for m in METHODS
        }
        results[scene] = counts
        print(f"{scene:<28}" + "".join(f"{counts[m]:>9} ({counts[m] / 576:>4.0%})" for m in METHODS))
    return results
