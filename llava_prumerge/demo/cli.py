"""The `demo` and `visualize` subcommands (arguments only; models and matplotlib load when one runs)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..common.cli_args import positive_int
from ..common.outputs import check_output_path
from ..errors import UsageError
from ..mini import SHIPPED_MINI_MODELS

DRAWN_METHODS = ("prumerge", "prumerge_plus")  # "none" keeps every patch: nothing to draw
SAMPLES = Path(__file__).parent / "samples"
SAMPLE_CLIP = SAMPLES / "4_moving_shapes.gif"
MODEL_HELP = (
    "a PruMerge or stock LLaVA-1.5 checkpoint (with --video: Video-LLaVA), folder or Hub id; or 'mini' (the "
    "default for images: the mini model trained on Shapes-VQA, shipped in the package), 'mini-siglip' (its "
    "twin whose tower has no [CLS] token) or 'tiny' (tiny random weights; the default for videos)"
)
VISUALIZE_MODEL_HELP = (
    "a PruMerge or stock LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision, Qwen2.5-VL or Qwen2-VL checkpoint "
    "(with --video: Video-LLaVA), folder or Hub id, 'mini-siglip' (the mini model whose tower has no [CLS] "
    "token) or 'tiny' (the tiny random-weight LLaVA); default: the mini model (--video: the tiny "
    "Video-LLaVA; --arch ARCH: that tiny model)"
)
VIDEO_HELP = (
    "a video: a folder of frames, an animated GIF, or an MP4 (needs PyAV: pip install av); 8 frames are "
    f"sampled, as Video-LLaVA does. --video alone: the shipped {SAMPLE_CLIP.name}"
)
DEFAULT_IMAGE_QUESTION = "What is shown in this image?"
DEFAULT_VIDEO_QUESTION = "What is happening in this video?"


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
        "--video",
        action="append",
        nargs="?",
        const=SAMPLE_CLIP,
        type=Path,
        default=None,
        metavar="PATH",
        help=f"{VIDEO_HELP} (repeat for several; runs Video-LLaVA instead of the image demo)",
    )
    parser.add_argument(
        "--prompt",
        default=None,
        help=f"the question for --image files and checkpoints, default {DEFAULT_IMAGE_QUESTION!r} "
        f"({DEFAULT_VIDEO_QUESTION!r} for videos); the mini model's default demo asks Shapes-VQA's own questions",
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

    With --video it does the same for videos on a tiny Video-LLaVA-shaped model (or a Video-LLaVA
    checkpoint): 8 frames each, every frame reduced like an image; the table compares the video tokens
    reaching the LLM with stock Video-LLaVA's 8 x (patches + [CLS]), and each picture shows the frames.

    llava-prumerge demo --out prumerge-demo
    llava-prumerge demo --model llava-hf/llava-1.5-7b-hf --image photo.jpg   # a real checkpoint
    llava-prumerge demo --video --out prumerge-demo-video                    # the shipped clip
    llava-prumerge demo --video clip.mp4 --video frames/                     # videos of yours
    """
    if args.image and args.video:
        raise UsageError(
            "Pass --image or --video, not both: the image demo runs LLaVA-1.5, the video demo Video-LLaVA"
        )
    if args.video and args.model in SHIPPED_MINI_MODELS:
        raise UsageError("The mini model takes images only; --video runs the tiny Video-LLaVA or --model DIR")
    if args.video and args.model == "tiny":
        args.model = None  # the tiny Video-LLaVA, the video demo's default
    placeholders = [token for token in ("<image>", "<video>") if token in (args.prompt or "")]
    if placeholders:
        raise UsageError(
            f"--prompt holds {', '.join(placeholders)}: the demo puts the image (or video) into the prompt "
            "itself; pass the question alone"
        )
    args.prompt = args.prompt or (DEFAULT_VIDEO_QUESTION if args.video else DEFAULT_IMAGE_QUESTION)
    check_output_path(args.out, "--out", folder=True)
    if args.video:
        from .demo_video import run
    else:
        from .demo import run

    return run(args)


