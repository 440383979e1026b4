"""Video-LLaVA with PruMerge: images and 8-frame videos in one prompt, reduced per frame.

The tiny model's towers see 56 px frames of 14 x 14 patches, so a video's placeholders are
8 x 197 (each frame's [CLS] and patch tokens), as stock Video-LLaVA's 8 x 257 at 224 px.
"""

import copy

import pytest
import torch
import transformers

from llava_prumerge import VideoLlavaPruMergeConfig, VideoLlavaPruMergeForConditionalGeneration
from llava_prumerge.errors import NonFiniteError, ReductionSettingsError, VisualInputError
from llava_prumerge.modeling.frames import frame_settings
from llava_prumerge.modeling.reduction_settings import ReductionSettings
from llava_prumerge.modeling.runtime_compat import (
    IMAGE_FEATURES_AS_OUTPUT,
    VIDEO_LLAVA_IMAGES_ARGUMENT,
    image_text_auto_classes,
)
from llava_prumerge.testing.model_tester import assert_lora_trains_and_merges, kept_patches
from llava_prumerge.testing.tiny_video import TINY_PATCHES, TINY_VIDEO_FRAMES

VIDEO_PROMPT = "USER: <video>\nWhat happens in the video? ASSISTANT:"
MIXED_PROMPT = "USER: <image>\nThis picture, then <video>\nwhich came first? ASSISTANT:"
PLACEHOLDERS = TINY_VIDEO_FRAMES * (TINY_PATCHES + 1)
VARIANTS = ["none", "prumerge", "prumerge_plus"]


@pytest.fixture(scope="module")
def models(video_tester):
    return {variant: video_tester.get_model(seed=3, token_reduction=variant) for variant in VARIANTS}


@pytest.fixture(scope="module")
def mixed(video_tester):
    """A video-only prompt (left-padded) and a prompt with an image and a video."""
    return video_tester.prepare_inputs(
        [VIDEO_PROMPT, MIXED_PROMPT], images=video_tester.images(1), videos=video_tester.clips(2)
    )


def test_none_equals_stock_video_llava_logits(video_tester, models, mixed):
    stock = video_tester.get_stock_model(seed=3)
    with torch.no_grad():
        expected = stock(**mixed).logits
        out = models["none"](**mixed)
    torch.testing.assert_close(out.logits, expected, rtol=1e-5, atol=1e-5)
    assert out.video_token_counts == [PLACEHOLDERS, PLACEHOLDERS] and out.visual_token_counts == [
        TINY_PATCHES
    ]


@pytest.mark.parametrize("variant", ["prumerge", "prumerge_plus"])
def test_reduced_counts_centers_and_the_compacted_prompt(models, mixed, variant):
    with torch.no_grad():
        out = models[variant](**mixed)
    text = (mixed["attention_mask"].bool() & (mixed["input_ids"] != 4) & (mixed["input_ids"] != 400)).sum(1)
    image_counts = iter(out.visual_token_counts)
    for row, video_count in enumerate(out.video_token_counts):
        image_count = next(image_counts) if row == 1 else 0
        assert int(out.attention_mask[row].sum()) == int(text[row]) + video_count + image_count
        assert TINY_VIDEO_FRAMES * 2 <= video_count < PLACEHOLDERS / 2
    settings = models[variant].config.reduction_settings
    per_frame = 1 + (settings.summary_token and settings.prunes)  # [CLS] and summary tokens have no patch
    for centers, count in zip(kept_patches(out.video_token_centers), out.video_token_counts, strict=True):
        assert centers.shape == (count - per_frame * TINY_VIDEO_FRAMES, 2)
        frames, patches = centers.unbind(-1)
        assert frames.unique().tolist() == list(range(TINY_VIDEO_FRAMES))
        assert int(patches.min()) >= 0 and int(patches.max()) < TINY_PATCHES


