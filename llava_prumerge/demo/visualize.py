"""Draw what PruMerge did to one image: which patches it kept and which patches each kept token absorbed.

Left: the image as the vision tower sees it, with its patch grid; the attention-selected centres and
the PruMerge+ spatial samples are marked in two colours, and every patch is tinted with the colour of
the kept token it was merged into. Right: the histogram of the [CLS] attention with the IQR fence
above which patches become centres (the paper's sparsity figure).

llava-prumerge visualize photo.jpg --token-reduction prumerge_plus --out photo-prumerge_plus.png
"""

from __future__ import annotations

import argparse
import contextlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.collections import PatchCollection
from matplotlib.figure import Figure
from matplotlib.patches import Circle, Patch, Rectangle
from PIL import Image
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from .configuration.configuration_llava_prumerge import LlavaPruMergeConfig
from .modeling.modeling_llava_prumerge import LlavaPruMergeForConditionalGeneration
from .modeling.token_reduction import ReducedTokens, iqr_outlier_counts
from .tiny import tiny_model, tiny_processor

PRUNED, CENTRE, SAMPLE = 0, 1, 2  # patch roles
CENTRE_COLOUR = "#ff1a1a"
SAMPLE_COLOUR = "#00d5ff"
TINT_ALPHA = 0.45
DRAWN_METHODS = ("prumerge", "prumerge_plus")  # "none" keeps every patch: nothing to draw
FIGURE_INCHES, DPI = (13.0, 6.0), 100  # pictures are 1300 x 600 pixels
TINY_MODEL_NOTE = "tiny random-weight model: the selection shows the mechanics, not a trained CLIP's choices"


# ---------------------------------------------------------------- what happened to each patch (pure)


def patch_roles(centers: torch.Tensor, num_centres: int, num_patches: int) -> np.ndarray:
    """Per patch: CENTRE, SAMPLE or PRUNED.

    `centers` are the kept patches in the reducer's attention order (ReducedTokens.centers with
    token_order="attention"): its first `num_centres` are the attention centres, the rest PruMerge+
    spatial samples.
    """
    kept = np.asarray(centers, dtype=np.int64)
    if not 0 <= num_centres <= len(kept):
        raise ValueError(
            f"num_centres={num_centres} must lie in [0, {len(kept)}], the number of kept patches"
        )
    roles = np.full(num_patches, PRUNED, dtype=np.int8)
    roles[kept[num_centres:]] = SAMPLE
    roles[kept[:num_centres]] = CENTRE
    return roles


def cluster_map(centers: torch.Tensor, neighbours: torch.Tensor, num_patches: int) -> np.ndarray:
    """Per patch, the index of the kept token whose cluster it is in; -1 for a patch no kept token absorbed.

    A kept patch is its own cluster. A pruned patch absorbed by several kept tokens goes to the one
    that ranks it nearest (its earliest place in a neighbour list, which is sorted by key similarity);
    on a tie, to the earlier token (the one with the higher attention).
    """
    kept = np.asarray(centers, dtype=np.int64)
    absorbed = np.asarray(neighbours, dtype=np.int64).reshape(len(kept), -1)  # [m, k]
    clusters = np.full(num_patches, -1, dtype=np.int64)
    tokens, places = np.indices(absorbed.shape)
    nearest_first = np.lexsort((tokens.ravel(), places.ravel()))
    patches = absorbed.ravel()[nearest_first]
    first = np.unique(patches, return_index=True)[1]
    clusters[patches[first]] = tokens.ravel()[nearest_first][first]
    clusters[kept] = np.arange(len(kept))
    return clusters


def iqr_fence(attention: np.ndarray, iqr_scale: float = 1.5) -> float:
    """Q3 + iqr_scale * (Q3 - Q1) of one image's attention: patches above it are the outliers."""
    q1, q3 = np.percentile(np.asarray(attention, dtype=np.float64), [25, 75])
    return float(q3 + iqr_scale * (q3 - q1))


