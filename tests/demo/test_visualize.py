"""The PruMerge picture: patch roles and clusters from a known selection, the rendered marks, the CLI;
for videos, each frame's picture, what reaches the LLM, the frame processing without torchvision."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from PIL import Image
from transformers import LlavaConfig, LlavaForConditionalGeneration

from llava_prumerge.cli import main
from llava_prumerge.common.video_processing import (
    VideoFramesProcessor,
    loaded_or_reason,
    placeholders_per_frame,
    processor_for_videos,
)
from llava_prumerge.demo.demo import SAMPLES
from llava_prumerge.demo.media import SampledVideo
from llava_prumerge.demo.visualize import (
    CENTER,
    CENTER_COLOR,
    DPI,
    FIGURE_INCHES,
    PRUNED,
    SAMPLE,
    SAMPLE_COLOR,
    TINT_ALPHA,
    PatchReduction,
    cluster_borders,
    cluster_colors,
    cluster_map,
    draw,
    iqr_fence,
    load_model,
    overlay_rgba,
    patch_counts,
    patch_legend_handles,
    patch_roles,
    reduce_image,
    square_grid,
)
from llava_prumerge.demo.visualize_video import (
    VIDEO_PROMPT_FORMAT,
    VideoReduction,
    draw_video,
    load_video_model,
    preprocessing_note,
    reduce_video,
    video_figure_inches,
)
from llava_prumerge.errors import UsageError
from llava_prumerge.modeling.token_reduction import iqr_outlier_counts
from llava_prumerge.testing.model_tester import kept_patches
from llava_prumerge.testing.tiny import tiny_config

# A 5x5 grid: two attention centers (12, 3), then two PruMerge+ spatial samples (0, 24), each
# absorbing three patches (nearest first); 13 is absorbed by tokens 0 and 1, 3 is kept but absorbed too.
CENTERS = torch.tensor([12, 3, 0, 24])
NEIGHBORS = torch.tensor([[13, 7, 3], [4, 13, 8], [1, 5, 6], [23, 19, 18]])


def test_patch_roles_of_a_known_selection():
    roles = patch_roles(CENTERS, num_centers=2, num_patches=25)
    assert np.flatnonzero(roles == CENTER).tolist() == [3, 12]
    assert np.flatnonzero(roles == SAMPLE).tolist() == [0, 24]
    assert (roles == PRUNED).sum() == 21
    with pytest.raises(ValueError, match="num_centers"):
        patch_roles(CENTERS, num_centers=5, num_patches=25)


def test_cluster_map_gives_each_patch_its_nearest_absorbing_token():
    clusters = cluster_map(CENTERS, NEIGHBORS, num_patches=25)
    assert clusters[CENTERS].tolist() == [0, 1, 2, 3]  # kept patches are their own cluster
    assert clusters[13] == 0  # first place in token 0's list beats second place in token 1's
    assert clusters[[7, 4, 8, 1, 5, 6, 23, 19, 18]].tolist() == [0, 1, 1, 2, 2, 2, 3, 3, 3]
    untouched = sorted(set(range(25)) - {*CENTERS.tolist(), *NEIGHBORS.flatten().tolist()})
    assert (clusters[untouched] == -1).all() and len(untouched) == 11


def test_cluster_map_without_merging_leaves_pruned_patches_untinted():
    clusters = cluster_map(CENTERS, torch.empty(4, 0, dtype=torch.long), num_patches=25)
    assert (clusters >= 0).sum() == 4


def test_overlay_tints_exactly_the_clustered_patches():
    clusters = cluster_map(CENTERS, NEIGHBORS, num_patches=25)
    overlay = overlay_rgba(clusters)
    assert overlay.shape == (5, 5, 4)
    tinted = overlay[..., 3] > 0
    assert tinted.sum() == 14 and (tinted.ravel() == (clusters >= 0)).all()
    same_cluster = overlay.reshape(25, 4)[[12, 13, 7]]
    assert (same_cluster == same_cluster[0]).all()


def test_iqr_fence_matches_the_reducers_outlier_count():
    attention = torch.rand(3, 576, dtype=torch.float64) ** 6
    for row, count in zip(attention, iqr_outlier_counts(attention, 1.5), strict=True):
        assert int((row.numpy() > iqr_fence(row.numpy(), 1.5)).sum()) == int(count)


def known_reduction(grid: int) -> PatchReduction:
    """Centers on the diagonal, spatial samples on the anti-diagonal (off the diagonal), the rest pruned."""
    num_patches = grid * grid
    diagonal = [i * grid + i for i in range(grid)]
    anti_diagonal = [i * grid + grid - 1 - i for i in range(grid) if grid - 1 - i != i]
    centers = torch.tensor(diagonal + anti_diagonal)
    neighbors = torch.tensor([[(p + 1) % num_patches] for p in centers.tolist()])
    rng = np.random.default_rng(grid)
    return PatchReduction(
        view=rng.integers(0, 255, (grid * 14, grid * 14, 3), dtype=np.uint8),
        attention=rng.random(num_patches) ** 4,
        roles=patch_roles(centers, len(diagonal), num_patches),
        clusters=cluster_map(centers, neighbors, num_patches),
        num_tokens=len(centers) + 1,
    )


def marked_patches(reduction: PatchReduction, color: str) -> set[int]:
    """The patches whose center pixel, in the rendered picture, has the given mark color."""
    figure = draw(reduction, "test")
    return marked_patches_in(rendered(figure), figure.axes[0], square_grid(len(reduction.roles)), color)


def rendered(figure) -> np.ndarray:
    """The figure's pixels [H, W, 3]."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].astype(int)


