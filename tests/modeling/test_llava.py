"""LlavaPruMergeConfig / LlavaPruMergeForConditionalGeneration on a tiny random-weight model."""

import copy

import pytest
import torch
import transformers
from transformers import LlavaConfig

from llava_prumerge import LlavaPruMergeConfig, LlavaPruMergeForConditionalGeneration
from llava_prumerge.modeling.runtime_compat import TRANSFORMERS_MAJOR
from llava_prumerge.testing.model_tester import LONG_PROMPT, PROMPT, kept_patches, make_image, stock_llava
from llava_prumerge.testing.model_tester import prepare_inputs as batch
from llava_prumerge.testing.tiny import tiny_config, tiny_model

# ---------------------------------------------------------------- config and loading


def test_config_carries_and_validates_reducer_fields():
    config = tiny_config(token_reduction="prumerge_plus", merge_k=8)
    assert config.model_type == "llava_prumerge"
    assert isinstance(config, LlavaConfig)
    assert (config.token_reduction, config.merge_k, config.iqr_scale) == ("prumerge_plus", 8, 1.5)
    with pytest.raises(ValueError, match="token_reduction"):
        tiny_config(token_reduction="tome")
    with pytest.raises(ValueError, match="merge_k"):
        tiny_config(merge_k=-1)
    with pytest.raises(ValueError, match="reduction_layer"):
        tiny_config(reduction_layer=7)


def test_overrides_at_load_time_are_validated_too(tmp_path):
    """from_pretrained sets keyword overrides after __init__; a bad one must not load (nor be saved back)."""
    tiny_config().save_pretrained(tmp_path)
    for field, value in [("token_reduction", "tome"), ("reduction_layer", 7), ("num_visual_tokens", 0)]:
        with pytest.raises(ValueError, match=field):
            LlavaPruMergeConfig.from_pretrained(tmp_path, **{field: value})
    config = LlavaPruMergeConfig.from_pretrained(
        tmp_path, token_reduction="prumerge_plus", reduction_layer=-2
    )
    assert (config.token_reduction, config.reduction_layer) == ("prumerge_plus", -2)


def test_layers_outside_the_vision_tower_are_errors_not_wrapped(model, processor, images):
    inputs = batch(processor, images[:1], [PROMPT])
    with pytest.raises(ValueError, match=r"vision_feature_layer \[4\] is outside"):
        model(**inputs, vision_feature_layer=4)  # the tiny tower has 3 layers: hidden states -4..3
    settings = model.config.reduction_settings.replace(reduction_layer=-4)
    with pytest.raises(ValueError, match="reduction_layer=-4 is outside the vision tower's 3 layers"):
        model(**inputs, reduction=settings)


def test_config_round_trips_through_json(tmp_path):
    config = tiny_config(token_reduction="prumerge_plus", adaptive=False, num_visual_tokens=64)
    config.save_pretrained(tmp_path)
    loaded = transformers.AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is LlavaPruMergeConfig
    assert (loaded.token_reduction, loaded.adaptive, loaded.num_visual_tokens) == ("prumerge_plus", False, 64)
    assert loaded.vision_config.hidden_size == config.vision_config.hidden_size


def test_stock_llava_checkpoint_turns_into_prumerge_in_one_call(tmp_path):
    stock = stock_llava(tiny_config())
    stock.save_pretrained(tmp_path)
    config = LlavaPruMergeConfig.from_llava_config(stock.config, token_reduction="prumerge_plus")
    assert config.token_reduction == "prumerge_plus" and config.architectures == [
        "LlavaPruMergeForConditionalGeneration"
    ]
    model, info = LlavaPruMergeForConditionalGeneration.from_pretrained(
        tmp_path, config=config, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    for name, tensor in stock.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, rtol=0, atol=0)
    model.load_state_dict(stock.state_dict(), strict=True)


def test_auto_classes_are_registered(tmp_path, model):
    model.save_pretrained(tmp_path)
    auto = transformers.AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert type(auto) is LlavaPruMergeForConditionalGeneration
    if TRANSFORMERS_MAJOR < 5:
        assert (
            type(transformers.AutoModelForVision2Seq.from_pretrained(tmp_path))
            is LlavaPruMergeForConditionalGeneration
        )
    base = transformers.AutoModel.from_config(model.config)
    assert type(base).__name__ == "LlavaPruMergeModel"


