"""What PruMerge did to one image, as data and as a picture (see `llava-prumerge visualize`).

Left: the image as the vision tower sees it, with its patch grid, the attention-selected centers and
the PruMerge+ spatial samples marked, every patch tinted with the color of the kept token it was merged
into. Right: the histogram of the [CLS] attention with the IQR fence (the paper's sparsity figure).
The grid is a ViT's square one unless a reduction says otherwise (Qwen-VL's native-resolution images:
a rectangle of merged tokens, see `visualize_qwen`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.collections import LineCollection, PatchCollection
from matplotlib.figure import Figure
from matplotlib.legend_handler import HandlerBase
from matplotlib.patches import Circle, Patch, Rectangle
from PIL import Image

from ..common.loading import load_processor, load_prumerge_model
from ..errors import UsageError
from ..modeling.qwen_vl import QwenVLModelMixin
from ..modeling.reduction_settings import ReductionSettings, resolved_importance
from ..modeling.token_reduction import ReducedTokens, fixed_center_count, iqr_outlier_counts
from ..modeling.vision_encoding import has_class_token
from ..testing.tiny import tiny_model, tiny_processor, tiny_tokenizer
from ..testing.tiny_next import tiny_next_model, tiny_next_processor
from ..testing.tiny_onevision import tiny_onevision_model, tiny_onevision_processor
from ..testing.tiny_qwen import tiny_qwen_model, tiny_qwen_parts

PRUNED, CENTER, SAMPLE, PADDING = 0, 1, 2, 3  # patch roles; PADDING: an AnyRes crop's, never reduced
CENTER_COLOR = "#ff1a1a"
SAMPLE_COLOR = "#00d5ff"
TINT_ALPHA = 0.3  # light enough for the image to show through where every patch is tinted (PruMerge+)
BORDER_COLOR = "white"  # lines between patches of different kept tokens
TINT_SWATCH_COLORS = 4  # the legend key of merged patches shows the first tints
PADDING_ALPHA = 0.7  # black over the patches LLaVA-NeXT's unpadding drops
FIGURE_INCHES, DPI = (13.0, 6.0), 100  # pictures are 1300 x 600 pixels
TINY_MODEL_NOTE = "tiny random-weight model: the selection shows the mechanics, not a trained CLIP's choices"
QWEN_VL_ARCHS = ("qwen2.5-vl", "qwen2-vl")  # the tiny native-resolution models `load_model` builds


# ---------------------------------------------------------------- what happened to each patch (pure)


def patch_roles(centers: torch.Tensor, num_centers: int, num_patches: int) -> np.ndarray:
    """Per patch: CENTER, SAMPLE or PRUNED.

    `centers` are the kept patches in the reducer's attention order (ReducedTokens.centers with
    token_order="attention"): its first `num_centers` are the attention centers, the rest PruMerge+
    spatial samples.
    """
    kept = np.asarray(centers, dtype=np.int64)
    if not 0 <= num_centers <= len(kept):
        raise UsageError(
            f"num_centers={num_centers} must lie in [0, {len(kept)}], the number of kept patches"
        )
    roles = np.full(num_patches, PRUNED, dtype=np.int8)
    roles[kept[num_centers:]] = SAMPLE
    roles[kept[:num_centers]] = CENTER
    return roles


def cluster_map(centers: torch.Tensor, neighbors: torch.Tensor, num_patches: int) -> np.ndarray:
    """Per patch, the index of the kept token whose cluster it is in; -1 for a patch no kept token absorbed.

    A kept patch is its own cluster. A pruned patch absorbed by several kept tokens goes to the one
    that ranks it nearest (its earliest place in a neighbor list, which is sorted by key similarity);
    on a tie, to the earlier token (the one with the higher attention).
    """
    kept = np.asarray(centers, dtype=np.int64)
    absorbed = np.asarray(neighbors, dtype=np.int64).reshape(len(kept), -1)  # [m, k]
    clusters = np.full(num_patches, -1, dtype=np.int64)
    tokens, places = np.indices(absorbed.shape)
    nearest_first = np.lexsort((tokens.ravel(), places.ravel()))
    patches = absorbed.ravel()[nearest_first]
    first = np.unique(patches, return_index=True)[1]
    clusters[patches[first]] = tokens.ravel()[nearest_first][first]
    clusters[kept] = np.arange(len(kept))
    return clusters


def iqr_fence(attention: np.ndarray, iqr_scale: float) -> float:
    """Q3 + iqr_scale * (Q3 - Q1) of one image's attention: patches above it are the outliers."""
    q1, q3 = np.percentile(np.asarray(attention, dtype=np.float64), [25, 75])
    return float(q3 + iqr_scale * (q3 - q1))