def marked_patches_in(pixels: np.ndarray, axes, grid: int, color: str) -> set[int]:
    """The patches of a patch picture drawn on `axes` whose center pixel has the given mark color."""
    height = pixels.shape[0]
    target = np.array(to_rgb(color)) * 255
    marked = set()
    for patch in range(grid * grid):
        row, col = divmod(patch, grid)
        x, y = axes.transData.transform((col + 0.5, row + 0.5))
        if np.abs(pixels[height - 1 - round(y), round(x)] - target).max() <= 2:
            marked.add(patch)
    return marked


@pytest.mark.parametrize("grid", [5, 24])
def test_picture_marks_exactly_the_centers_and_samples(grid):
    reduction = known_reduction(grid)
    assert marked_patches(reduction, CENTER_COLOR) == set(np.flatnonzero(reduction.roles == CENTER).tolist())
    assert marked_patches(reduction, SAMPLE_COLOR) == set(np.flatnonzero(reduction.roles == SAMPLE).tolist())


def test_a_patch_count_that_is_not_a_square_is_a_clear_error():
    with pytest.raises(ValueError, match="square grid"):
        square_grid(10)


def test_model_reduction_splits_prumerge_plus_into_centers_and_samples(model, processor, images):
    reduction = reduce_image(model, processor, images[0], "prumerge_plus")
    assert model.config.token_reduction == "prumerge"  # the model's own setting is restored
    centers, samples = (reduction.roles == CENTER).sum(), (reduction.roles == SAMPLE).sum()
    outliers = int(iqr_outlier_counts(torch.from_numpy(reduction.attention)[None], 1.5).clamp(min=1))
    assert centers == outliers and samples > 0
    assert reduction.num_tokens == centers + samples + 1  # + the summary token
    assert reduction.view.shape == (56, 56, 3) and reduction.view.dtype == np.uint8


def test_visualize_command_writes_a_picture(tmp_path):
    out = tmp_path / "picture.png"
    main(
        [
            "visualize",
            str(SAMPLES / "3_cluttered.png"),
            "--token-reduction",
            "prumerge_plus",
            "--out",
            str(out),
        ]
    )
    with Image.open(out) as picture:
        assert picture.format == "PNG"
        assert picture.size == (FIGURE_INCHES[0] * DPI, FIGURE_INCHES[1] * DPI)


def test_a_stock_llava_checkpoint_is_turned_into_prumerge(tmp_path, processor):
    stock_config = LlavaConfig(**{k: v for k, v in tiny_config().to_dict().items() if k != "model_type"})
    LlavaForConditionalGeneration(stock_config).save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    model, _ = load_model(str(tmp_path))
    assert type(model).__name__ == "LlavaPruMergeForConditionalGeneration"
    assert model.config.token_reduction == "prumerge"


# ---------------------------------------------------------------- videos


def frames_through_image_processor(video_tester) -> VideoFramesProcessor:
    vision_config = video_tester.get_config().vision_config
    return VideoFramesProcessor(
        video_tester.image_processor, video_tester.tokenizer, placeholders_per_frame(vision_config), "test"
    )


def known_video(num_frames: int = 8) -> VideoReduction:
    """Frames whose marks differ: the known 5x5 selection shifted by one patch per frame."""
    frames = []
    for shift in range(num_frames):
        frame = known_reduction(5)
        frame.roles, frame.clusters = np.roll(frame.roles, shift), np.roll(frame.clusters, shift)
        frames.append(frame)
    return VideoReduction(
        frames, frame_numbers=list(range(0, 2 * num_frames, 2)), total_frames=2 * num_frames
    )