@pytest.mark.parametrize("variant", VARIANTS)
def test_generate_returns_the_prompt_then_new_tokens_and_batches_decode_as_alone(
    video_tester, models, mixed, variant
):
    model = models[variant]
    sequences = model.generate(**mixed, max_new_tokens=4, do_sample=False)
    assert torch.equal(sequences[:, : mixed["input_ids"].shape[1]], mixed["input_ids"])
    clips, images = video_tester.clips(2), video_tester.images(1)
    for row, (text, row_images) in enumerate([(VIDEO_PROMPT, None), (MIXED_PROMPT, images)]):
        alone = video_tester.prepare_inputs([text], images=row_images, videos=clips[row : row + 1])
        expected = model.generate(**alone, max_new_tokens=4, do_sample=False)
        assert sequences[row, -4:].tolist() == expected[0, -4:].tolist()


def test_fixed_video_budgets_give_exactly_the_papers_counts(video_tester, mixed):
    """256 / 512 tokens per 8-frame video: the paper's 12.5% / 25% of Video-LLaVA's 2048 video tokens."""
    for method, budget in (("prumerge", 256), ("prumerge_plus", 512), ("prumerge", 100)):
        model = video_tester.get_model(
            seed=3, token_reduction=method, adaptive=False, num_video_tokens=budget
        )
        with torch.no_grad():
            out = model(**mixed)
        assert out.video_token_counts == [budget, budget]
    per_frame = video_tester.get_model(seed=3, adaptive=False, num_visual_tokens=16)
    with torch.no_grad():
        out = per_frame(**mixed)
    assert out.video_token_counts == [16 * TINY_VIDEO_FRAMES] * 2  # each frame: [CLS] + 15 reduced tokens
    assert out.visual_token_counts == [16]


def test_an_uneven_video_budget_goes_to_the_first_frames():
    settings = ReductionSettings(adaptive=False, num_video_tokens=100)
    budgets = [frame.num_visual_tokens + 1 for frame in frame_settings(settings, 8)]
    assert budgets == [13, 13, 13, 13, 12, 12, 12, 12]
    with pytest.raises(ReductionSettingsError, match="num_video_tokens=16 leaves 2 token"):
        frame_settings(settings.replace(num_video_tokens=16), 8)


def test_features_of_images_and_videos_are_the_reduced_tokens(models, mixed):
    model = models["prumerge"]
    with torch.no_grad():
        out = model(**mixed)
        videos = model.get_video_features(mixed["pixel_values_videos"])
        images = model.get_image_features(mixed[VIDEO_LLAVA_IMAGES_ARGUMENT])
    videos = videos.pooler_output if IMAGE_FEATURES_AS_OUTPUT else videos[0]
    images = images.pooler_output if IMAGE_FEATURES_AS_OUTPUT else images
    assert [video.shape[0] for video in videos] == out.video_token_counts
    assert [image.shape[0] for image in images] == out.visual_token_counts


@pytest.mark.parametrize("name", VIDEO_LLAVA_ARGUMENTS := ["pixel_values", "pixel_values_images"])
def test_images_are_taken_under_either_name(models, mixed, name):
    inputs = dict(mixed)
    inputs[name] = inputs.pop(VIDEO_LLAVA_IMAGES_ARGUMENT)
    with torch.no_grad():
        out = models["prumerge"](**inputs)
    assert len(out.visual_token_counts) == 1


def test_auto_classes_and_save_load(tmp_path, models, mixed):
    model = models["prumerge_plus"]
    model.save_pretrained(tmp_path)
    assert type(transformers.AutoConfig.from_pretrained(tmp_path)) is VideoLlavaPruMergeConfig
    for auto_class in image_text_auto_classes():
        loaded = auto_class.from_pretrained(tmp_path)
        assert type(loaded) is VideoLlavaPruMergeForConditionalGeneration
        with torch.no_grad():
            torch.testing.assert_close(loaded(**mixed).logits, model(**mixed).logits)


# ---------------------------------------------------------------- bad input


def bad(mixed, **changes):
    inputs = {key: value for key, value in mixed.items() if key not in changes}
    return {**inputs, **{key: value for key, value in changes.items() if value is not None}}