def cluster_colours(count: int) -> np.ndarray:
    """One RGB colour per kept token, from a qualitative palette (repeats past 20 tokens)."""
    palette = colormaps["tab20"]
    return np.array([palette(i % 20)[:3] for i in range(count)]).reshape(count, 3)


def overlay_rgba(clusters: np.ndarray) -> np.ndarray:
    """The tint layer, one RGBA pixel per patch [grid, grid, 4]: the cluster's colour, clear outside clusters."""
    grid = square_grid(len(clusters))
    colours = cluster_colours(int(clusters.max()) + 1)
    rgba = np.zeros((len(clusters), 4))
    tinted = clusters >= 0
    rgba[tinted, :3] = colours[clusters[tinted]]
    rgba[tinted, 3] = TINT_ALPHA
    return rgba.reshape(grid, grid, 4)


def square_grid(num_patches: int) -> int:
    grid = math.isqrt(num_patches)
    if grid * grid != num_patches:
        raise ValueError(
            f"{num_patches} patches do not form a square grid; PruMerge pictures need a ViT's square grid"
        )
    return grid


# ---------------------------------------------------------------- the picture (pure)


@dataclass
class PatchReduction:
    """What the picture shows for one image and one reduction method."""

    view: np.ndarray  # [H, W, 3] uint8: the image as the vision tower sees it
    attention: np.ndarray  # [N] [CLS]-to-patch attention
    roles: np.ndarray  # [N] PRUNED / CENTRE / SAMPLE
    clusters: np.ndarray  # [N] kept-token index per patch, -1 for none
    num_tokens: int  # visual tokens reaching the language model (summary token included)
    iqr_scale: float = 1.5


def draw(reduction: PatchReduction, title: str) -> Figure:
    """The patch picture beside the attention histogram, as a matplotlib Figure (no pyplot state)."""
    grid = square_grid(len(reduction.roles))
    figure = Figure(figsize=FIGURE_INCHES, dpi=DPI)
    image_axes, histogram_axes = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.05]})
    figure.subplots_adjust(left=0.02, right=0.98, top=0.88, bottom=0.13, wspace=0.12)
    figure.suptitle(title, fontsize=11)
    _draw_patches(image_axes, reduction, grid)
    _draw_histogram(histogram_axes, reduction)
    return figure


def _draw_patches(axes, reduction: PatchReduction, grid: int) -> None:
    extent = (0, grid, grid, 0)  # one data unit per patch
    axes.imshow(reduction.view, extent=extent, interpolation="bilinear")
    axes.imshow(overlay_rgba(reduction.clusters), extent=extent, interpolation="nearest")
    lines = {"colors": "white", "linewidth": 0.4, "alpha": 0.5}
    axes.hlines(range(grid + 1), 0, grid, **lines)
    axes.vlines(range(grid + 1), 0, grid, **lines)
    for role, colour in ((CENTRE, CENTRE_COLOUR), (SAMPLE, SAMPLE_COLOUR)):
        rows, cols = np.divmod(np.flatnonzero(reduction.roles == role), grid)
        outlines = [Rectangle((c, r), 1, 1) for r, c in zip(rows, cols, strict=True)]
        dots = [Circle((c + 0.5, r + 0.5), 0.22) for r, c in zip(rows, cols, strict=True)]
        axes.add_collection(PatchCollection(outlines, facecolor="none", edgecolor=colour, linewidth=1.6))
        axes.add_collection(PatchCollection(dots, facecolor=colour, edgecolor="black", linewidth=0.5))
    axes.set_xlim(0, grid)
    axes.set_ylim(grid, 0)
    axes.set_xticks([])
    axes.set_yticks([])
    pruned = reduction.roles == PRUNED
    counts = {
        "centre": int((reduction.roles == CENTRE).sum()),
        "sample": int((reduction.roles == SAMPLE).sum()),
        "merged": int((pruned & (reduction.clusters >= 0)).sum()),
        "alone": int((pruned & (reduction.clusters < 0)).sum()),
    }
    handles = [
        Patch(facecolor=CENTRE_COLOUR, edgecolor="black", label=f"attention centre ({counts['centre']})"),
        Patch(
            facecolor=cluster_colours(3)[2],
            alpha=TINT_ALPHA,
            label=f"pruned, merged into the kept token of its tint ({counts['merged']})",
        ),
        Patch(
            facecolor="none",
            edgecolor="grey",
            label=f"pruned, absorbed by no kept token: untinted ({counts['alone']})",
        ),
    ]
    if counts["sample"]:
        label = f"PruMerge+ spatial sample ({counts['sample']})"
        handles.insert(1, Patch(facecolor=SAMPLE_COLOUR, edgecolor="black", label=label))
    axes.legend(
        handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=2, fontsize=8, frameon=False
    )
    axes.set_title(f"{grid}x{grid} patches -> {reduction.num_tokens} visual tokens", fontsize=10)