def cluster_colors(count: int) -> np.ndarray:
    """One RGB color per kept token, from a qualitative palette (repeats past 20 tokens)."""
    palette = colormaps["tab20"]
    return np.array([palette(i % 20)[:3] for i in range(count)]).reshape(count, 3)


def overlay_rgba(clusters: np.ndarray, grid: tuple[int, int] | None = None) -> np.ndarray:
    """The tint layer, one RGBA pixel per patch [rows, columns, 4]: the cluster's color, clear outside
    clusters. `grid`: (rows, columns) of the patches, default a ViT's square grid (`patch_grid`)."""
    rows, columns = patch_grid(len(clusters), grid)
    colors = cluster_colors(int(clusters.max()) + 1)
    rgba = np.zeros((len(clusters), 4))
    tinted = clusters >= 0
    rgba[tinted, :3] = colors[clusters[tinted]]
    rgba[tinted, 3] = TINT_ALPHA
    return rgba.reshape(rows, columns, 4)


def cluster_borders(
    clusters: np.ndarray, grid: tuple[int, int] | None = None
) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Segments (in patch units) between neighboring patches of different kept tokens, or of one kept
    token and none: the outlines of the merged groups, which stay visible where tints cover everything.
    `grid` as for `overlay_rgba`."""
    cells = clusters.reshape(patch_grid(len(clusters), grid))
    rows, cols = np.nonzero(cells[:, 1:] != cells[:, :-1])  # a vertical border right of (row, col)
    segments = [((c + 1, r), (c + 1, r + 1)) for r, c in zip(rows.tolist(), cols.tolist(), strict=True)]
    rows, cols = np.nonzero(cells[1:, :] != cells[:-1, :])  # a horizontal border below (row, col)
    segments += [((c, r + 1), (c + 1, r + 1)) for r, c in zip(rows.tolist(), cols.tolist(), strict=True)]
    return segments


def patch_grid(num_patches: int, grid: tuple[int, int] | None = None) -> tuple[int, int]:
    """(rows, columns) of `num_patches` listed in raster order: `grid`, or a ViT's square grid when None."""
    if grid is None:
        side = square_grid(num_patches)
        return side, side
    rows, columns = grid
    if rows * columns != num_patches:
        raise UsageError(f"{num_patches} patches do not fill a grid of {rows} rows and {columns} columns")
    return rows, columns


def square_grid(num_patches: int) -> int:
    grid = math.isqrt(num_patches)
    if grid * grid != num_patches:
        raise UsageError(
            f"{num_patches} patches do not form a square grid; PruMerge pictures need a ViT's square grid"
        )
    return grid


# ---------------------------------------------------------------- the picture (pure)


@dataclass
class PatchReduction:
    """What the picture shows for one image and one reduction method."""

    view: np.ndarray  # [H, W, 3] uint8: the image as the vision tower sees it
    attention: np.ndarray  # [N] [CLS]-to-patch attention
    roles: np.ndarray  # [N] PRUNED / CENTER / SAMPLE (/ PADDING)
    clusters: np.ndarray  # [N] kept-token index per patch, -1 for none
    num_tokens: int  # visual tokens reaching the language model (summary token included)
    iqr_scale: float = ReductionSettings.iqr_scale
    summary_tokens: int = 0  # 1 when a summary token stands for the pruned patches
    centers_are_outliers: bool = True  # adaptive: the centers are the IQR outliers (at least one)
    score: str = "[CLS] attention"  # what `attention` is: see `importance_label`
    grid: tuple[int, int] | None = None  # (rows, columns) of the patches; None: a ViT's square grid
    cell_names: tuple[str, str] = ("patch", "patches")  # what a grid cell is, singular and plural

    @property
    def grid_shape(self) -> tuple[int, int]:
        """(rows, columns) of the grid whose cells `roles` and `clusters` list in raster order."""
        return patch_grid(len(self.roles), self.grid)