@pytest.mark.parametrize(
    "change, error, message",
    [
        (
            "frame size",
            VisualInputError,
            r"must be one tensor \[num_videos, num_frames, 3, 56, 56\].*got \(2, 8, 3, 48, 48\)",
        ),
        ("frames as an image batch", VisualInputError, r"got \(16, 3, 56, 56\)"),
        ("video as pixel_values", VisualInputError, "pixel_values"),
        ("image as pixel_values_videos", VisualInputError, r"got \(1, 3, 56, 56\)"),
        (
            "wrong frame count",
            VisualInputError,
            "has 1576 `<video>` tokens, but the video given expands to 1182",
        ),
        ("video missing", VisualInputError, "`<video>` tokens but no pixel_values_videos"),
        ("image missing", VisualInputError, "`<image>` tokens but no pixel_values"),
        ("NaN frames", NonFiniteError, "NaN"),
    ],
)
def test_bad_video_inputs_are_clear_errors(models, mixed, change, error, message):
    videos = mixed["pixel_values_videos"]
    images = VIDEO_LLAVA_IMAGES_ARGUMENT
    inputs = {
        "frame size": lambda: bad(mixed, pixel_values_videos=videos[..., :48, :48]),
        "frames as an image batch": lambda: bad(mixed, pixel_values_videos=videos.flatten(0, 1)),
        "video as pixel_values": lambda: bad(mixed, **{images: videos}, pixel_values_videos=None),
        "image as pixel_values_videos": lambda: bad(mixed, pixel_values_videos=mixed[images]),
        "wrong frame count": lambda: bad(mixed, pixel_values_videos=videos[:, :6]),
        "video missing": lambda: bad(mixed, pixel_values_videos=None),
        "image missing": lambda: bad(mixed, **{images: None}),
        "NaN frames": lambda: bad(mixed, pixel_values_videos=videos.clone().index_fill_(1, torch.tensor([3]), float("nan"))),
    }[change]()  # fmt: skip
    with pytest.raises(error, match=message):
        models["prumerge"](**inputs)
    with pytest.raises(error, match=message):
        models["prumerge"].generate(**inputs, max_new_tokens=2)


def test_a_video_budget_too_small_for_its_frames_is_a_clear_error(video_tester, mixed):
    """At load, for the frames the config's video_seq_length implies; per call, for the video's own frames."""
    with pytest.raises(ReductionSettingsError, match="8-frame video, which needs at least 3"):
        video_tester.get_model(adaptive=False, num_video_tokens=12)
    model = video_tester.get_model(adaptive=False, num_video_tokens=64)
    too_small = model.config.reduction_settings.replace(num_video_tokens=12)
    with pytest.raises(ReductionSettingsError, match="needs at least 3"):
        model(**mixed, reduction=too_small)


# ---------------------------------------------------------------- ecosystem


def test_device_map_with_the_video_tower_on_disk(tmp_path, models, mixed):
    model = models["prumerge"]
    model.save_pretrained(tmp_path / "model")
    device_map = {
        "model.image_tower": "cpu", "model.video_tower": "disk", "model.multi_modal_projector": "cpu",
        "model.language_model": "cpu", "lm_head": "cpu",
    }  # fmt: skip
    offloaded = VideoLlavaPruMergeForConditionalGeneration.from_pretrained(
        tmp_path / "model", device_map=device_map, offload_folder=str(tmp_path / "offload")
    )
    expected = model.generate(**mixed, max_new_tokens=3, do_sample=False)
    assert torch.equal(offloaded.generate(**mixed, max_new_tokens=3, do_sample=False), expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(models, mixed, dtype):
    half = copy.deepcopy(models["prumerge"]).to(dtype)
    inputs = {key: value.to(dtype) if value.is_floating_point() else value for key, value in mixed.items()}
    with torch.no_grad():
        out = half(**inputs)
    assert out.logits.dtype == dtype and torch.isfinite(out.logits).all()
    assert half.generate(**inputs, max_new_tokens=2, do_sample=False).shape[0] == 2


def test_peft_lora_trains_on_videos_and_merges(video_tester, mixed):
    assert_lora_trains_and_merges(video_tester.get_model(seed=1), mixed)
