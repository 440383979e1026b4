"""Qwen2.5-VL and Qwen2-VL with PruMerge: merged tokens of native-resolution images and video frame groups,
scored without [CLS], reduced, each kept token at the 3-D rotary position stock gives its place.

The tiny models (testing/tiny_qwen.py) see images of 16 to 64 px in 4 px patches merged 2 x 2, and videos
given by their grid (random pixels: the video processor needs torchvision).
"""

import pytest
import torch
import transformers

from llava_prumerge.errors import ReductionSettingsError, VisualInputError
from llava_prumerge.modeling.compaction import placeholder_runs
from llava_prumerge.modeling.runtime_compat import image_text_auto_classes
from llava_prumerge.testing.model_tester import assert_lora_trains_and_merges, make_image, stock_twin
from llava_prumerge.testing.tiny_qwen import (
    QWEN_TOKENS,
    tiny_qwen_image_processor,
    tiny_qwen_inputs,
    tiny_qwen_model,
    tiny_qwen_tokenizer,
)

ARCHS = ["qwen2.5-vl", "qwen2-vl"]
VARIANTS = ["none", "prumerge", "prumerge_plus"]
TEXTS = [
    "USER: <image>\nWhat is it? ASSISTANT:",
    "USER: <image> and <image>\nWhich is brighter? ASSISTANT:",
    "USER: <video>\nWhat happens? ASSISTANT:",
    "USER: <image> then <video>\nWhich came first? ASSISTANT:",
]
VIDEO_GRIDS = {2: [[2, 6, 8]], 3: [[1, 4, 4]]}  # (frame groups, rows, columns) of patches


@pytest.fixture(scope="module")
def parts():
    return tiny_qwen_tokenizer(), tiny_qwen_image_processor()


def inputs_of(parts, samples, seed: int = 0):
    """The prompts of TEXTS (by index) with images of different sizes and videos, as one batch."""
    tokenizer, image_processor = parts
    images = {0: [make_image(seed + 1, 60, 40)], 1: [make_image(seed + 2, 30, 50), make_image(seed + 3, 64, 64)],
              2: [], 3: [make_image(seed + 4, 40, 40)]}  # fmt: skip
    return tiny_qwen_inputs(
        tokenizer, image_processor, [TEXTS[s] for s in samples], [images[s] for s in samples],
        [VIDEO_GRIDS.get(s, []) for s in samples], seed,
    )  # fmt: skip


@pytest.fixture(scope="module")
def batch(parts):
    return inputs_of(parts, [0, 1, 2, 3])


@pytest.fixture(scope="module", params=ARCHS)
def models(request, parts):
    return {
        variant: tiny_qwen_model(request.param, seed=3, tokenizer=parts[0], token_reduction=variant)
        for variant in VARIANTS
    }


def vision_token_ids(tokenizer) -> list[int]:
    return tokenizer.convert_tokens_to_ids(QWEN_TOKENS)