def test_none_matches_stock_llava_logits(processor, images):
    stock = stock_llava(tiny_config(), seed=3)
    prumerge = LlavaPruMergeForConditionalGeneration(tiny_config(token_reduction="none")).eval()
    prumerge.load_state_dict(stock.state_dict())
    inputs = batch(processor, images[:2], [PROMPT, LONG_PROMPT])
    with torch.no_grad():
        expected = stock(**inputs).logits
        actual = prumerge(**inputs)
    assert actual.logits.dtype == expected.dtype
    assert actual.logits.shape == expected.shape  # nothing is removed
    torch.testing.assert_close(actual.logits, expected)
    assert actual.visual_token_counts == [196, 196]


# ---------------------------------------------------------------- compaction in forward


def hand_built_batch(model, processor, images, texts, labels_from_text=True):
    """An independent assembly of the compacted batch: text embeddings around each image's tokens, right-padded."""
    inputs = batch(processor, images, texts)
    image_features = model.get_image_features(inputs["pixel_values"])
    image_features = image_features.pooler_output if TRANSFORMERS_MAJOR >= 5 else image_features
    embed = model.get_input_embeddings()
    rows, row_labels = [], []
    for sample, ids in enumerate(inputs["input_ids"]):
        ids = ids[inputs["attention_mask"][sample].bool()].tolist()
        first = ids.index(model.config.image_token_id)
        last = len(ids) - 1 - ids[::-1].index(model.config.image_token_id)
        before, after = torch.tensor(ids[:first]), torch.tensor(ids[last + 1 :])
        feats = image_features[sample]
        rows.append(torch.cat([embed(before), feats, embed(after)]))
        row_labels.append(torch.cat([before, torch.full((feats.shape[0],), -100), after]))
    length = max(r.shape[0] for r in rows)  # left-padded, as the processor padded the input
    embeds = torch.stack([torch.cat([r.new_zeros(length - r.shape[0], r.shape[1]), r]) for r in rows])
    mask = torch.stack([torch.arange(length) >= length - r.shape[0] for r in rows]).long()
    labels = torch.stack([torch.cat([torch.full((length - lab.shape[0],), -100), lab]) for lab in row_labels])
    return inputs, embeds, mask, labels


def test_forward_compacts_and_loss_equals_hand_built_batch(model, processor, images):
    texts = [PROMPT, LONG_PROMPT, PROMPT]
    with torch.no_grad():
        inputs, embeds, mask, labels = hand_built_batch(model, processor, images[1:4], texts)
        stock_labels = inputs["input_ids"].masked_fill(
            inputs["input_ids"] == model.config.image_token_id, -100
        )
        stock_labels = stock_labels.masked_fill(inputs["attention_mask"] == 0, -100)
        out = model(**inputs, labels=stock_labels)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        reference = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, labels=labels)
    assert len(set(out.visual_token_counts)) > 1
    placeholders = int((inputs["input_ids"][0] == model.config.image_token_id).sum())  # per row: one image
    # every text position stays (padding too, masked); the rows are padded again to the longest
    assert out.logits.shape[1] == inputs["input_ids"].shape[1] - placeholders + max(out.visual_token_counts)
    assert out.attention_mask.sum(1).tolist() == mask.sum(1).tolist()
    # the model's positions count from the first position, as stock's, the reference's from the first visible
    # token: rotary embeddings see the same offsets, up to rounding
    torch.testing.assert_close(out.loss, reference.loss, rtol=1e-4, atol=1e-4)
    for sample in range(3):  # same logits at every real position, whatever the padding side
        torch.testing.assert_close(
            out.logits[sample][out.attention_mask[sample].bool()], reference.logits[sample][mask[sample].bool()],
            rtol=1e-4, atol=1e-4,
        )  # fmt: skip


def test_forward_reports_counts_and_centers(model, processor, images):
    inputs = batch(processor, images[:2], [PROMPT, PROMPT])
    with torch.no_grad():
        out = model(**inputs)
        reduced = model.reduce_image_tokens(inputs["pixel_values"])
    assert out.visual_token_counts == reduced.num_tokens
    assert out.visual_token_centers.shape == (
        2,
        1,
        max(reduced.num_tokens) - 1,
    )  # [batch, images, kept patches]
    assert all(
        torch.equal(a, b)
        for a, b in zip(kept_patches(out.visual_token_centers), reduced.centers, strict=True)
    )
    if "image_outputs" in out.__dataclass_fields__:  # transformers >= 5.24: one tensor per image
        assert [len(f) for f in out.image_outputs.pooler_output] == reduced.num_tokens
    else:
        assert out.image_hidden_states.shape[0] == sum(reduced.num_tokens)


