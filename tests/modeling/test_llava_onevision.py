"""LLaVA-OneVision with PruMerge: a SigLIP tower without [CLS], AnyRes views, multi-image base views and pooled
video frames, each reduced and laid out as stock orders them.

The tiny model's views are 56 px (14 x 14 patches), its grids up to 3 x 3 crops with `anyres_max_2`, so a
2 x 2 grid is already shrunk by stock; its video frames pool to 7 x 7 tokens.
"""

import pytest
import torch
import transformers

from llava_prumerge import LlavaOnevisionPruMergeConfig, LlavaOnevisionPruMergeForConditionalGeneration
from llava_prumerge.errors import ReductionSettingsError, VisualInputError
from llava_prumerge.modeling.anyres import anyres_layout
from llava_prumerge.modeling.modeling_llava_onevision_prumerge import shrunk_map
from llava_prumerge.modeling.runtime_compat import IMAGE_FEATURES_AS_OUTPUT, image_text_auto_classes
from llava_prumerge.testing.model_tester import (
    assert_offload_half_precision_and_peft,
    kept_patches,
    make_image,
    stock_twin,
)
from llava_prumerge.testing.tiny_onevision import (
    TINY_ASPECT_RATIO,
    TINY_ONEVISION_PINPOINTS,
    TINY_POOLED,
    tiny_clips,
    tiny_onevision_inputs,
    tiny_onevision_model,
    tiny_onevision_processor,
)

VARIANTS = ["none", "prumerge", "prumerge_plus"]
SIDE, FRAMES = 14, 4
TEXTS = [
    "USER: <image>\nWhat is shown in this image? ASSISTANT:",
    "USER: <image> and <image>\nWhich is brighter? ASSISTANT:",
    "USER: <video>\nWhat happens in the video? ASSISTANT:",
    "USER: <image>\nThis picture, then <video>\nwhich came first? ASSISTANT:",
]


@pytest.fixture(scope="module")
def processor():
    return tiny_onevision_processor()


@pytest.fixture(scope="module")
def models(processor):
    return {
        variant: tiny_onevision_model(seed=3, tokenizer=processor.tokenizer, token_reduction=variant)
        for variant in VARIANTS
    }


def pictures():
    """A wide picture (1x2 grid, padded), a square one (2x2 grid, shrunk by stock), a large one (3x3 grid)
    and two small ones for the multi-image prompt."""
    return [make_image(1, 90, 40), make_image(2, 120, 112), make_image(3, 160, 150), make_image(4, 60, 70),
            make_image(5, 50, 40)]  # fmt: skip


def sample_inputs(processor, samples, seed: int = 0):
    """Prompts of TEXTS (by index) with their images and videos, as one batch."""
    shots = pictures()
    images = {0: [shots[(seed + 2) % 3]], 1: shots[3:], 2: [], 3: [shots[(seed + 1) % 3]]}
    with_video = [sample for sample in samples if "<video>" in TEXTS[sample]]
    videos = tiny_clips(processor, len(with_video), FRAMES, seed) if with_video else None
    return tiny_onevision_inputs(processor, [TEXTS[s] for s in samples], [images[s] for s in samples], videos)


@pytest.fixture(scope="module")
def batch(processor):
    return sample_inputs(processor, [0, 1, 2, 3])