def test_none_equals_stock_logits_and_generation(models, batch):
    stock = stock_twin(models["none"].config, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(
            models["none"](**batch).logits, stock(**batch).logits, rtol=1e-5, atol=1e-5
        )
    ours = models["none"].generate(**batch, max_new_tokens=4, do_sample=False)
    assert torch.equal(ours, stock.generate(**batch, max_new_tokens=4, do_sample=False))


def test_none_equals_stock_with_the_time_between_a_videos_frame_groups(models, batch):
    """Qwen2.5-VL places a video's frame groups in time by `second_per_grid_ts` (its processor's); read as stock
    reads it, so it moves the logits."""
    if "Qwen2_5" not in type(models["none"]).__name__:
        pytest.skip("Qwen2-VL's positions count frame groups, with no time between them")
    timed = {**batch, "second_per_grid_ts": torch.tensor([2.0, 0.5])}  # the batch's two videos
    stock = stock_twin(models["none"].config, seed=3)
    with torch.no_grad():
        ours = models["none"](**timed).logits
        torch.testing.assert_close(ours, stock(**timed).logits, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(ours, models["none"](**batch).logits)
        assert models["prumerge"](**timed).logits.isfinite().all()


@pytest.mark.parametrize("variant", ["prumerge", "prumerge_plus"])
def test_kept_tokens_sit_at_the_positions_stock_gives_their_places(models, batch, variant):
    """Every kept token's 3-D position is stock's at its place in the grid (a summary token: its sequence's
    last place), and text keeps its stock positions; the forward reports the positions it used."""
    model = models[variant].model
    stock = model.prompt_positions(batch["input_ids"], None, batch["attention_mask"], None, None, batch)
    names = ("pixel_values", "pixel_values_videos", "image_grid_thw", "video_grid_thw")
    visual = model.visual_tokens(**{name: batch[name] for name in names})
    compact = model.compact_inputs(batch["input_ids"], batch["attention_mask"], None, stock, visual=visual)
    with torch.no_grad():
        assert torch.equal(model(**batch).position_ids, compact.position_ids)
    places = {tokens.modality: tokens.places for tokens in visual}
    vision_ids = torch.tensor([model.config.image_token_id, model.config.video_token_id])
    runs = placeholder_runs(torch.isin(compact.input_ids, vision_ids) & compact.attention_mask.bool())
    for sample, spans in enumerate(compact.spans):
        assert len(runs[sample]) == len(spans)
        for (start, length), span in zip(runs[sample], spans, strict=True):
            expected = stock[:, sample, span.start + places[span.modality][span.item]]
            assert torch.equal(compact.position_ids[:, sample, start : start + length], expected)
        text = batch["attention_mask"][sample].bool() & ~torch.isin(batch["input_ids"][sample], vision_ids)
        compacted_text = compact.attention_mask[sample].bool() & ~torch.isin(
            compact.input_ids[sample], vision_ids
        )
        assert torch.equal(compact.position_ids[:, sample, compacted_text], stock[:, sample, text])


@pytest.mark.parametrize("variant", ["prumerge", "prumerge_plus"])
def test_generation_continues_at_stocks_positions(models, parts, batch, variant):
    """What generate decodes equals, token by token, what a forward of the prompt and the generated tokens
    predicts: decoding continues where stock's positions would."""
    model = models[variant]
    banned = [*vision_token_ids(parts[0]), model.config.text_config.eos_token_id]  # four tokens in every row
    sequences = model.generate(**batch, max_new_tokens=4, do_sample=False, suppress_tokens=banned)
    new = sequences[:, batch["input_ids"].shape[1] :]
    extended = {**batch, "input_ids": sequences,
                "attention_mask": torch.cat([batch["attention_mask"], torch.ones_like(new)], 1)}  # fmt: skip
    if "mm_token_type_ids" in batch:  # transformers 5
        extended["mm_token_type_ids"] = torch.cat(
            [batch["mm_token_type_ids"], torch.zeros_like(new).int()], 1
        )
    with torch.no_grad():
        logits = model(**extended).logits[:, -5:-1]
    logits[..., banned] = float("-inf")
    assert torch.equal(logits.argmax(-1), new)


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_batch_generates_what_each_sample_generates_alone(models, parts, batch, variant):
    model = models[variant]
    sequences = model.generate(**batch, max_new_tokens=4, do_sample=False)
    for row in range(4):
        alone = inputs_of(parts, [row])
        expected = model.generate(**alone, max_new_tokens=4, do_sample=False)[
            0, alone["input_ids"].shape[1] :
        ]
        generated = sequences[row, batch["input_ids"].shape[1] :]  # padded past its end of sequence
        assert generated[: len(expected)].tolist() == expected.tolist(), row


def test_fixed_budgets_are_exact_and_larger_ones_are_refused(models, parts, batch):
    arch = "qwen2.5-vl" if "Qwen2_5" in type(models["none"]).__name__ else "qwen2-vl"
    model = tiny_qwen_model(arch, seed=3, tokenizer=parts[0], token_reduction="prumerge_plus", adaptive=False,
                            num_visual_tokens=6, num_video_tokens=4)  # fmt: skip
    with torch.no_grad():
        out = model(**batch)
    assert out.visual_token_counts == [6] * 4 and out.video_token_counts == [4, 4]  # 2 frame groups: 2 + 2
    too_large = tiny_qwen_model(arch, tokenizer=parts[0], adaptive=False, num_visual_tokens=30)
    with pytest.raises(
        ReductionSettingsError, match="A budget of 30 tokens exceeds the 24 merged tokens of an image"
    ):
        too_large(**batch)


def with_image_runs_of(batch, config, length: int):
    """The batch with every run of image placeholders cut to `length` (a fixed-budget processor's prompt, or one
    placeholder per image), re-padded on the left as the tokenizer pads."""
    rows = []
    for ids, mask in zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist(), strict=True):
        row, run = [], 0
        for token, visible in zip(ids, mask, strict=True):
            run = run + 1 if token == config.image_token_id else 0
            if visible and run <= length:
                row.append(token)
        rows.append(row)
    width = max(map(len, rows))
    pad = config.text_config.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(row)) + row for row in rows])
    narrowed = {**batch, "input_ids": input_ids,
                "attention_mask": torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])}  # fmt: skip
    if "mm_token_type_ids" in batch:  # transformers 5's processors derive it from the ids
        narrowed["mm_token_type_ids"] = (input_ids == config.image_token_id).int() + 2 * (
            input_ids == config.video_token_id
        ).int()
    return narrowed