def add_visualize_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", nargs="?", help="the image to reduce (PNG, JPEG, ...)")
    parser.add_argument("--video", nargs="?", const=SAMPLE_CLIP, type=Path, metavar="PATH", help=VIDEO_HELP)
    parser.add_argument("--model", default=None, metavar="DIR_OR_REPO", help=VISUALIZE_MODEL_HELP)
    parser.add_argument(
        "--arch",
        choices=("llava", "llava-next", "llava-onevision", "qwen2.5-vl", "qwen2-vl"),
        default="llava",
        help="without --model, for an IMAGE: the tiny random-weight LLaVA-1.5 (default), LLaVA-NeXT, "
        "LLaVA-OneVision, Qwen2.5-VL or Qwen2-VL",
    )
    parser.add_argument("--token-reduction", choices=DRAWN_METHODS, default="prumerge")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="PNG",
        help="default: IMAGE-METHOD.png (VIDEO-METHOD.png) here",
    )


def run_visualize(args: argparse.Namespace) -> Path:
    """Draw what PruMerge did to one image: which patches it kept and which patches each kept token absorbed.

    Left: the image as the vision tower sees it, with its patch grid; the attention-selected centers and
    the PruMerge+ spatial samples are marked in two colors, and every patch is tinted with the color of
    the kept token it was merged into. Right: the histogram of the [CLS] attention with the IQR fence
    above which patches become centers (the paper's sparsity figure).

    With a LLaVA-NeXT or LLaVA-OneVision model (a checkpoint, or --arch llava-next / llava-onevision for the
    tiny one): the same for each of the image's AnyRes views, the base view beside its grid of crops (their
    padding blacked out), each view's patch picture above its histogram (OneVision: of the stand-in score of
    its SigLIP tower), and the tokens reaching the LLM against the stock model's.

    With a Qwen2.5-VL or Qwen2-VL model (a checkpoint, or --arch qwen2.5-vl / qwen2-vl for the tiny one): the
    image at its native resolution, as the processor resized it, one cell per merged token (2 x 2 patches,
    28 px for the released models) in a grid as rectangular as the image; the histogram is of the stand-in
    score (the tower has no [CLS]), and the tokens reaching the LLM are set against stock's one per cell.
    Videos are drawn for Video-LLaVA only.

    With --video PATH (a Video-LLaVA model): the same for each of the video's 8 sampled frames, each
    frame's patch picture above its histogram, and the video tokens reaching the LLM against stock's.

    llava-prumerge visualize photo.jpg --token-reduction prumerge_plus --out photo-prumerge_plus.png
    llava-prumerge visualize photo.jpg --arch llava-next --out photo-views.png
    llava-prumerge visualize photo.jpg --arch llava-onevision --out photo-onevision-views.png
    llava-prumerge visualize photo.jpg --model Qwen/Qwen2.5-VL-7B-Instruct --out photo-qwen.png
    llava-prumerge visualize --video clip.gif --out clip-prumerge.png
    """
    if (args.image is None) == (args.video is None):
        raise UsageError("Pass one IMAGE or one --video PATH to visualize")
    if args.arch != "llava" and (args.model or args.video):
        raise UsageError(
            f"--arch {args.arch} picks the tiny model for an IMAGE; with --model the checkpoint decides and "
            "--video takes a Video-LLaVA"
        )
    if args.video and args.model in SHIPPED_MINI_MODELS:
        raise UsageError(
            "The mini model takes images only; --video draws the tiny Video-LLaVA or --model DIR"
        )
    if args.video and args.model == "tiny":
        args.model = None  # the tiny Video-LLaVA, the default for videos
    source = Path(args.image or args.video)
    out = args.out or Path(f"{source.stem}-{args.token_reduction}.png")
    check_output_path(out, "--out")
    draw_input = _visualize_video if args.video else _visualize_image
    default = "the mini model" if args.arch == "llava" else f"the tiny random-weight {args.arch}"
    default = "the tiny random-weight Video-LLaVA" if args.video else default
    print(f"Loading {args.model or default + ' (nothing is downloaded)'} ...", flush=True)
    figure, summary = draw_input(source, args)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    print(f"{summary}; picture: {out}")
    return out


