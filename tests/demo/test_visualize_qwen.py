"""`llava-prumerge visualize` with a Qwen2.5-VL or Qwen2-VL model: the picture's grid is the image's rectangle
of merged tokens, its counts and kept tokens are the model's own; the tiny model and checkpoint folders; clear
errors."""

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from PIL import Image

from llava_prumerge.cli import main
from llava_prumerge.demo.visualize import (
    CENTER_COLOR,
    DPI,
    FIGURE_INCHES,
    PRUNED,
    SAMPLE,
    SAMPLE_COLOR,
    PatchReduction,
    cluster_borders,
    cluster_map,
    draw,
    drawn_settings,
    is_qwen_vl,
    load_model,
    overlay_rgba,
    patch_roles,
)
from llava_prumerge.demo.visualize_qwen import draw_qwen, reduce_qwen_image
from llava_prumerge.errors import UsageError
from llava_prumerge.modeling.errors import ReductionSettingsError
from llava_prumerge.testing.model_tester import kept_patches
from llava_prumerge.testing.tiny_qwen import MERGE, PATCH, tiny_qwen_inputs, tiny_qwen_model

MERGED_SIDE = PATCH * MERGE  # pixels a side of the tiny models' merged token


@pytest.fixture(scope="module")
def qwen_model():
    return load_model(None, "qwen2.5-vl")