def test_video_picture_marks_each_frames_centers_and_samples():
    video = known_video()
    figure = draw_video(video, "test")
    pixels = rendered(figure)
    width, height = video_figure_inches(8)
    assert pixels.shape[:2] == (round(height * DPI), round(width * DPI))
    patch_axes = figure.axes[0::2]  # each frame's patch picture, then its histogram
    assert len(figure.axes) == 16
    for number, (frame, axes) in enumerate(zip(video.frames, patch_axes, strict=True)):
        for role, color in ((CENTER, CENTER_COLOR), (SAMPLE, SAMPLE_COLOR)):
            assert marked_patches_in(pixels, axes, 5, color) == set(
                np.flatnonzero(frame.roles == role).tolist()
            )
        assert axes.get_title() == f"frame {2 * number + 1} of 16: {frame.num_tokens} tokens"


def test_video_token_counts_include_each_frames_class_token():
    video = known_video(3)
    assert video.num_tokens == 3 * video.frames[0].num_tokens
    assert video.stock_tokens == 3 * (25 + 1)


@pytest.mark.parametrize("method", ["prumerge", "prumerge_plus"])
def test_video_pictures_show_what_reaches_the_language_model(video_tester, method):
    model = video_tester.get_model()
    frames = video_tester.clips(1)[0]
    reduction = reduce_video(
        model, frames_through_image_processor(video_tester), SampledVideo(frames, list(range(8)), 8), method
    )
    inputs = video_tester.prepare_inputs([VIDEO_PROMPT_FORMAT.format(prompt="What?")], videos=[frames])
    with torch.inference_mode():
        outputs = model(**inputs, reduction=model.config.reduction_settings.replace(token_reduction=method))
    assert outputs.video_token_counts == [reduction.num_tokens]
    assert [frame.num_tokens for frame in reduction.frames] == [
        int((frame.roles != PRUNED).sum()) + 2
        for frame in reduction.frames  # + [CLS] and the summary token
    ]
    kept = {
        (index, int(patch))
        for index, frame in enumerate(reduction.frames)
        for patch in np.flatnonzero(frame.roles != PRUNED)
    }
    assert {tuple(pair) for pair in kept_patches(outputs.video_token_centers)[0].tolist()} == kept
    assert any((frame.roles == SAMPLE).any() for frame in reduction.frames) == (method == "prumerge_plus")
    assert reduction.stock_tokens == 8 * (14 * 14 + 1) > reduction.num_tokens


def test_frames_through_the_image_processor_are_the_stock_processors_inputs(video_tester):
    """Checked against `VideoLlavaProcessor` itself where torchvision works (max pixel difference 2e-7)."""
    frames = video_tester.clips(1)[0]
    text = VIDEO_PROMPT_FORMAT.format(prompt="What is happening?")
    inputs = frames_through_image_processor(video_tester)(text=text, videos=[frames])
    expected = video_tester.prepare_inputs([text], videos=[frames])
    assert torch.equal(inputs["input_ids"], expected["input_ids"])
    assert torch.equal(inputs["pixel_values_videos"], expected["pixel_values_videos"])


def test_a_working_video_processor_is_used_else_the_note_says_why(video_tester):
    parts = (video_tester.image_processor, video_tester.tokenizer, video_tester.get_config().vision_config)
    working = SimpleNamespace(video_processor=object())
    assert processor_for_videos(working, "", *parts) is working and preprocessing_note(working) is None

    def needs_torchvision():
        raise ImportError("\nVideoLlavaVideoProcessor requires the Torchvision library. Check out the page.")

    processor, reason = loaded_or_reason(needs_torchvision)
    assert processor is None and reason == "VideoLlavaVideoProcessor requires the Torchvision library"
    assert reason in preprocessing_note(processor_for_videos(None, reason, *parts))
    tokenizer_only = processor_for_videos(
        video_tester.tokenizer, "", *parts
    )  # a folder without processor files
    assert "has no video processor" in preprocessing_note(tokenizer_only)


def test_visualize_video_command_writes_a_picture_named_after_the_video(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["visualize", "--video", "--token-reduction", "prumerge_plus"])  # --video alone: the shipped clip
    width, height = video_figure_inches(8)
    with Image.open(tmp_path / "4_moving_shapes-prumerge_plus.png") as picture:
        assert picture.format == "PNG" and picture.size == (round(width * DPI), round(height * DPI))