@pytest.mark.parametrize("length", [6, 1], ids=["budget", "one-per-image"])
def test_a_prompt_with_the_budgets_placeholders_reads_as_the_stock_expansion(models, parts, batch, length):
    """A fixed-budget processor writes the budget per image (and a prompt may hold one placeholder per image):
    the model widens each run to stock's to place it, so logits and generation equal the expanded prompt's."""
    arch = "qwen2.5-vl" if "Qwen2_5" in type(models["none"]).__name__ else "qwen2-vl"
    model = tiny_qwen_model(arch, seed=3, tokenizer=parts[0], token_reduction="prumerge_plus", adaptive=False,
                            num_visual_tokens=6, num_video_tokens=4)  # fmt: skip
    short = with_image_runs_of(batch, model.config, length)
    assert short["input_ids"].shape[1] < batch["input_ids"].shape[1]
    with torch.no_grad():
        expected, given = model(**batch), model(**short)
    for row in range(4):  # the same compacted prompts, behind different padding
        seen = [outputs.attention_mask[row].bool() for outputs in (given, expected)]
        torch.testing.assert_close(given.logits[row, seen[0]], expected.logits[row, seen[1]])  # positions too
    options = {"max_new_tokens": 4, "do_sample": False}
    new = batch["input_ids"].shape[1], short["input_ids"].shape[1]
    assert torch.equal(
        model.generate(**short, **options)[:, new[1] :], model.generate(**batch, **options)[:, new[0] :]
    )


def test_the_score_is_the_stand_in_and_the_cls_row_is_refused(models, parts, batch):
    arch = "qwen2.5-vl" if "Qwen2_5" in type(models["none"]).__name__ else "qwen2-vl"
    kept = {}
    for importance in ("auto", "mean_attention"):
        model = tiny_qwen_model(arch, seed=3, tokenizer=parts[0], importance=importance)
        with torch.no_grad():
            kept[importance] = model(**batch).visual_token_centers
    assert torch.equal(kept["auto"], kept["mean_attention"])
    with pytest.raises(ReductionSettingsError, match="importance='cls'"):
        tiny_qwen_model(arch, tokenizer=parts[0], importance="cls")(**batch)


@pytest.mark.parametrize(
    "change, message",
    [
        ("grid of another batch", r"pixel_values holds \(\d+, 96\) but its grid_thw"),
        ("grid missing", "pixel_values needs its grid_thw"),
        (
            "placeholders of another image",
            "image number 1 has 39 `<image>` tokens, but the image given expands to 40",
        ),
    ],
)
def test_bad_inputs_are_clear_errors(models, batch, change, message):
    inputs = dict(batch)
    if change == "grid of another batch":
        inputs["image_grid_thw"] = inputs["image_grid_thw"][:2]
    elif change == "grid missing":
        inputs.pop("image_grid_thw")
    else:
        image_id = models["prumerge"].config.image_token_id
        first = int((inputs["input_ids"][0] == image_id).nonzero()[0])
        inputs["input_ids"] = inputs["input_ids"].clone()
        inputs["input_ids"][0, first] = 5  # one placeholder fewer than the image's merged tokens
    with pytest.raises(VisualInputError, match=message):
        models["prumerge"](**inputs)


def test_auto_classes_save_and_load(tmp_path, models, batch):
    model = models["prumerge_plus"]
    model.save_pretrained(tmp_path)
    assert type(transformers.AutoConfig.from_pretrained(tmp_path)) is type(model.config)
    for auto_class in image_text_auto_classes():
        loaded = auto_class.from_pretrained(tmp_path)
        assert type(loaded) is type(model)
        with torch.no_grad():
            torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits)


def test_peft_lora_trains_on_images_and_videos_and_merges(models, batch):
    arch = "qwen2.5-vl" if "Qwen2_5" in type(models["none"]).__name__ else "qwen2-vl"
    assert_lora_trains_and_merges(tiny_qwen_model(arch, seed=1, tokenizer=tiny_qwen_tokenizer()), batch)