def test_none_equals_stock_llava_onevision_logits(models, batch):
    stock = stock_twin(models["none"].config, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(
            models["none"](**batch).logits, stock(**batch).logits, rtol=1e-5, atol=1e-5
        )


def test_stock_counts_match_the_processors_placeholders(processor, models):
    """stock_image_length reproduces the processor's count: base view, then the unpadded map (shrunk past
    anyres_max_2) with a newline per row."""
    model = models["none"].model
    shrunk = 0
    for width, height in [(90, 40), (40, 90), (120, 112), (160, 150), (56, 56), (200, 30), (31, 57)]:
        inputs = processor(images=make_image(0, width, height), text="<image>", return_tensors="pt")
        layout = anyres_layout((height, width), TINY_ONEVISION_PINPOINTS, 56, SIDE)
        count = int((inputs["input_ids"] == model.config.image_token_id).sum())
        assert count == model.stock_image_length(layout), (width, height)
        shrunk += shrunk_map(layout, TINY_ASPECT_RATIO) != (
            layout.bottom - layout.top,
            layout.right - layout.left,
        )
    assert shrunk >= 2  # the shrink is exercised


@pytest.mark.parametrize("variant", ["prumerge", "prumerge_plus"])
def test_each_view_and_frame_is_reduced_and_laid_out_in_stocks_order(models, batch, variant):
    model = models[variant]
    with torch.no_grad():
        out = model(**batch)
        features = model.get_image_features(
            batch["pixel_values"], batch["image_sizes"], batch_num_images=batch["batch_num_images"]
        )
        videos = model.get_video_features(batch["pixel_values_videos"])
    features = features.pooler_output if IMAGE_FEATURES_AS_OUTPUT else features
    videos = videos.pooler_output if IMAGE_FEATURES_AS_OUTPUT else videos
    newline = model.model.image_newline
    centers = kept_patches(out.visual_token_centers)
    sizes = batch["image_sizes"].tolist()
    alone = [True, False, False, True]  # sample 0's image, sample 1's two, sample 3's image
    for image, (size, tokens, image_centers) in enumerate(zip(sizes, features, centers, strict=True)):
        newlines = int((tokens == newline).all(-1).sum())
        if not alone[image]:  # a multi-image prompt: the base view reduced, then one newline
            assert newlines == 1 and torch.equal(tokens[-1], newline)
            assert set(image_centers[:, 0].tolist()) == {0} and len(tokens) < SIDE * SIDE / 3
            continue
        layout = anyres_layout(size, TINY_ONEVISION_PINPOINTS, 56, SIDE)
        assert newlines == layout.grid_rows and len(tokens) < layout.num_views * SIDE * SIDE / 4
        views, patches = image_centers.unbind(-1)
        crop = views > 0
        rows = (views[crop] - 1) // layout.grid_cols * SIDE + patches[crop] // SIDE
        cols = (views[crop] - 1) % layout.grid_cols * SIDE + patches[crop] % SIDE
        inside = (rows >= layout.top) & (rows < layout.bottom) & (cols >= layout.left) & (cols < layout.right)
        raster = rows * (layout.grid_cols * SIDE) + cols
        assert bool(inside.all()) and torch.equal(raster, raster.sort().values)
    assert out.video_token_counts == [len(video) for video in videos]
    for video in videos:  # frames' tokens, then one newline
        assert torch.equal(video[-1], newline) and len(video) < FRAMES * TINY_POOLED * 0.6
    frames, pooled = kept_patches(out.video_token_centers)[0].unbind(-1)
    assert set(frames.tolist()) == set(range(FRAMES)) and int(pooled.max()) < TINY_POOLED


def test_the_score_of_a_tower_without_cls_is_the_measured_stand_in(processor, batch):
    """'auto' scores SigLIP patches by mean_attention; the [CLS] row, which SigLIP lacks, is refused."""
    kept = {}
    for importance in ("auto", "mean_attention"):
        model = tiny_onevision_model(seed=3, tokenizer=processor.tokenizer, importance=importance)
        with torch.no_grad():
            kept[importance] = model(**batch).visual_token_centers
    assert torch.equal(kept["auto"], kept["mean_attention"])
    with pytest.raises(
        ReductionSettingsError, match="importance='cls' reads the \\[CLS\\] token's attention"
    ):
        tiny_onevision_model(tokenizer=processor.tokenizer, importance="cls")(**batch)


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_batch_generates_what_each_sample_generates_alone(models, processor, batch, variant):
    model = models[variant]
    sequences = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert torch.equal(sequences[:, : batch["input_ids"].shape[1]], batch["input_ids"])
    for row in range(4):
        alone = sample_inputs(processor, [row])
        if "pixel_values_videos" in alone:  # the same clip as in the batch
            position = [0, 0, 0, 1][row]
            alone["pixel_values_videos"] = batch["pixel_values_videos"][position : position + 1]
        expected = model.generate(**alone, max_new_tokens=4, do_sample=False)
        assert sequences[row, -4:].tolist() == expected[0, -4:].tolist(), row


def test_fixed_budgets_per_image_and_per_video_are_exact(processor, batch):
    for method, images, videos in (("prumerge", 40, 33), ("prumerge_plus", 100, 61)):
        model = tiny_onevision_model(
            seed=3, tokenizer=processor.tokenizer, token_reduction=method, adaptive=False,
            num_visual_tokens=images, num_video_tokens=videos,
        )  # fmt: skip
        with torch.no_grad():
            out = model(**batch)
        assert out.visual_token_counts == [images] * 4 and out.video_token_counts == [videos] * 2
    for fields, message in (
        ({"num_visual_tokens": 5}, r"num_visual_tokens=5 does not fit an image of 10 views \(3 newline"),
        ({"num_video_tokens": 8}, r"num_video_tokens=8 leaves 1 token\(s\) after the video's newline"),
    ):
        too_small = tiny_onevision_model(tokenizer=processor.tokenizer, adaptive=False, **fields)
        with pytest.raises(ReductionSettingsError, match=message):
            too_small(**batch)


def test_auto_classes_save_load_and_the_pipeline(tmp_path, models, processor, batch):
    model = models["prumerge_plus"]
    model.save_pretrained(tmp_path)
    assert type(transformers.AutoConfig.from_pretrained(tmp_path)) is LlavaOnevisionPruMergeConfig
    for auto_class in image_text_auto_classes():
        loaded = auto_class.from_pretrained(tmp_path)
        assert type(loaded) is LlavaOnevisionPruMergeForConditionalGeneration
        with torch.no_grad():
            torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits)
    task = "image-text-to-text" if hasattr(transformers, "AutoModelForImageTextToText") else "image-to-text"
    pipe = transformers.pipeline(task, model=model, processor=processor)
    picture = pictures()[1]
    answer = pipe(images=picture, text=TEXTS[0], max_new_tokens=4, return_full_text=False)
    alone = processor(images=picture, text=TEXTS[0], return_tensors="pt")
    expected = model.generate(**alone, max_new_tokens=4, do_sample=False)
    assert answer[0]["generated_text"] == processor.decode(expected[0, -4:], skip_special_tokens=True)