@pytest.mark.parametrize("kind", ["stock", "prumerge"])
def test_video_llava_checkpoints_load_as_prumerge(video_checkpoints, kind):
    model, processor = load_video_model(str(video_checkpoints[kind]))
    assert type(model).__name__ == "VideoLlavaPruMergeForConditionalGeneration"
    assert model.config.token_reduction == "prumerge"
    assert processor.image_processor is not None and processor.tokenizer is not None


def test_an_image_checkpoint_cannot_take_videos(tmp_path, model, processor):
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    with pytest.raises(UsageError, match="not Video-LLaVA; for videos pass a Video-LLaVA checkpoint"):
        load_video_model(str(tmp_path))


# ---------------------------------------------------------------- what a reader sees in the picture


def drawn_picture(reduction: PatchReduction):
    """The figure drawn on a canvas, and its renderer (so extents are those of the saved picture)."""
    figure = draw(reduction, "test")
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return figure, canvas.get_renderer()


def patch_legend_texts(figure) -> list[str]:
    return [text.get_text() for text in figure.axes[0].get_legend().get_texts()]


@pytest.mark.parametrize("grid", [5, 24])
def test_the_legend_lies_inside_the_picture_and_clear_of_the_histogram(grid):
    figure, renderer = drawn_picture(known_reduction(grid))
    legend = figure.axes[0].get_legend().get_window_extent(renderer)
    picture = figure.bbox
    assert picture.x0 <= legend.x0 and legend.x1 <= picture.x1 and picture.y0 <= legend.y0
    assert not legend.overlaps(figure.axes[1].get_tightbbox(renderer))  # its axis labels included


def test_the_fence_is_inside_the_histogram_even_above_every_patch():
    reduction = known_reduction(5)
    reduction.attention = np.linspace(1.0, 1.1, 25)  # evenly spread: no outliers, fence above the maximum
    fence = iqr_fence(reduction.attention, reduction.iqr_scale)
    assert fence > reduction.attention.max()
    figure, _ = drawn_picture(reduction)
    low, high = figure.axes[1].get_xlim()
    assert low < reduction.attention.min() and fence < high - 0.01 * (high - low)


def test_the_floor_of_one_center_is_explained_and_the_summary_token_listed():
    reduction = known_reduction(5)
    reduction.attention = np.linspace(1.0, 1.1, 25)
    reduction.roles = patch_roles(torch.tensor([24]), 1, 25)
    reduction.clusters = cluster_map(torch.tensor([24]), torch.tensor([[23, 19]]), 25)
    reduction.summary_tokens = 1
    texts = patch_legend_texts(drawn_picture(reduction)[0])
    assert texts[0] == "attention center (1; 0 IQR outliers: the reducer keeps at least one)"
    assert texts[-1] == "+ summary token (1): every pruned patch, attention-weighted (not drawn)"
    reduction.summary_tokens, reduction.centers_are_outliers = 0, False  # a fixed budget: no floor to explain
    texts = patch_legend_texts(drawn_picture(reduction)[0])
    assert texts[0] == "attention center (1)" and not any("summary" in text for text in texts)


def test_the_legend_key_of_merged_patches_shows_the_tints_drawn():
    reduction = known_reduction(5)
    figure, _ = drawn_picture(reduction)
    legend = figure.axes[0].get_legend()
    (swatch,) = [h for h in patch_legend_handles(patch_counts(reduction)) if "merged" in h.get_label()]
    handler = legend.get_legend_handler(legend.get_legend_handler_map(), swatch)  # as the legend drew it
    keys = handler.create_artists(legend, swatch, 0, 0, 20, 7, 8, figure.transFigure)
    used = np.unique(reduction.clusters[(reduction.roles == PRUNED) & (reduction.clusters >= 0)])
    assert [tuple(key.get_facecolor()[:3]) for key in keys] == [
        tuple(color) for color in cluster_colors(min(4, len(used)))
    ]
    assert all(key.get_alpha() == 2 * TINT_ALPHA for key in keys)


def test_tints_let_the_image_through_and_borders_outline_each_merged_group():
    clusters = np.array([0, 0, 1, -1])  # a 2 x 2 grid: token 0 holds the top row, token 1 one patch
    assert sorted(cluster_borders(clusters)) == [((0, 1), (1, 1)), ((1, 1), (1, 2)), ((1, 1), (2, 1))]
    assert overlay_rgba(clusters)[..., 3].max() <= 0.3