def draw(reduction: PatchReduction, title: str) -> Figure:
    """The patch picture beside the attention histogram, as a matplotlib Figure (no pyplot state)."""
    figure = Figure(figsize=FIGURE_INCHES, dpi=DPI)
    image_axes, histogram_axes = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.05]})
    figure.subplots_adjust(left=0.02, right=0.98, top=0.88, bottom=0.22, wspace=0.2)
    figure.suptitle(title, fontsize=11)
    _draw_patches(image_axes, reduction)
    _draw_histogram(histogram_axes, reduction)
    return figure


def _draw_patches(axes, reduction: PatchReduction) -> None:
    draw_patch_marks(axes, reduction)
    # Anchored at the axes' left edge so it grows rightwards, under both panels, never off the figure.
    add_patch_legend(axes, patch_counts(reduction), loc="upper left", bbox_to_anchor=(0, -0.01))
    rows, columns = reduction.grid_shape  # said as width x height, as image sizes are
    cells = reduction.cell_names[1]
    axes.set_title(f"{columns}x{rows} {cells} -> {reduction.num_tokens} visual tokens", fontsize=10)


def draw_patch_marks(axes, reduction: PatchReduction) -> None:
    """The image with its patch grid (`PatchReduction.grid_shape`), cluster tints and center / sample marks,
    one data unit per patch."""
    rows, columns = reduction.grid_shape
    extent = (0, columns, rows, 0)
    axes.imshow(reduction.view, extent=extent, interpolation="bilinear")
    axes.imshow(overlay_rgba(reduction.clusters, (rows, columns)), extent=extent, interpolation="nearest")
    lines = {"colors": "white", "linewidth": 0.4, "alpha": 0.5}
    axes.hlines(range(rows + 1), 0, columns, **lines)
    axes.vlines(range(columns + 1), 0, rows, **lines)
    borders = cluster_borders(reduction.clusters, (rows, columns))
    axes.add_collection(LineCollection(borders, colors=BORDER_COLOR, linewidths=1.4))
    for role, color in ((CENTER, CENTER_COLOR), (SAMPLE, SAMPLE_COLOR)):
        ys, xs = np.divmod(np.flatnonzero(reduction.roles == role), columns)
        outlines = [Rectangle((x, y), 1, 1) for y, x in zip(ys, xs, strict=True)]
        dots = [Circle((x + 0.5, y + 0.5), 0.22) for y, x in zip(ys, xs, strict=True)]
        axes.add_collection(PatchCollection(outlines, facecolor="none", edgecolor=color, linewidth=1.6))
        axes.add_collection(PatchCollection(dots, facecolor=color, edgecolor="black", linewidth=0.5))
    ys, xs = np.divmod(np.flatnonzero(reduction.roles == PADDING), columns)
    padding = [Rectangle((x, y), 1, 1) for y, x in zip(ys, xs, strict=True)]
    axes.add_collection(PatchCollection(padding, facecolor="black", alpha=PADDING_ALPHA, linewidth=0))
    axes.set_xlim(0, columns)
    axes.set_ylim(rows, 0)
    axes.set_xticks([])
    axes.set_yticks([])


