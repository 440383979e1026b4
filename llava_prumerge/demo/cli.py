"""The `demo` and `visualize` subcommands (arguments only; models and matplotlib load when one runs)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..common.cli_args import positive_int

DRAWN_METHODS = ("prumerge", "prumerge_plus")  # "none" keeps every patch: nothing to draw
MODEL_HELP = (
    "a PruMerge or stock LLaVA-1.5 checkpoint (folder or Hub id), or 'mini' (the default: the mini model "
    "trained on Shapes-VQA, shipped in the package) or 'tiny' (tiny random weights)"
)


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, default=Path("prumerge-demo"), help="folder for pictures and summary"
    )
    parser.add_argument("--model", default=None, metavar="DIR_OR_REPO", help=MODEL_HELP)
    parser.add_argument(
        "--image",
        action="append",
        type=Path,
        default=None,
        metavar="PATH",
        help="an image of yours (repeat for several); default: the shipped samples",
    )
    parser.add_argument(
        "--prompt",
        default="What is shown in this image?",
        help="the question for --image files and checkpoints (the default demo asks Shapes-VQA's own questions)",
    )
    parser.add_argument("--max-new-tokens", type=positive_int, default=20)
    parser.add_argument(
        "--repeats", type=positive_int, default=3, help="timed runs per stage, after one warm-up run"
    )


def run_demo(args: argparse.Namespace):
    """See what PruMerge does, on this machine, with nothing to download.

    By default the demo runs the mini LLaVA-PruMerge model shipped in the package (trained on this
    project's CPUs on Shapes-VQA, a synthetic task; not CLIP, not the paper's weights) on three
    Shapes-VQA test images, asking each its first question. For each image and each method (none,
    prumerge, prumerge_plus) it reports the visual tokens the language model gets, the compression, the
    time spent in the vision tower, the reducer and the LLM prefill, and the answer generated through the
    image-text-to-text pipeline (with the right answer beside it); it draws what the reducer did to each
    image (see `llava-prumerge visualize`) and writes a summary table. With --image, your images are asked
    --prompt; with a checkpoint and no --image, the sample images in llava_prumerge/demo/samples/ are used.
    --model tiny runs the tiny random-weight model instead (mechanics only).

    llava-prumerge demo --out prumerge-demo
    llava-prumerge demo --model llava-hf/llava-1.5-7b-hf --image photo.jpg   # a real checkpoint
    """
    from .demo import run

    return run(args)


def add_visualize_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="the image to reduce (PNG, JPEG, ...)")
    parser.add_argument("--model", default=None, metavar="DIR_OR_REPO", help=MODEL_HELP)
    parser.add_argument("--token-reduction", choices=DRAWN_METHODS, default="prumerge")
    parser.add_argument(
        "--out", type=Path, default=None, metavar="PNG", help="default: IMAGE-METHOD.png here"
    )


def run_visualize(args: argparse.Namespace) -> Path:
    """Draw what PruMerge did to one image: which patches it kept and which patches each kept token absorbed.

    Left: the image as the vision tower sees it, with its patch grid; the attention-selected centers and
    the PruMerge+ spatial samples are marked in two colors, and every patch is tinted with the color of
    the kept token it was merged into. Right: the histogram of the [CLS] attention with the IQR fence
    above which patches become centers (the paper's sparsity figure).

    llava-prumerge visualize photo.jpg --token-reduction prumerge_plus --out photo-prumerge_plus.png
    """
    from .demo import load_demo_model
    from .visualize import draw, load_image, picture_title, reduce_image

    image_path = Path(args.image)
    image = load_image(image_path)
    print(f"Loading {args.model or 'the mini model (nothing is downloaded)'} ...", flush=True)
    model, processor, description = load_demo_model(args.model)
    reduction = reduce_image(model, processor, image, args.token_reduction)
    out = args.out or Path(f"{image_path.stem}-{args.token_reduction}.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    draw(reduction, picture_title(image_path.name, args.token_reduction, description)).savefig(out)
    print(f"{reduction.num_tokens} visual tokens from {len(reduction.roles)} patches; picture: {out}")
    return out
