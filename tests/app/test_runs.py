"""The app's logic without a browser or Gradio (runs under both transformers majors): which methods run,
what each row says, and the one-line messages the page shows for bad input."""

import re

import pytest
from PIL import Image

from llava_prumerge.app.runs import (
    ANYRES,
    IMAGE,
    QWEN,
    VIDEO,
    load_app_model,
    method_labels,
    method_settings,
    result_pictures,
    results_table,
    run_methods,
)
from llava_prumerge.cli import main
from llava_prumerge.common.images import MAX_SIDE
from llava_prumerge.demo.visualize_next import reduce_anyres_image
from llava_prumerge.demo.visualize_qwen import reduce_qwen_image
from llava_prumerge.errors import PruMergeError, UsageError


@pytest.fixture(scope="module")
def mini():
    return load_app_model(None)


@pytest.fixture
def shape_png(tmp_path):
    path = tmp_path / "shapes.png"
    image = Image.new("RGB", (96, 96), "white")
    image.paste((200, 30, 30), (20, 20, 60, 60))
    image.save(path)
    return path


def test_method_labels_add_each_budget_to_each_reducing_method():
    assert method_labels(["none", "prumerge"], "") == ["none", "prumerge"]
    assert method_labels(["none", "prumerge", "prumerge_plus"], "16, 64,16") == [
        "none",
        "prumerge",
        "prumerge_plus",
        "prumerge@16",
        "prumerge@64",
        "prumerge_plus@16",
        "prumerge_plus@64",
    ]


@pytest.mark.parametrize(
    ("methods", "budgets", "message"),
    [
        ([], "", "Choose at least one method"),
        (["tome"], "", "Unknown methods ['tome']"),
        (["prumerge"], "16,,x", "comma-separated positive token counts"),
        (["prumerge"], "0", "comma-separated positive token counts"),
        (["none"], "16", "A fixed budget applies to prumerge or prumerge_plus"),
    ],
)
def test_bad_method_choices_are_one_message(methods, budgets, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        method_labels(methods, budgets)


def test_a_run_reports_the_tokens_that_reached_the_llm_for_every_method(mini, shape_png):
    assert mini.kind == IMAGE
    media, results = run_methods(mini, shape_png, "What color is the square?", ["none", "prumerge"], "16")
    by_label = {result.label: result for result in results}
    assert list(by_label) == ["none", "prumerge", "prumerge@16"]
    stock = by_label["none"].stock_tokens
    assert stock == 144  # the mini model's 12 x 12 patches
    assert by_label["none"].visual_tokens == stock and by_label["none"].figure is None
    assert 1 < by_label["prumerge"].visual_tokens < stock and by_label["prumerge"].figure is not None
    assert by_label["prumerge@16"].visual_tokens == 16
    for result in results:
        assert result.answer.strip() and result.vision_ms.ms > 0 and result.prefill_ms.ms > 0
    table = results_table(results)
    assert "| prumerge@16 | 16 | 144 |" in table
    pictures = result_pictures(results, media)
    assert [caption for _, caption in pictures] == [
        f"none: {stock} of {stock} visual tokens",
        f"prumerge: {by_label['prumerge'].visual_tokens} of {stock} visual tokens",
        f"prumerge@16: 16 of {stock} visual tokens",
    ]
    assert pictures[0][0] is media and pictures[1][0].size[0] > media.size[0]  # the drawn figure


def test_prumerge_plus_at_a_fixed_budget_is_drawn_with_its_centers_and_samples(mini, shape_png):
    _, (result,) = run_methods(mini, shape_png, "", ["prumerge_plus"], "")
    assert result.figure is not None
    labels = method_labels(["prumerge_plus"], "32")
    assert method_settings(mini, labels[1]).num_visual_tokens == 32
    _, results = run_methods(mini, shape_png, "", ["prumerge_plus"], "32")
    assert results[1].visual_tokens == 32 and results[1].figure is not None
    figure = results[1].figure
    legends = [text.get_text() for legend in (*figure.legends, *(axes.get_legend() for axes in figure.axes))
               if legend is not None for text in legend.get_texts()]  # fmt: skip
    # 31 kept besides the summary token: a quarter of them attention centers, the rest spatial samples
    assert "attention center (8)" in legends and "PruMerge+ spatial sample (23)" in legends


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not an image at all", "PIL does not recognize it as an image"),
        (None, "Upload an image or pick a sample first"),
    ],
)
def test_an_upload_that_is_not_an_image_is_one_message(mini, tmp_path, content, message):
    path = None
    if content is not None:
        path = tmp_path / "notes.png"
        path.write_bytes(content)
    with pytest.raises(PruMergeError, match=message):
        run_methods(mini, path, "", ["none"], "")