def patch_counts(reduction: PatchReduction) -> dict[str, int]:
    """What the legend counts: centers, samples, merged (pruned, in a cluster) and lone patches, the
    summary tokens, the IQR outliers (fewer than the centers where the floor of one applies), and padding
    (an AnyRes crop's, dropped before the reducer)."""
    pruned = reduction.roles == PRUNED
    centers = int((reduction.roles == CENTER).sum())
    outliers = int(iqr_outlier_counts(torch.from_numpy(reduction.attention)[None], reduction.iqr_scale))
    return {
        "center": centers,
        "sample": int((reduction.roles == SAMPLE).sum()),
        "merged": int((pruned & (reduction.clusters >= 0)).sum()),
        "alone": int((pruned & (reduction.clusters < 0)).sum()),
        "summary": reduction.summary_tokens,
        "tints": int(np.unique(reduction.clusters[pruned & (reduction.clusters >= 0)]).size),
        "floor": centers - outliers if reduction.centers_are_outliers and centers > outliers else 0,
        "padding": int((reduction.roles == PADDING).sum()),
    }


class TintSwatch(Patch):
    """Legend key of the merged patches: drawn in the first tints the picture uses, not in one color."""

    def __init__(self, tints: int, **kwargs):
        super().__init__(**kwargs)
        self.tints = tints


class _TintSwatchHandler(HandlerBase):
    def create_artists(self, legend, handle, xdescent, ydescent, width, height, fontsize, trans):
        colors = cluster_colors(max(1, min(TINT_SWATCH_COLORS, handle.tints)))
        step = width / len(colors)
        return [
            Rectangle((i * step - xdescent, -ydescent), step, height, facecolor=color, alpha=TINT_ALPHA * 2,
                      edgecolor="none", transform=trans)
            for i, color in enumerate(colors)
        ]  # fmt: skip


def add_patch_legend(owner, counts: dict[str, int], **placement):
    """The legend of the patch marks on `owner` (axes or figure), with `counts` (see `patch_counts`)."""
    return owner.legend(
        handles=patch_legend_handles(counts),
        handler_map={TintSwatch: _TintSwatchHandler()},
        fontsize=8,
        frameon=False,
        **placement,
    )


def patch_legend_handles(counts: dict[str, int]) -> list[Patch]:
    """The legend entries: each kind of patch that occurs, and the summary token when there is one."""
    center = f"attention center ({counts['center']})"
    if counts["floor"]:
        center = (
            f"attention center ({counts['center']}; {counts['center'] - counts['floor']} IQR outliers: "
            "the reducer keeps at least one)"
        )
    handles = [Patch(facecolor=CENTER_COLOR, edgecolor="black", label=center)]
    if counts["sample"]:
        label = f"PruMerge+ spatial sample ({counts['sample']})"
        handles.append(Patch(facecolor=SAMPLE_COLOR, edgecolor="black", label=label))
    if counts["merged"]:
        label = f"pruned, merged into the kept token its tint and outline show ({counts['merged']})"
        handles.append(TintSwatch(counts["tints"], label=label))
    if counts["alone"]:
        label = f"pruned, absorbed by no kept token: untinted ({counts['alone']})"
        handles.append(Patch(facecolor="none", edgecolor="grey", label=label))
    if counts["summary"]:
        label = f"+ summary token ({counts['summary']}): every pruned patch, attention-weighted (not drawn)"
        handles.append(Patch(facecolor="none", edgecolor="none", label=label))
    if counts.get("padding"):
        label = f"padding, dropped by unpadding before the reducer ({counts['padding']})"
        handles.append(Patch(facecolor="black", alpha=PADDING_ALPHA, label=label))
    return handles


def _draw_histogram(axes, reduction: PatchReduction) -> None:
    draw_attention_histogram(axes, reduction, fontsize=8)
    cell, cells = reduction.cell_names
    axes.set_xlabel(f"{reduction.score} of the {cell}")
    axes.set_ylabel(cells)
    axes.set_title(f"{reduction.score} of the {len(reduction.attention)} {cells}", fontsize=10)


