"""`llava-prumerge visualize` with a LLaVA-NeXT model: one panel per AnyRes view, token counts that are the
model's own, padding of the crops marked, the tiny model and a checkpoint folder, clear errors."""

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from llava_prumerge.benchmarks.roofline import AnyresImage
from llava_prumerge.cli import main
from llava_prumerge.demo.demo import SAMPLES
from llava_prumerge.demo.visualize import DPI, PADDING, drawn_settings, load_model, patch_counts
from llava_prumerge.demo.visualize_next import draw_anyres, is_anyres, reduce_anyres_image
from llava_prumerge.demo.visualize_video import panel_inches
from llava_prumerge.testing.tiny_next import TINY_GRID_PINPOINTS

TINY_SIDE = 56  # the tiny LLaVA-NeXT's view size (patch 4: 14 x 14 patches a view)


@pytest.fixture(scope="module")
def next_model():
    return load_model(None, "llava-next")


def noise(height: int, width: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def tiny_image(height: int, width: int) -> AnyresImage:
    return AnyresImage(height, width, TINY_SIDE, 4, tuple(tuple(p) for p in TINY_GRID_PINPOINTS))


@pytest.mark.parametrize("method", ["prumerge", "prumerge_plus"])
@pytest.mark.parametrize(("height", "width"), [(120, 120), (100, 260), (300, 90)])
def test_each_view_is_reduced_as_the_model_reduces_it(next_model, method, height, width):
    model, processor = next_model
    assert is_anyres(model)
    image = noise(height, width)
    reduction = reduce_anyres_image(model, processor, image, method)
    expected = tiny_image(height, width)
    assert len(reduction.views) == 1 + expected.grid[0] * expected.grid[1]
    assert reduction.grid == expected.grid and reduction.stock_tokens == expected.stock_tokens
    inputs = processor(images=[image], text=["USER: <image>\nhi ASSISTANT:"], return_tensors="pt")
    with torch.inference_mode():
        output = model(**inputs, reduction=drawn_settings(model, method))
    assert output.visual_token_counts == [reduction.num_tokens]
    # the crops' padding is marked, never kept or merged; the base view has none
    padding = [int((view.roles == PADDING).sum()) for view in reduction.views]
    assert padding[0] == 0
    assert sum(padding[1:]) == (len(reduction.views) - 1) * 14 * 14 - sum(expected.view_patches[1:])
    for view, unpadded in zip(reduction.views[1:], expected.view_patches[1:], strict=True):
        assert len(view.attention) == unpadded  # the histogram shows what the reducer saw
        assert not (view.clusters[view.roles == PADDING] >= 0).any()


@pytest.mark.skipif(
    transformers.__version__.startswith("4."),
    reason="4.57's image processor returns 4 views for this image, where its own model (and ours) expects 3",
)
def test_a_fixed_budget_is_drawn_for_an_image_whose_crops_are_padding_only():
    model, processor = load_model(None, "llava-next")
    model.config.adaptive, model.config.num_visual_tokens = False, 40
    reduction = reduce_anyres_image(model, processor, noise(40, 2000), "prumerge")
    assert reduction.num_tokens == 40
    assert all((view.roles == PADDING).all() for view in reduction.views[1:])


def test_picture_has_a_panel_per_view_where_the_crops_sit(next_model):
    model, processor = next_model
    reduction = reduce_anyres_image(model, processor, noise(100, 260), "prumerge")
    assert reduction.grid == (1, 2)
    figure = draw_anyres(reduction, "test")
    titles = [axes.get_title() for axes in figure.axes if axes.get_title()]
    assert titles[0].startswith("base view: ") and titles[1:] == [
        f"crop 1,{column}: {view.num_tokens} tokens"
        for column, view in ((1, reduction.views[1]), (2, reduction.views[2]))
    ]
    assert len(figure.axes) == 2 * len(reduction.views)  # a patch picture and a histogram per view
    counts = patch_counts(reduction.views[1])
    assert counts["padding"] > 0 and "padding, dropped by unpadding before the reducer" in str(
        [text.get_text() for text in figure.legends[0].get_texts()]
    )


def test_visualize_command_draws_the_tiny_llava_nexts_views(tmp_path, capsys):
    out = tmp_path / "views.png"
    main(["visualize", str(SAMPLES / "3_cluttered.png"), "--arch", "llava-next", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "from 5 views; stock LLaVA-NeXT: " in printed  # a square image: the base view and 2 x 2 crops
    width, height = panel_inches(2, 3)
    with Image.open(out) as picture:
        assert picture.format == "PNG" and picture.size == (round(width * DPI), round(height * DPI))


@pytest.mark.parametrize("kind", ["prumerge", "stock"])
def test_visualize_command_takes_a_llava_next_checkpoint(tmp_path, capsys, kind):
    """A PruMerge export, or a stock LLaVA-NeXT folder (converted on load)."""
    if kind == "prumerge":
        folder = tmp_path / "tiny-llava-next-prumerge"
        main(["export", "--tiny", "--arch", "llava-next", "--out", str(folder)])
    else:
        main(["tiny-inputs", str(tmp_path / "inputs")])
        folder = tmp_path / "inputs" / "llava-next-hf"
    capsys.readouterr()
    image = tmp_path / "wide.png"
    noise(100, 260).save(image)
    main(["visualize", str(image), "--model", str(folder), "--out", str(tmp_path / "views.png")])
    assert "from 3 views; stock LLaVA-NeXT: " in capsys.readouterr().out  # 1 x 2 crops for a wide image
    assert (tmp_path / "views.png").is_file()


@pytest.mark.parametrize(
    "arguments",
    [
        ["--video", "--arch", "llava-next"],
        [str(SAMPLES / "3_cluttered.png"), "--arch", "llava-next", "--model", "some/checkpoint"],
    ],
)
def test_arch_only_picks_the_tiny_image_model(arguments, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["visualize", *arguments])
    assert exit_info.value.code == 2
    assert "--arch llava-next picks the tiny model for an IMAGE" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["prumerge", "prumerge_plus"])
def test_each_onevision_view_is_reduced_as_the_model_reduces_it_and_scored_by_the_stand_in(method, tmp_path):
    """LLaVA-OneVision: a panel per view, the model's own count, stock's count with its anyres_max shrink, the
    histogram of the SigLIP tower's stand-in score; and the command on the tiny model."""
    model, processor = load_model(None, "llava-onevision")
    image = noise(150, 160)  # a 3 x 3 grid, shrunk by stock (anyres_max_2)
    reduction = reduce_anyres_image(model, processor, image, method)
    assert (
        reduction.grid == (3, 3) and len(reduction.views) == 10 and reduction.model_name == "LLaVA-OneVision"
    )
    inputs = processor(images=[image], text=["USER: <image>\nhi ASSISTANT:"], return_tensors="pt")
    with torch.inference_mode():
        output = model(**inputs, reduction=drawn_settings(model, method))
    assert output.visual_token_counts == [reduction.num_tokens]
    assert reduction.stock_tokens == int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert {view.score for view in reduction.views} == {"importance (mean_attention)"}
    out = tmp_path / "views.png"
    image.save(tmp_path / "image.png")
    main(["visualize", str(tmp_path / "image.png"), "--arch", "llava-onevision", "--out", str(out)])
    assert out.is_file()


def test_visualize_takes_a_llava_onevision_checkpoint_or_names_what_its_processor_needs(tmp_path, capsys):
    """The stock OneVision processor builds a video processor, which needs torchvision: where it loads, the
    views are drawn; where it does not, one line says what to install."""
    folder = tmp_path / "tiny-llava-onevision-prumerge"
    main(["export", "--tiny", "--arch", "llava-onevision", "--out", str(folder)])
    capsys.readouterr()
    noise(100, 260).save(tmp_path / "wide.png")
    arguments = [
        "visualize",
        str(tmp_path / "wide.png"),
        "--model",
        str(folder),
        "--out",
        str(tmp_path / "v.png"),
    ]
    try:
        import torchvision  # noqa: F401
    except (ImportError, RuntimeError):  # the registry's CUDA build does not load beside CPU torch
        with pytest.raises(SystemExit) as exit_info:
            main(arguments)
        assert exit_info.value.code == 2
        error = capsys.readouterr().err
        assert "VideoProcessor requires the Torchvision library" in error  # 4.57 names AutoVideoProcessor
        assert "Install torchvision built for torch" in error and "Traceback" not in error
        return
    main(arguments)
    assert "stock LLaVA-OneVision: " in capsys.readouterr().out