def test_an_image_too_large_is_one_message(mini, tmp_path):
    path = tmp_path / "huge.png"
    Image.new("L", (MAX_SIDE + 1, 4)).save(path)
    with pytest.raises(PruMergeError, match=f"larger than {MAX_SIDE} on its longest side"):
        run_methods(mini, path, "", ["none"], "")


def test_a_question_holding_a_placeholder_is_refused(mini, shape_png):
    with pytest.raises(UsageError, match="holds <image>"):
        run_methods(mini, shape_png, "<image> what is it?", ["none"], "")


def test_a_wrong_model_folder_is_refused_before_loading(tmp_path):
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(PruMergeError, match="config.json"):
        load_app_model(str(tmp_path))


def test_anyres_views_are_timed_and_a_fixed_budget_is_per_image(tmp_path):
    main(["export", "--tiny", "--arch", "llava-next", "--out", str(tmp_path / "next")])
    app_model = load_app_model(str(tmp_path / "next"))
    assert app_model.kind == ANYRES
    wide = tmp_path / "wide.png"
    Image.new("RGB", (120, 64), "navy").save(wide)  # base view and 1 x 2 crops, unpadded rows
    _, (none, prumerge, budgeted) = run_methods(app_model, wide, "", ["none", "prumerge"], "16")
    drawn = reduce_anyres_image(app_model.model, app_model.processor, Image.open(wide), "prumerge")
    assert len(drawn.views) > 2
    assert none.visual_tokens == none.stock_tokens == drawn.stock_tokens
    assert prumerge.visual_tokens == drawn.num_tokens < drawn.stock_tokens  # the timed run kept what is drawn
    assert budgeted.visual_tokens == 16 and budgeted.figure is not None  # shared by the views and newlines
    for result in (none, prumerge, budgeted):
        assert result.vision_ms.ms > 0 and result.reducer_ms.ms >= 0 and result.prefill_ms.ms > 0
    assert f"| prumerge@16 | 16 | {drawn.stock_tokens} |" in results_table([budgeted])
    with pytest.raises(PruMergeError, match="num_visual_tokens=2 does not fit an image of"):
        run_methods(app_model, wide, "", ["prumerge"], "2")


def test_qwen_vl_is_answered_by_generate_and_timed_on_its_merged_tokens(tmp_path, shape_png):
    main(["export", "--tiny", "--arch", "qwen2.5-vl", "--out", str(tmp_path / "qwen")])
    app_model = load_app_model(str(tmp_path / "qwen"))
    assert app_model.kind == QWEN and app_model.pipe is None
    _, (none, prumerge, budgeted) = run_methods(app_model, shape_png, "", ["none", "prumerge"], "8")
    drawn = reduce_qwen_image(app_model.model, app_model.processor, Image.open(shape_png), "prumerge")
    assert none.visual_tokens == none.stock_tokens == drawn.stock_tokens
    assert prumerge.visual_tokens == drawn.num_tokens < drawn.stock_tokens
    assert budgeted.visual_tokens == 8 and budgeted.figure is not None
    for result in (none, prumerge, budgeted):
        assert result.answer and result.vision_ms.ms > 0 and result.prefill_ms.ms > 0
    with pytest.raises(PruMergeError, match="exceeds the"):
        run_methods(app_model, shape_png, "", ["prumerge"], str(drawn.stock_tokens + 1))


def test_video_llava_runs_the_sample_clip_frame_by_frame(tmp_path):
    main(["export", "--tiny", "--arch", "video-llava", "--out", str(tmp_path / "video")])
    app_model = load_app_model(str(tmp_path / "video"))
    assert app_model.kind == VIDEO and app_model.samples[0].suffix == ".gif"
    media, (none, prumerge) = run_methods(app_model, app_model.samples[0], "", ["none", "prumerge"], "")
    assert len(media.frames) == 8
    assert none.visual_tokens == none.stock_tokens > prumerge.visual_tokens
    assert prumerge.figure is not None and prumerge.reducer_ms is not None
    still = tmp_path / "still.png"
    Image.new("RGB", (8, 8)).save(still)
    with pytest.raises(PruMergeError, match="still image"):
        run_methods(app_model, still, "", ["none"], "")