def draw_attention_histogram(axes, reduction: PatchReduction, fontsize: float, histtype: str = "bar") -> None:
    """The [CLS] attention histogram (log counts), its IQR outliers in the center color, the fence dashed.

    histtype="stepfilled" draws one outline per series instead of a bar per bin: as exact, and much
    faster where a picture holds many histograms."""
    attention = reduction.attention.astype(np.float64)
    fence = iqr_fence(attention, reduction.iqr_scale)
    outliers = attention > fence
    bins = np.linspace(attention.min(), attention.max(), 61)
    axes.hist(
        [attention[~outliers], attention[outliers]],
        bins=bins,
        stacked=True,
        histtype=histtype,
        color=["#8a8a8a", CENTER_COLOR],
        label=["inside the fence", f"outliers ({int(outliers.sum())})"],
    )
    axes.axvline(
        fence,
        color="black",
        linestyle="--",
        linewidth=1.2,
        label=f"Q3 + {reduction.iqr_scale:g} IQR = {fence:.3g}",
    )
    span = max(float(attention.max()), fence) - float(attention.min())
    axes.set_xlim(float(attention.min()) - 0.02 * span, max(float(attention.max()), fence) + 0.05 * span)
    axes.set_yscale("log")
    axes.legend(fontsize=fontsize)


# ---------------------------------------------------------------- from a model (shared with the demo)


def load_model(name_or_path: str | None = None, tiny_arch: str = "llava"):
    """(model, processor): the tiny random-weight LLaVA (`tiny_arch` "llava-next": LLaVA-NeXT,
    "llava-onevision": LLaVA-OneVision, "qwen2.5-vl" / "qwen2-vl": Qwen2.5-VL / Qwen2-VL) when
    `name_or_path` is None, else a checkpoint.

    A checkpoint is a local folder or Hub id of a PruMerge model or of a stock LLaVA-family or Qwen-VL
    model (e.g. llava-hf/llava-1.5-7b-hf), which is turned into a PruMerge model on load; a Qwen-VL
    processor comes as its parts (`qwen_vl_processor`). On a GPU when there is one, in float16 there.
    """
    if name_or_path is None and tiny_arch in QWEN_VL_ARCHS:
        processor = tiny_qwen_parts()
        return tiny_qwen_model(tiny_arch, tokenizer=processor.tokenizer).to(demo_device()), processor
    if name_or_path is None and tiny_arch == "llava-onevision":
        processor = tiny_onevision_processor()
        return tiny_onevision_model(tokenizer=processor.tokenizer).to(demo_device()), processor
    if name_or_path is None and tiny_arch == "llava-next":
        tokenizer = tiny_tokenizer()
        return tiny_next_model(tokenizer=tokenizer).to(demo_device()), tiny_next_processor(tokenizer)
    if name_or_path is None:
        return tiny_model().to(demo_device()), tiny_processor()
    model = load_checkpoint(name_or_path)
    if is_qwen_vl(model):
        from ..hub_upload.export import qwen_vl_processor

        return model, qwen_vl_processor(name_or_path)
    return model, load_processor(name_or_path)


def is_qwen_vl(model) -> bool:
    """Whether `model` is a Qwen2.5-VL or Qwen2-VL: native-resolution images in merged tokens
    (`visualize_qwen`)."""
    return isinstance(model.model, QwenVLModelMixin)


def demo_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_checkpoint(name_or_path: str):
    """A checkpoint as its PruMerge model on the demo's device: float16 on a GPU, float32 on a CPU."""
    device = demo_device()
    model = load_prumerge_model(name_or_path, dtype=torch.float16 if device == "cuda" else torch.float32)
    return model.to(device)


def drawn_settings(model, token_reduction: str) -> ReductionSettings:
    """The model's settings with another method, tokens in attention order (so centers come first)."""
    return model.config.reduction_settings.replace(token_reduction=token_reduction, token_order="attention")


def pixel_values_of(model, processor, image: Image.Image) -> torch.Tensor:
    pixel_values = processor.image_processor(images=image, return_tensors="pt")["pixel_values"]
    return pixel_values.to(model.device, model.dtype)