def _draw_histogram(axes, reduction: PatchReduction) -> None:
    attention = reduction.attention.astype(np.float64)
    fence = iqr_fence(attention, reduction.iqr_scale)
    outliers = attention > fence
    bins = np.linspace(attention.min(), attention.max(), 61)
    axes.hist(
        [attention[~outliers], attention[outliers]],
        bins=bins,
        stacked=True,
        color=["#8a8a8a", CENTRE_COLOUR],
        label=["inside the fence", f"outliers ({int(outliers.sum())})"],
    )
    axes.axvline(
        fence,
        color="black",
        linestyle="--",
        linewidth=1.2,
        label=f"Q3 + {reduction.iqr_scale:g} IQR = {fence:.3g}",
    )
    axes.set_yscale("log")
    axes.set_xlabel("[CLS] attention to the patch")
    axes.set_ylabel("patches")
    axes.set_title(f"[CLS] attention of the {len(attention)} patches", fontsize=10)
    axes.legend(fontsize=8)


# ---------------------------------------------------------------- from a model (shared with the demo)


def load_model(name_or_path: str | None = None):
    """(model, processor): the tiny random-weight LLaVA when `name_or_path` is None, else a checkpoint.

    A checkpoint is a local folder or Hub id of a PruMerge model (remote code is trusted) or of a
    stock LLaVA-1.5 (e.g. llava-hf/llava-1.5-7b-hf), which is turned into a PruMerge model on load.
    On a GPU when there is one, in float16 there.
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if name_or_path is None:
        return tiny_model().to(device), tiny_processor()
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=True)
    if config.model_type == "llava":
        model = LlavaPruMergeForConditionalGeneration.from_pretrained(
            name_or_path, config=LlavaPruMergeConfig.from_llava_config(config), dtype=dtype
        )
    else:
        model = AutoModelForImageTextToText.from_pretrained(name_or_path, trust_remote_code=True, dtype=dtype)
    if not hasattr(getattr(model, "model", None), "encode_patches"):
        raise ValueError(
            f"{name_or_path} loads as {type(model).__name__} (model_type {config.model_type!r}), not a PruMerge "
            "LLaVA; pass a llava_prumerge checkpoint or a stock LLaVA-1.5 one"
        )
    return model.to(device).eval(), AutoProcessor.from_pretrained(name_or_path, trust_remote_code=True)


def load_image(path: str | Path) -> Image.Image:
    try:
        return Image.open(path).convert("RGB")
    except (FileNotFoundError, IsADirectoryError) as error:
        raise FileNotFoundError(f"No image at {path}; pass the path of a PNG or JPEG file") from error


@contextlib.contextmanager
def reducer_settings(model, token_reduction: str):
    """Run the model with another reduction method; tokens in attention order, so centres come first."""
    config = model.config
    saved = (config.token_reduction, config.token_order)
    config.token_reduction, config.token_order = token_reduction, "attention"
    try:
        yield
    finally:
        config.token_reduction, config.token_order = saved


def pixel_values_of(model, processor, image: Image.Image) -> torch.Tensor:
    pixel_values = processor.image_processor(images=image, return_tensors="pt")["pixel_values"]
    return pixel_values.to(model.device, model.dtype)


def vision_tower_view(processor, pixel_values: torch.Tensor) -> np.ndarray:
    """The preprocessed image [H, W, 3] uint8 (padded, resized, de-normalised): what the patches cover."""
    image_processor = processor.image_processor
    mean = torch.tensor(image_processor.image_mean if image_processor.do_normalize else [0.0] * 3)
    std = torch.tensor(image_processor.image_std if image_processor.do_normalize else [1.0] * 3)
    scale = image_processor.rescale_factor if image_processor.do_rescale else 1.0
    pixels = pixel_values[0].float().cpu().permute(1, 2, 0) * std + mean  # [H, W, 3]
    return (pixels / scale).clamp(0, 255).round().to(torch.uint8).numpy()


def attention_centre_count(config, attention: torch.Tensor, num_kept: int) -> int:
    """How many of the kept patches are attention centres (the rest are PruMerge+ spatial samples)."""
    if config.token_reduction != "prumerge_plus":
        return num_kept
    if config.adaptive:
        return int(iqr_outlier_counts(attention[None], config.iqr_scale).clamp(min=1))
    if config.num_visual_tokens is None:
        return max(1, int(len(attention) * config.reduction_ratio))
    raise ValueError(
        "The picture tells PruMerge+ centres from spatial samples for adaptive=True or a reduction_ratio; "
        "this model has adaptive=False with num_visual_tokens set: set model.config.adaptive = True"
    )


def patch_reduction(
    config, processor, pixel_values: torch.Tensor, attention: torch.Tensor, reduced: ReducedTokens
) -> PatchReduction:
    """The picture's data from one image's reducer inputs and output, under the reducer `config` used."""
    num_patches = len(attention)  # the grid is its square root: 24 x 24 for LLaVA-1.5
    centers, neighbours = reduced.centers[0].cpu(), reduced.neighbours[0].cpu()
    num_centres = attention_centre_count(config, attention, len(centers))
    return PatchReduction(
        view=vision_tower_view(processor, pixel_values),
        attention=attention.float().cpu().numpy(),
        roles=patch_roles(centers, num_centres, num_patches),
        clusters=cluster_map(centers, neighbours, num_patches),
        num_tokens=reduced.num_tokens[0],
        iqr_scale=config.iqr_scale,
    )


@torch.inference_mode()
def reduce_image(model, processor, image: Image.Image, token_reduction: str) -> PatchReduction:
    """Run the vision tower and the reducer on one image and collect what the picture shows."""
    pixel_values = pixel_values_of(model, processor, image)
    with reducer_settings(model, token_reduction):
        encoded = model.model.encode_patches(pixel_values)
        reduced = model.model.reduce_patches(encoded)
        return patch_reduction(model.config, processor, pixel_values, encoded.attention[0], reduced)


def picture_title(image_name: str, token_reduction: str, model_name: str | None) -> str:
    return f"{image_name} · {token_reduction} · {model_name or TINY_MODEL_NOTE}"


# ---------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="the image to reduce (PNG, JPEG, ...)")
    parser.add_argument(
        "--model",
        default=None,
        metavar="DIR_OR_REPO",
        help="a PruMerge or stock LLaVA-1.5 checkpoint (folder or Hub id); default: the tiny random-weight model",
    )
    parser.add_argument("--token-reduction", choices=DRAWN_METHODS, default="prumerge")
    parser.add_argument(
        "--out", type=Path, default=None, metavar="PNG", help="default: IMAGE-METHOD.png here"
    )


def main_from_args(args: argparse.Namespace) -> Path:
    image_path = Path(args.image)
    image = load_image(image_path)
    print(f"Loading {args.model or 'the tiny random-weight model (nothing is downloaded)'} ...", flush=True)
    model, processor = load_model(args.model)
    reduction = reduce_image(model, processor, image, args.token_reduction)
    out = args.out or Path(f"{image_path.stem}-{args.token_reduction}.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    draw(reduction, picture_title(image_path.name, args.token_reduction, args.model)).savefig(out)
    print(f"{reduction.num_tokens} visual tokens from {len(reduction.roles)} patches; picture: {out}")
    return out