def test_prompts_with_reduced_or_single_image_tokens_give_the_same_logits(model, processor, images):
    inputs = batch(processor, images[:1], [PROMPT])
    image_id = model.config.image_token_id
    with torch.no_grad():
        count = model.reduce_image_tokens(inputs["pixel_values"]).num_tokens[0]
        expanded = model(**inputs)
        ids = inputs["input_ids"][0].tolist()
        text_before, text_after = ids[: ids.index(image_id)], ids[len(ids) - ids[::-1].index(image_id) :]
        for run in (count, 1):
            short = torch.tensor([text_before + [image_id] * run + text_after])
            out = model(input_ids=short, pixel_values=inputs["pixel_values"])
            torch.testing.assert_close(out.logits, expanded.logits)


def test_several_images_in_one_prompt_and_mixed_batches(model, processor, images):
    texts = [
        "USER: <image>\n<image>\nCompare the two pictures. ASSISTANT:",
        "USER: Tell me a joke. ASSISTANT:",
    ]
    inputs = batch(processor, images[:2], texts)
    with torch.no_grad():
        out = model(**inputs)
        reduced = model.reduce_image_tokens(inputs["pixel_values"])
    assert out.visual_token_counts == reduced.num_tokens
    text_only_length = int(inputs["attention_mask"][1].sum())
    assert int(out.attention_mask[1].sum()) == text_only_length
    assert int(out.attention_mask[0].sum()) == int(inputs["attention_mask"][0].sum()) - 2 * 196 + sum(
        reduced.num_tokens
    )


@pytest.mark.parametrize(
    "texts, num_images, message",
    [
        (["USER: <image>\n<image>\nTwo? ASSISTANT:"], 1, "2 run\\(s\\) of image tokens .* but 1 image"),
        (["USER: <image>\nOne? ASSISTANT:"], 2, "1 run\\(s\\) of image tokens .* but 2 image"),
    ],
)
def test_image_count_mismatch_is_a_clear_error(model, processor, images, texts, num_images, message):
    ids = processor.tokenizer(texts, return_tensors="pt")["input_ids"]
    pixel_values = processor.image_processor(images[:num_images], return_tensors="pt").pixel_values
    with pytest.raises(ValueError, match=message):
        model(input_ids=ids, pixel_values=pixel_values)
    with pytest.raises(ValueError, match=message):
        model.generate(input_ids=ids, pixel_values=pixel_values, max_new_tokens=2)