def vision_tower_view(processor, pixel_values: torch.Tensor) -> np.ndarray:
    """The preprocessed image [H, W, 3] uint8 (padded, resized, de-normalized): what the patches cover."""
    image_processor = processor.image_processor
    mean = torch.tensor(image_processor.image_mean if image_processor.do_normalize else [0.0] * 3)
    std = torch.tensor(image_processor.image_std if image_processor.do_normalize else [1.0] * 3)
    scale = image_processor.rescale_factor if image_processor.do_rescale else 1.0
    pixels = pixel_values[0].float().cpu().permute(1, 2, 0) * std + mean  # [H, W, 3]
    return (pixels / scale).clamp(0, 255).round().to(torch.uint8).numpy()


def attention_center_count(settings: ReductionSettings, attention: torch.Tensor, num_kept: int) -> int:
    """How many of the kept patches are attention centers (the rest are PruMerge+ spatial samples)."""
    if settings.token_reduction != "prumerge_plus":
        return num_kept
    if settings.adaptive:
        return int(iqr_outlier_counts(attention[None], settings.iqr_scale).clamp(min=1))
    return fixed_center_count(settings, len(attention))  # a quarter of the budget; the rest are samples


def patch_reduction(
    settings: ReductionSettings,
    processor,
    pixel_values: torch.Tensor,
    attention: torch.Tensor,
    reduced: ReducedTokens,
    score: str = PatchReduction.score,
) -> PatchReduction:
    """The picture's data from one image's reducer inputs and output, under the reducer `settings` used;
    `score` names the importance the reducer read (`importance_label`)."""
    view = vision_tower_view(processor, pixel_values)
    return grid_reduction(settings, view, attention, reduced, score)  # 24 x 24 patches for LLaVA-1.5


def grid_reduction(
    settings: ReductionSettings,
    view: np.ndarray,
    attention: torch.Tensor,
    reduced: ReducedTokens,
    score: str = PatchReduction.score,
    grid: tuple[int, int] | None = None,
) -> PatchReduction:
    """`patch_reduction` over the `view` [H, W, 3] the tower saw, its `grid` (rows, columns) of patches in
    the reducer's order (default square)."""
    num_patches = len(attention)
    centers, neighbors = reduced.centers[0].cpu(), reduced.neighbors[0].cpu()
    num_centers = attention_center_count(settings, attention, len(centers))
    return PatchReduction(
        view=view,
        attention=attention.float().cpu().numpy(),
        roles=patch_roles(centers, num_centers, num_patches),
        clusters=cluster_map(centers, neighbors, num_patches),
        num_tokens=reduced.num_tokens[0],
        iqr_scale=settings.iqr_scale,
        summary_tokens=int(settings.summary_token and len(centers) < num_patches),  # none when all are kept
        centers_are_outliers=settings.adaptive,
        score=score,
        grid=patch_grid(num_patches, grid) if grid is not None else None,
    )


def importance_label(model, settings: ReductionSettings) -> str:
    """What the histogram shows: the [CLS] attention, or the stand-in that scores a tower without one."""
    tower = getattr(model.model, model.model.image_tower_attribute)
    return score_label(resolved_importance(settings.importance, has_class_token(tower)))


def score_label(score: str) -> str:
    """The histogram's name of a resolved importance score ("cls" or a stand-in's)."""
    return PatchReduction.score if score == "cls" else f"importance ({score})"


@torch.inference_mode()
def reduce_image(model, processor, image: Image.Image, token_reduction: str) -> PatchReduction:
    """Run the vision tower and the reducer on one image and collect what the picture shows."""
    pixel_values = pixel_values_of(model, processor, image)
    settings = drawn_settings(model, token_reduction)
    encoded = model.model.encode_patches(pixel_values, reduction=settings)
    reduced = model.model.reduce_patches(encoded, reduction=settings)
    score = importance_label(model, settings)
    return patch_reduction(settings, processor, pixel_values, encoded.attention[0], reduced, score)


def picture_title(image_name: str, token_reduction: str, model_name: str | None) -> str:
    return f"{image_name} · {token_reduction} · {model_name or TINY_MODEL_NOTE}"