def _visualize_image(path: Path, args: argparse.Namespace):
    """(picture, summary line) of one image."""
    from .demo import load_demo_model
    from .media import load_image
    from .visualize import draw, is_qwen_vl, load_model, picture_title, reduce_image
    from .visualize_next import is_anyres

    image = load_image(path)
    if args.arch == "llava":  # the mini model, or --model (a checkpoint, or "tiny")
        model, processor, description = load_demo_model(args.model)
    else:  # the tiny model of another architecture (--model is refused with --arch above)
        model, processor = load_model(None, args.arch)
        description = None
    if is_anyres(model):
        return _visualize_anyres(model, processor, image, path, args)
    if is_qwen_vl(model):
        return _visualize_qwen(model, processor, image, path, args)
    reduction = reduce_image(model, processor, image, args.token_reduction)
    figure = draw(reduction, picture_title(path.name, args.token_reduction, description))
    return figure, f"{reduction.num_tokens} visual tokens from {len(reduction.roles)} patches"


def _visualize_anyres(model, processor, image, path: Path, args: argparse.Namespace):
    """(picture, summary line) of one image's AnyRes views (a LLaVA-NeXT or LLaVA-OneVision model)."""
    from .visualize import picture_title
    from .visualize_next import TINY_ANYRES_MODEL_NOTE, draw_anyres, reduce_anyres_image

    reduction = reduce_anyres_image(model, processor, image, args.token_reduction)
    note = args.model or TINY_ANYRES_MODEL_NOTE.format(name=reduction.model_name)
    title = picture_title(path.name, args.token_reduction, note)
    summary = (
        f"{reduction.num_tokens} visual tokens from {len(reduction.views)} views; stock "
        f"{reduction.model_name}: {reduction.stock_tokens}"
    )
    return draw_anyres(reduction, title), summary


def _visualize_qwen(model, processor, image, path: Path, args: argparse.Namespace):
    """(picture, summary line) of one image's merged tokens (a Qwen2.5-VL or Qwen2-VL model)."""
    from .visualize import picture_title
    from .visualize_qwen import TINY_QWEN_MODEL_NOTE, draw_qwen, reduce_qwen_image

    reduction = reduce_qwen_image(model, processor, image, args.token_reduction)
    note = args.model or TINY_QWEN_MODEL_NOTE.format(name=reduction.model_name)
    title = picture_title(path.name, args.token_reduction, note)
    summary = (
        f"{reduction.num_tokens} visual tokens; stock {reduction.model_name}: {reduction.stock_tokens} "
        "merged tokens"
    )
    return draw_qwen(reduction, title), summary


def _visualize_video(path: Path, args: argparse.Namespace):
    """(picture, summary line) of one video's sampled frames."""
    from .media import load_video
    from .visualize import picture_title
    from .visualize_video import (
        TINY_VIDEO_MODEL_NOTE,
        draw_video,
        load_video_model,
        preprocessing_note,
        reduce_video,
    )

    video = load_video(path)
    model, processor = load_video_model(args.model)
    if note := preprocessing_note(processor):
        print(note)
    reduction = reduce_video(model, processor, video, args.token_reduction)
    title = picture_title(path.name, args.token_reduction, args.model or TINY_VIDEO_MODEL_NOTE)
    summary = (
        f"{reduction.num_tokens} video tokens from {len(reduction.frames)} frames; stock Video-LLaVA: "
        f"{reduction.stock_tokens}"
    )
    return draw_video(reduction, title), summary