def noise(height: int, width: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def merged_grid(processor, image: Image.Image) -> tuple[int, int]:
    """(rows, columns) of merged tokens as the processor resizes the image."""
    inputs = processor.image_processor(images=image, return_tensors="pt")
    _, rows, columns = inputs["image_grid_thw"][0].tolist()  # patches
    return rows // MERGE, columns // MERGE


def model_output(model, processor, image: Image.Image, method: str):
    """The model's own forward on the image, with the settings the picture draws."""
    inputs = tiny_qwen_inputs(
        processor.tokenizer, processor.image_processor, ["USER: <image>\nhi ASSISTANT:"], [[image]]
    )
    with torch.inference_mode():
        return model(**inputs, reduction=drawn_settings(model, method))


@pytest.mark.parametrize("method", ["prumerge", "prumerge_plus"])
@pytest.mark.parametrize(("height", "width"), [(56, 84), (120, 40), (48, 48)])
def test_the_picture_is_the_models_reduction_over_the_merged_grid(qwen_model, method, height, width):
    model, processor = qwen_model
    assert is_qwen_vl(model)
    image = noise(height, width)
    reduction = reduce_qwen_image(model, processor, image, method)
    rows, columns = merged_grid(processor, image)
    assert reduction.image.grid_shape == (rows, columns)
    assert (rows < columns, rows > columns) == (height < width, height > width)  # as rectangular as the image
    drawn = reduction.image
    assert len(drawn.roles) == len(drawn.clusters) == len(drawn.attention) == rows * columns
    assert reduction.stock_tokens == rows * columns and reduction.image_size == (height, width)
    assert drawn.view.shape == (rows * MERGED_SIDE, columns * MERGED_SIDE, 3) and drawn.view.dtype == np.uint8
    output = model_output(model, processor, image, method)
    assert output.visual_token_counts == [reduction.num_tokens]
    (kept,) = kept_patches(output.visual_token_centers)
    assert sorted(kept.tolist()) == np.flatnonzero(drawn.roles != PRUNED).tolist()
    assert reduction.num_tokens == int((drawn.roles != PRUNED).sum()) + 1  # + the summary token
    assert (drawn.roles == SAMPLE).any() == (method == "prumerge_plus")
    assert drawn.score == "importance (mean_attention)"  # the tower has no [CLS]


def test_qwen2_vl_is_drawn_as_qwen2_5_vl():
    model, processor = load_model(None, "qwen2-vl")
    image = noise(56, 84)
    reduction = reduce_qwen_image(model, processor, image, "prumerge")
    assert reduction.model_name == "Qwen2-VL" and reduction.image.grid_shape == merged_grid(processor, image)
    assert model_output(model, processor, image, "prumerge").visual_token_counts == [reduction.num_tokens]


def test_the_picture_titles_the_counts_and_the_grid(qwen_model):
    model, processor = qwen_model
    reduction = reduce_qwen_image(model, processor, noise(56, 84), "prumerge_plus")
    rows, columns = reduction.image.grid_shape
    figure = draw_qwen(reduction, "test")
    assert (
        figure.axes[0].get_title()
        == f"{columns}x{rows} merged tokens -> {reduction.num_tokens} visual tokens"
    )
    assert figure.axes[1].get_title() == f"importance (mean_attention) of the {rows * columns} merged tokens"
    resized = f"{columns * MERGED_SIDE}x{rows * MERGED_SIDE}"
    assert (
        f"{reduction.num_tokens} visual tokens reach the LLM (kept and summary tokens); stock Qwen2.5-VL for "
        f"this 84x56 image (resized to {resized}, 2x2 patches a token): {rows * columns}"
    ) in figure.texts[0].get_text()  # the suptitle


# ---------------------------------------------------------------- a rectangular grid, drawn

# 3 rows x 5 columns: centers 7 (row 1, column 2) and 4 (row 0, column 4), a spatial sample 10 (row 2,
# column 0), each absorbing two cells
ROWS, COLUMNS = 3, 5
CENTERS = torch.tensor([7, 4, 10])
NEIGHBORS = torch.tensor([[8, 2], [9, 3], [11, 5]])


def rectangular_reduction() -> PatchReduction:
    cells = ROWS * COLUMNS
    rng = np.random.default_rng(0)
    return PatchReduction(
        view=rng.integers(0, 255, (ROWS * 28, COLUMNS * 28, 3), dtype=np.uint8),
        attention=rng.random(cells) ** 4,
        roles=patch_roles(CENTERS, 2, cells),
        clusters=cluster_map(CENTERS, NEIGHBORS, cells),
        num_tokens=len(CENTERS) + 1,
        grid=(ROWS, COLUMNS),
    )


def marked_cells(figure, color: str) -> set[int]:
    """The cells of the patch picture (the first axes) whose center pixel has the given mark color."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[..., :3].astype(int)
    target = np.array(to_rgb(color)) * 255
    marked = set()
    for cell in range(ROWS * COLUMNS):
        row, column = divmod(cell, COLUMNS)
        x, y = figure.axes[0].transData.transform((column + 0.5, row + 0.5))
        if np.abs(pixels[pixels.shape[0] - 1 - round(y), round(x)] - target).max() <= 2:
            marked.add(cell)
    return marked


def test_a_rectangular_grid_is_drawn_row_by_row():
    reduction = rectangular_reduction()
    figure = draw(reduction, "test")
    assert marked_cells(figure, CENTER_COLOR) == {7, 4}
    assert marked_cells(figure, SAMPLE_COLOR) == {10}
    assert figure.axes[0].get_xlim() == (0, COLUMNS) and figure.axes[0].get_ylim() == (ROWS, 0)
    assert figure.axes[0].get_title() == f"{COLUMNS}x{ROWS} patches -> 4 visual tokens"


def test_tints_and_borders_follow_a_rectangular_grid():
    clusters = np.array([0, 0, 1, -1, -1, 1])  # 2 rows x 3 columns
    overlay = overlay_rgba(clusters, (2, 3))
    assert overlay.shape == (2, 3, 4) and (overlay[..., 3].ravel() > 0).tolist() == (clusters >= 0).tolist()
    # segments as ((x, y), (x, y)): below cells (0, 0) and (0, 1), right of cells (0, 1) and (1, 1)
    assert sorted(cluster_borders(clusters, (2, 3))) == [
        ((0, 1), (1, 1)),
        ((1, 1), (2, 1)),
        ((2, 0), (2, 1)),
        ((2, 1), (2, 2)),
    ]


def test_a_grid_that_does_not_hold_the_cells_is_a_clear_error():
    with pytest.raises(UsageError, match="6 patches do not fill a grid of 2 rows and 4 columns"):
        overlay_rgba(np.zeros(6, dtype=np.int64), (2, 4))


# ---------------------------------------------------------------- the command


def test_visualize_command_draws_the_tiny_qwen(tmp_path, capsys):
    noise(56, 84).save(tmp_path / "wide.png")
    out = tmp_path / "picture.png"
    main(["visualize", str(tmp_path / "wide.png"), "--arch", "qwen2.5-vl", "--out", str(out)])
    assert "visual tokens; stock Qwen2.5-VL: 54 merged tokens" in capsys.readouterr().out  # 9 x 6 of 8 px
    with Image.open(out) as picture:
        assert picture.format == "PNG" and picture.size == (FIGURE_INCHES[0] * DPI, FIGURE_INCHES[1] * DPI)


@pytest.mark.parametrize("kind", ["prumerge", "stock"])
def test_visualize_command_takes_a_qwen_checkpoint(tmp_path, capsys, kind):
    """A PruMerge export of the tiny Qwen2.5-VL, or a stock Qwen2-VL folder (converted on load); their stock
    processors need torchvision, which the picture does without."""
    if kind == "prumerge":
        folder, name = tmp_path / "tiny-qwen2.5-vl-prumerge", "Qwen2.5-VL"
        main(["export", "--tiny", "--arch", "qwen2.5-vl", "--out", str(folder)])
    else:
        main(["tiny-inputs", str(tmp_path / "inputs")])
        folder, name = tmp_path / "inputs" / "qwen2-vl-hf", "Qwen2-VL"
    capsys.readouterr()
    image, out = tmp_path / "tall.png", tmp_path / "picture.png"
    noise(120, 40).save(image)
    main(["visualize", str(image), "--model", str(folder), "--out", str(out)])
    assert f"visual tokens; stock {name}: 52 merged tokens" in capsys.readouterr().out  # 4 x 13 of 8 px
    assert out.is_file()
    with pytest.raises(SystemExit) as exit_info:  # videos are drawn for Video-LLaVA only
        main(["visualize", "--video", "--model", str(folder)])
    assert exit_info.value.code == 2
    assert "not Video-LLaVA; for videos pass a Video-LLaVA checkpoint" in capsys.readouterr().err


def test_a_budget_larger_than_the_images_merged_tokens_is_refused(qwen_model):
    _, processor = qwen_model
    model = tiny_qwen_model(adaptive=False, num_visual_tokens=64)
    with pytest.raises(ReductionSettingsError, match="A budget of 64 tokens exceeds the 54 merged tokens"):
        reduce_qwen_image(model, processor, noise(56, 84), "prumerge")


def test_qwen_videos_are_refused_clearly(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["visualize", "--video", "--arch", "qwen2.5-vl"])
    assert exit_info.value.code == 2
    assert "--arch qwen2.5-vl picks the tiny model for an IMAGE" in capsys.readouterr().err