@pytest.mark.parametrize(
    "change, message",
    [
        ("batch_num_images of another batch", r"batch_num_images \[1, 2\] counts 3 image\(s\) but pixel_values holds 4"),
        ("image_sizes missing", "LLaVA-OneVision needs image_sizes"),
        ("the default strategy", "vision_feature_select_strategy must be 'full'"),
        ("another aspect ratio", "vision_aspect_ratio='anyres_max_9' differs from the config's"),
        ("videos flattened", r"pixel_values_videos must be one tensor \[num_videos, num_frames"),
    ],
)  # fmt: skip
def test_bad_inputs_are_clear_errors(models, batch, change, message):
    inputs = dict(batch)
    if change == "batch_num_images of another batch":
        inputs["batch_num_images"] = torch.tensor([1, 2])
    elif change == "image_sizes missing":
        inputs.pop("image_sizes")
    elif change == "the default strategy":
        inputs["vision_feature_select_strategy"] = "default"
    elif change == "another aspect ratio":
        inputs["vision_aspect_ratio"] = "anyres_max_9"
    else:
        inputs["pixel_values_videos"] = inputs["pixel_values_videos"].flatten(0, 1)
    with pytest.raises(VisualInputError, match=message):
        models["prumerge"](**inputs)


def test_device_map_half_precision_and_peft(tmp_path, models, batch):
    assert_offload_half_precision_and_peft(models["prumerge"], batch, tmp_path)