def test_bad_pixels_and_empty_batches_are_clear_errors(model, processor, images):
    inputs = batch(processor, images[:1], [PROMPT])
    with pytest.raises(ValueError, match="pixel_values must be"):
        model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"][:, :, :40, :40])
    with pytest.raises(ValueError, match="pixel_values must be"):
        model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"][:, :1])
    nan_pixels = inputs["pixel_values"].clone()
    nan_pixels[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model(input_ids=inputs["input_ids"], pixel_values=nan_pixels)
    with pytest.raises(ValueError, match="Empty batch"):
        model(input_ids=inputs["input_ids"][:0], pixel_values=inputs["pixel_values"])


# ---------------------------------------------------------------- generate


def greedy(model, processor, images, texts, **kwargs):
    inputs = batch(processor, images, texts)
    return model.generate(**inputs, max_new_tokens=6, do_sample=False, **kwargs), inputs


def test_generate_returns_the_prompt_as_passed_then_the_new_tokens(model, processor, images):
    sequences, inputs = greedy(model, processor, images[:2], [PROMPT, LONG_PROMPT])
    prompt_length = inputs["input_ids"].shape[1]
    assert torch.equal(sequences[:, :prompt_length], inputs["input_ids"])
    assert sequences.shape[1] == prompt_length + 6
    decoded = processor.batch_decode(sequences, skip_special_tokens=True)
    assert decoded[0].startswith("USER: \nWhat is shown in this image? ASSISTANT:")


def test_greedy_output_is_the_same_alone_and_in_a_left_padded_batch(model, processor, images):
    texts = [PROMPT, LONG_PROMPT, "USER: <image>\nColors? ASSISTANT:"]
    together, inputs = greedy(model, processor, images[1:4], texts)
    assert len(set(model.reduce_image_tokens(inputs["pixel_values"]).num_tokens)) > 1
    for sample in range(3):
        alone, _ = greedy(model, processor, images[1 + sample : 2 + sample], texts[sample : sample + 1])
        assert together[sample, -6:].tolist() == alone[0, -6:].tolist()


def test_generate_with_sampling_beams_and_several_returns(model, processor, images):
    inputs = batch(processor, images[:2], [PROMPT, LONG_PROMPT])
    torch.manual_seed(0)
    sampled = model.generate(**inputs, max_new_tokens=4, do_sample=True, top_k=20, num_return_sequences=3)
    assert sampled.shape[0] == 6
    beams = model.generate(**inputs, max_new_tokens=4, num_beams=3, num_return_sequences=2, do_sample=False)
    assert beams.shape[0] == 4
    best = model.generate(**inputs, max_new_tokens=4, num_beams=3, do_sample=False)
    assert torch.equal(beams[::2], best)


def test_generate_streams_and_stops_on_strings(model, processor, tokenizer, images):
    inputs = batch(processor, images[:1], [PROMPT])
    streamer = transformers.TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    sequences = model.generate(**inputs, max_new_tokens=6, do_sample=False, streamer=streamer)
    streamed = "".join(streamer)
    new_text = tokenizer.decode(sequences[0, -6:], skip_special_tokens=True)
    assert streamed == new_text
    pieces = [tokenizer.decode([token]) for token in sequences[0, -6:-1].tolist()]
    position, stop = next((i, p) for i, p in enumerate(pieces) if p.isascii() and p.strip())  # a clean token
    stopped = model.generate(
        **inputs, max_new_tokens=6, do_sample=False, stop_strings=[stop], tokenizer=tokenizer
    )
    assert stopped.shape[1] <= sequences.shape[1] - 6 + position + 1
    assert torch.equal(stopped[0], sequences[0, : stopped.shape[1]])


def test_generate_text_only_and_mixed_batches(model, processor, tokenizer, images):
    text = tokenizer(["USER: Hello there. ASSISTANT:"], return_tensors="pt")
    plain = model.generate(**text, max_new_tokens=4, do_sample=False)
    assert plain.shape == (1, text["input_ids"].shape[1] + 4)
    mixed = batch(processor, images[:1], [PROMPT, "USER: Hello there. ASSISTANT:"])
    out = model.generate(**mixed, max_new_tokens=4, do_sample=False)
    assert out[1, -4:].tolist() == plain[0, -4:].tolist()


# ---------------------------------------------------------------- pipelines


def test_image_text_to_text_pipeline_single_batched_and_chat(model, processor, images):
    task = "image-text-to-text"
    pipe = transformers.pipeline(task, model=model, processor=processor)
    single = pipe(images=images[0], text=PROMPT, max_new_tokens=5)
    assert isinstance(single[0]["generated_text"], str)
    batched = pipe(images=images[:2], text=[PROMPT, LONG_PROMPT], max_new_tokens=5)
    assert len(batched) == 2
    chat = [
        {
            "role": "user",
            "content": [{"type": "image", "image": images[1]}, {"type": "text", "text": "What is it?"}],
        }
    ]
    answer = pipe(text=chat, max_new_tokens=5)
    assert answer[0]["generated_text"][-1]["role"] == "assistant"
    alone = model.generate(**batch(processor, images[:1], [PROMPT]), max_new_tokens=5, do_sample=False)
    new_only = pipe(images=images[0], text=PROMPT, max_new_tokens=5, return_full_text=False)
    assert new_only[0]["generated_text"] == processor.decode(alone[0, -5:], skip_special_tokens=True)


@pytest.mark.skipif(
    TRANSFORMERS_MAJOR >= 5, reason="pipeline('image-to-text') exists in transformers 4.x only"
)
def test_image_to_text_pipeline(model, processor, images):
    pipe = transformers.pipeline(
        "image-to-text", model=model, tokenizer=processor.tokenizer, image_processor=processor.image_processor
    )
    out = pipe(images[0], prompt=PROMPT, generate_kwargs={"max_new_tokens": 5})
    assert isinstance(out[0]["generated_text"], str) and "What is shown" in out[0]["generated_text"]
    both = pipe(images[:2], prompt=PROMPT, generate_kwargs={"max_new_tokens": 5})
    assert len(both) == 2


# ---------------------------------------------------------------- ecosystem


def test_no_split_modules_keep_vision_and_decoder_layers_whole(model):
    no_split = set(model._no_split_modules)
    assert {"CLIPEncoderLayer", "LlamaDecoderLayer", "CLIPVisionEmbeddings"} <= no_split


@pytest.mark.parametrize(
    "device_map",
    [
        "auto",
        {
            "model.vision_tower": "disk",
            "model.multi_modal_projector": "cpu",
            "model.language_model": "cpu",
            "lm_head": "cpu",
        },
        {
            "model.vision_tower": "cpu",
            "model.multi_modal_projector": "cpu",
            "model.language_model": "disk",
            "lm_head": "disk",
        },
    ],
    ids=["auto-small-max-memory", "vision-on-disk", "llm-on-disk"],
)
def test_accelerate_device_maps_with_disk_offload(tmp_path, model, processor, images, device_map):
    model.save_pretrained(tmp_path / "model")
    kwargs = {"max_memory": {"cpu": 250_000}} if device_map == "auto" else {}  # about half of the model
    offloaded = LlavaPruMergeForConditionalGeneration.from_pretrained(
        tmp_path / "model", device_map=device_map, offload_folder=str(tmp_path / "offload"), **kwargs
    )
    assert {"cpu", "disk"} <= set(offloaded.hf_device_map.values())
    inputs = batch(processor, images[:2], [PROMPT, LONG_PROMPT])
    expected = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert torch.equal(offloaded.generate(**inputs, max_new_tokens=4, do_sample=False), expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(model, processor, images, dtype):
    half = copy.deepcopy(model).to(dtype)
    inputs = batch(processor, images[:2], [PROMPT, LONG_PROMPT])
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    with torch.no_grad():
        out = half(**inputs)
        full = model(**inputs)
    assert out.logits.dtype == dtype
    assert torch.isfinite(out.logits).all()
    assert out.logits.shape[0] == 2 and sum(out.visual_token_counts) > 0
    sequences = half.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert sequences.shape[0] == 2
    assert full.logits.shape[-1] == out.logits.shape[-1]


def test_eager_and_sdpa_attention_agree(tmp_path, model, processor, images):
    model.save_pretrained(tmp_path)
    inputs = batch(processor, images[:2], [PROMPT, LONG_PROMPT])
    logits = {}
    for implementation in ("eager", "sdpa"):
        loaded = LlavaPruMergeForConditionalGeneration.from_pretrained(
            tmp_path, attn_implementation=implementation
        )
        assert loaded.config.text_config._attn_implementation == implementation
        with torch.no_grad():
            out = loaded(**inputs)
        logits[implementation] = out.logits[out.attention_mask.bool()]  # padding rows are undefined
    torch.testing.assert_close(logits["eager"], logits["sdpa"], rtol=1e-4, atol=1e-4)


def test_gradient_checkpointing_gives_the_same_gradients(processor, images):
    inputs = batch(processor, images[:2], [PROMPT, LONG_PROMPT])
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    grads = []
    for checkpointing in (False, True):
        model = tiny_model().train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model(**inputs, labels=labels).loss.backward()
        grads.append(model.model.multi_modal_projector.linear_1.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_torch_compile_of_the_language_model(model, processor, images):
    compiled = copy.deepcopy(model)
    compiled.model.language_model.forward = torch.compile(
        compiled.model.language_model.forward, backend="aot_eager"
    )
    inputs = batch(processor, images[:2], [PROMPT, LONG_PROMPT])
    with torch.no_grad():
        torch.testing.assert_close(compiled(**inputs).logits, model(**inputs).logits)


def test_peft_lora_trains_with_the_reducer_active_and_merges(processor, images):
    peft = pytest.importorskip("peft")
    model = tiny_model(seed=1)
    lora = peft.LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0,
        target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
    )  # fmt: skip
    peft_model = peft.get_peft_model(model, lora)
    assert any("language_model" in n for n, p in peft_model.named_parameters() if p.requires_grad)
    assert not any("vision_tower" in n for n, p in peft_model.named_parameters() if p.requires_grad)
    inputs = batch(processor, images[:2], [PROMPT + " A cat.", LONG_PROMPT + " A dog."])
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    peft_model.train()
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        out = peft_model(**inputs, labels=labels)
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert out.visual_token_counts is not None and sum(out.visual_token_counts) < 2 * 196
    assert losses[-1] < losses[0] * 0.9, losses  # the frozen random lm_head limits how far it can go
    peft_model.eval()
    with torch.no_grad():
        adapter_logits = peft_model(**inputs).logits
        merged = peft_model.merge_and_unload()
        assert type(merged) is LlavaPruMergeForConditionalGeneration
        torch.testing.assert_close(merged(**inputs).logits, adapter_logits, rtol=1e-4, atol=1e-4)


def test_images_of_other_sizes_are_padded_to_square(processor):
    wide = make_image(9, width=90, height=40)
    pixel_values = processor.image_processor(wide, return_tensors="pt").pixel_values
    assert tuple(pixel_values.shape) == (1, 3, 56, 56)
