"""A drop-in for stock LLaVA: code written for `LlavaForConditionalGeneration` works unchanged.

With token_reduction="none" the model's outputs equal stock LLaVA's (same weights) in every idiom
below; with PruMerge or PruMerge+ the same idioms work, only the compacted prompt is shorter.
"""

import inspect
import typing

import pytest
import torch
import transformers
from transformers import DynamicCache, LlamaForCausalLM, StaticCache, TextIteratorStreamer
from transformers.generation import GenerationMixin
from transformers.utils import logging

from llava_prumerge.errors import VisualInputError
from llava_prumerge.modeling.runtime_compat import (
    CACHE_ARGUMENT,
    GENERATE_TAKES_ENCODER_OUTPUTS,
    IMAGE_FEATURES_AS_OUTPUT,
    TRANSFORMERS_MAJOR,
)
from llava_prumerge.testing.model_tester import LONG_PROMPT, PROMPT

VARIANTS = ["none", "prumerge", "prumerge_plus"]
NEW_TOKENS = 5


@pytest.fixture(scope="module")
def models(tester):
    return {variant: tester.get_model(seed=3, token_reduction=variant) for variant in VARIANTS}


@pytest.fixture(scope="module")
def stock(tester):
    return tester.get_stock_model(seed=3)


@pytest.fixture(scope="module")
def batch(tester):
    """Two prompts of different lengths, left-padded, one image each."""
    return tester.prepare_inputs(tester.images(2, first_seed=1), [PROMPT, LONG_PROMPT])


GENERATION_MODES = {
    "greedy": {"do_sample": False},
    "beams": {"do_sample": False, "num_beams": 3, "num_return_sequences": 2},
    "sampling": {"do_sample": True, "top_k": 20, "num_return_sequences": 2},
    "dict output": {"do_sample": False, "return_dict_in_generate": True, "output_scores": True},
}


def generated(model, batch, **kwargs):
    torch.manual_seed(0)
    output = model.generate(**batch, **kwargs)
    return output if isinstance(output, torch.Tensor) else output.sequences


@pytest.mark.parametrize("mode", list(GENERATION_MODES))
@pytest.mark.parametrize("variant", VARIANTS)
def test_generate_returns_the_prompt_as_passed_then_the_new_tokens(models, stock, batch, variant, mode):
    kwargs = {"max_new_tokens": NEW_TOKENS, **GENERATION_MODES[mode]}
    sequences = generated(models[variant], batch, **kwargs)
    rows = sequences.shape[0] // batch["input_ids"].shape[0]
    prompt_length = batch["input_ids"].shape[1]
    assert sequences.shape[1] == prompt_length + NEW_TOKENS
    assert torch.equal(sequences[:, :prompt_length], batch["input_ids"].repeat_interleave(rows, dim=0))
    new_tokens = sequences[:, batch["input_ids"].shape[1] :]  # the model cards' slicing idiom
    assert new_tokens.shape[1] == NEW_TOKENS
    if variant == "none":
        assert torch.equal(sequences, generated(stock, batch, **kwargs))


@pytest.mark.parametrize("variant", VARIANTS)
def test_max_length_and_min_length_count_the_prompt_as_passed(models, stock, batch, variant):
    prompt_length = batch["input_ids"].shape[1]
    kwargs = {"do_sample": False, "max_length": prompt_length + 4, "min_length": prompt_length + 4}
    sequences = generated(models[variant], batch, **kwargs)
    assert sequences.shape[1] == prompt_length + 4
    eos = models[variant].generation_config.eos_token_id
    assert not (sequences[:, prompt_length:] == eos).any(), "min_length holds the end of sequence back"
    if variant == "none":
        assert torch.equal(sequences, generated(stock, batch, **kwargs))


@pytest.mark.parametrize("variant", VARIANTS)
def test_streaming_sees_the_prompt_as_passed(models, stock, batch, tester, variant):
    one = {key: value[:1] for key, value in batch.items()}
    one["attention_mask"] = one["attention_mask"][:, one["attention_mask"][0].bool()]
    one["input_ids"] = one["input_ids"][:, -one["attention_mask"].shape[1] :]
    streamer = TextIteratorStreamer(tester.tokenizer, skip_special_tokens=True)
    sequences = models[variant].generate(**one, max_new_tokens=NEW_TOKENS, do_sample=False, streamer=streamer)
    assert "".join(streamer) == tester.tokenizer.decode(sequences[0], skip_special_tokens=True)
    if variant == "none":
        stock_streamer = TextIteratorStreamer(tester.tokenizer, skip_special_tokens=True)
        stock.generate(**one, max_new_tokens=NEW_TOKENS, do_sample=False, streamer=stock_streamer)
        assert "".join(stock_streamer) == tester.tokenizer.decode(sequences[0], skip_special_tokens=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_returns_tuples_on_request(models, batch, variant):
    model = models[variant]
    with torch.no_grad():
        as_dict = model(**batch)
        as_tuple = model(**batch, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], as_dict.logits)
    assert len(as_tuple) == len(as_dict.to_tuple())


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_prompt_given_as_embeddings_works_with_pixel_values(models, batch, variant):
    model = models[variant]
    embeds = model.get_input_embeddings()(batch["input_ids"])
    with torch.no_grad():
        from_ids = model(**batch)
        from_embeds = model(
            inputs_embeds=embeds, pixel_values=batch["pixel_values"], attention_mask=batch["attention_mask"]
        )
    assert from_embeds.visual_token_counts == from_ids.visual_token_counts
    torch.testing.assert_close(from_embeds.logits, from_ids.logits)
    expected = model.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=False)
    both = model.generate(**batch, inputs_embeds=embeds, max_new_tokens=NEW_TOKENS, do_sample=False)
    assert torch.equal(both, expected)
    embeds_only = model.generate(
        inputs_embeds=embeds,
        pixel_values=batch["pixel_values"],
        attention_mask=batch["attention_mask"],
        max_new_tokens=NEW_TOKENS,
        do_sample=False,
    )
    assert torch.equal(
        embeds_only, expected[:, batch["input_ids"].shape[1] :]
    )  # as stock: the new tokens only


def test_placeholders_without_images_are_ordinary_tokens_as_in_stock(models, stock, batch, caplog):
    text_only = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        torch.testing.assert_close(models["none"](**text_only).logits, stock(**text_only).logits)
    logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"):
            sequences = models["prumerge"].generate(**text_only, max_new_tokens=2, do_sample=False)
    finally:
        logging.disable_propagation()
    assert sequences.shape[1] == batch["input_ids"].shape[1] + 2
    assert "holds `<image>` tokens but no pixel_values were given" in caplog.text


@pytest.mark.parametrize("variant", VARIANTS)
def test_get_image_features_is_stocks_with_the_reduced_tokens(tester, batch, variant):
    model = tester.get_model(seed=3, token_reduction=variant)
    model.set_attn_implementation("eager")  # sdpa returns no attention weights, for stock as for ours
    pixel_values = batch["pixel_values"]
    with torch.no_grad():
        expected = model.model.visual_tokens(pixel_values)[0]
        features = model.get_image_features(pixel_values)
        full = model.get_image_features(pixel_values, output_hidden_states=True, output_attentions=True)
    vision = model.config.vision_config
    if not IMAGE_FEATURES_AS_OUTPUT:  # transformers 4.x: the per-image list, as stock 4.x
        assert [f.shape for f in features] == [f.shape for f in expected.features]
        return
    assert [f.shape[0] for f in features.pooler_output] == expected.counts
    for ours, reference in zip(features.pooler_output, expected.features, strict=True):
        torch.testing.assert_close(ours, reference)
    assert all(
        torch.equal(a, b) for a, b in zip(features.visual_token_centers, expected.centers, strict=True)
    )
    patches = (vision.image_size // vision.patch_size) ** 2
    assert features.last_hidden_state.shape == (2, patches + 1, vision.hidden_size)
    assert features.hidden_states is None
    assert len(full.hidden_states) == vision.num_hidden_layers + 1
    assert len(full.attentions) == vision.num_hidden_layers


@pytest.mark.parametrize("variant", VARIANTS)
def test_decode_steps_compile_without_graph_breaks(models, batch, variant):
    """After the (compacting) prefill, a decode step is the language model alone: fullgraph compiles."""
    model = models[variant]
    one = {key: value[:1] for key, value in batch.items()}
    expected = model.generate(**one, max_new_tokens=NEW_TOKENS, do_sample=False)[0, -NEW_TOKENS:].tolist()
    torch._dynamo.reset()
    decode = torch.compile(model.forward, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        prefill = model(**one, use_cache=False)
        length = prefill.attention_mask.shape[1]
        cache = StaticCache(config=model.config.text_config, max_cache_len=length + NEW_TOKENS)
        prefill = model(**one, **{CACHE_ARGUMENT: cache}, use_cache=True)
        tokens = [int(prefill.logits[0, -1].argmax())]
        for step in range(NEW_TOKENS - 1):
            position = torch.tensor([[length + step]])
            mask = torch.nn.functional.pad(
                prefill.attention_mask, (0, step + 1), value=1
            )  # the padding stays hidden
            # transformers 4.x's generate hands decode steps their cache position (5.x reads it off the cache)
            positions = {"cache_position": position[0]} if TRANSFORMERS_MAJOR < 5 else {}
            output = decode(
                input_ids=torch.tensor([[tokens[-1]]]), attention_mask=mask, position_ids=position,
                **{CACHE_ARGUMENT: cache}, use_cache=True, **positions,
            )  # fmt: skip
            tokens.append(int(output.logits[0, -1].argmax()))
    assert tokens == expected


def test_the_signature_is_the_one_transformers_reads(models):
    model = models["prumerge"]
    for forward in (model.forward, model.model.forward):
        parameters = inspect.signature(forward).parameters
        assert CACHE_ARGUMENT in parameters  # "cache" from transformers 5.24, "past_key_values" before
        unpacked = typing.get_args(parameters["kwargs"].annotation)[0]
        assert "output_attentions" in unpacked.__annotations__  # what transformers reads to test attentions
    assert GenerationMixin in type(model).__bases__


def test_the_kv_cache_is_taken_under_either_name(models, batch):
    model = models["prumerge"]
    with torch.no_grad():
        expected = model(**batch, use_cache=True).logits
        for name in ("cache", "past_key_values"):
            out = model(**batch, use_cache=True, **{name: DynamicCache()})
            torch.testing.assert_close(out.logits, expected)


def test_padding_follows_the_input_and_is_left_without_padding(models, tester):
    model = models["prumerge"]
    images = tester.images(2, first_seed=1)
    unpadded = tester.prepare_inputs(images, [PROMPT, PROMPT])
    with torch.no_grad():
        out = model(**unpadded)
        alone = [model(**tester.prepare_inputs(images[i : i + 1], [PROMPT])).logits[0, -1] for i in range(2)]
    assert out.visual_token_counts[0] != out.visual_token_counts[1]  # so the compacted rows need padding
    assert (out.attention_mask[:, -1] == 1).all()
    for row in range(2):
        torch.testing.assert_close(out.logits[row, -1], alone[row], rtol=1e-4, atol=1e-4)
    tester.tokenizer.padding_side = "right"
    try:
        right = tester.prepare_inputs(images, [PROMPT, LONG_PROMPT])
    finally:
        tester.tokenizer.padding_side = "left"
    with torch.no_grad():
        out = model(**right)
    assert (out.attention_mask[:, 0] == 1).all() and (out.attention_mask[:, -1] == 0).any()


@pytest.mark.parametrize("variant", VARIANTS)
def test_missing_weights_are_initialized_as_the_stock_classes_do(tester, variant):
    config = tester.get_config(token_reduction=variant)
    model_class = type(tester.get_model())
    original = transformers.PreTrainedModel._initialize_weights

    def seeded(*args, **kwargs):
        torch.manual_seed(42)
        return original(*args, **kwargs)

    transformers.PreTrainedModel._initialize_weights = seeded
    try:
        from_init = model_class(config)
        from_nothing = model_class.from_pretrained(None, config=config, state_dict={})
    finally:
        transformers.PreTrainedModel._initialize_weights = original
    expected = from_init.state_dict()
    assert [
        name for name, tensor in from_nothing.state_dict().items() if not torch.equal(tensor, expected[name])
    ] == []


@pytest.mark.parametrize("variant", VARIANTS)
def test_assisted_and_prompt_lookup_decoding(models, batch, tester, variant):
    model = models[variant]
    one = {key: value[:1] for key, value in batch.items()}
    text = tester.tokenizer(["USER: Say something about the sea. ASSISTANT:"], return_tensors="pt")
    assistant = LlamaForCausalLM(model.config.text_config).eval()
    for inputs in (text, one) if GENERATE_TAKES_ENCODER_OUTPUTS else (text,):
        expected = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
        assisted = model.generate(
            **inputs, max_new_tokens=NEW_TOKENS, do_sample=False, assistant_model=assistant
        )
        assert torch.equal(assisted, expected)  # greedy assisted decoding is greedy decoding
    looked_up = model.generate(**text, max_new_tokens=NEW_TOKENS, do_sample=False, prompt_lookup_num_tokens=2)
    assert torch.equal(looked_up, model.generate(**text, max_new_tokens=NEW_TOKENS, do_sample=False))
    if not GENERATE_TAKES_ENCODER_OUTPUTS:  # transformers 4.x: stock LLaVA refuses these with images too
        with pytest.raises(VisualInputError, match="need transformers >= 5"):
            model.generate(**one, max_new_tokens=NEW_TOKENS, assistant_model=assistant)


def test_images_with_a_filled_cache_are_refused_and_text_continues(models, batch, tester):
    model = models["prumerge"]
    one = {key: value[:1] for key, value in batch.items()}
    first = model.generate(**one, max_new_tokens=2, do_sample=False, return_dict_in_generate=True)
    cache = getattr(first, "cache", None) or first.past_key_values
    with pytest.raises(VisualInputError, match="non-empty KV cache"):
        model.generate(**one, **{CACHE_ARGUMENT: cache}, max_new_tokens=2)
    # Continuing a conversation with a new image: pass the whole conversation and its images again.
    turn = (
        tester.tokenizer.decode(first.sequences[0], skip_special_tokens=False)
        + "</s>USER: <image>\nAnd this? ASSISTANT:"
    )
    images = tester.images(2, first_seed=1)
    follow_up = tester.prepare_inputs(images, [turn.replace("<image>" * 196, "<image>")])
    sequences = model.generate(**follow_up, max_new_tokens=2, do_sample=False)
    assert sequences.shape[1] == follow_up["input_ids"].shape[1] + 2


def cache_of(output):
    """The cache `generate` returned (the field is `cache` from transformers 5.24, `past_key_values` before)."""
    return getattr(output, CACHE_ARGUMENT)


@pytest.mark.parametrize("variant", VARIANTS)
def test_generation_continues_from_the_returned_cache_as_for_stock(models, stock, batch, tester, variant):
    """transformers' recipe: pass the returned sequences (plus any new tokens) with the returned cache."""
    model = models[variant]
    kwargs = {"do_sample": False, "return_dict_in_generate": True, "output_scores": True}
    whole = model.generate(**batch, max_new_tokens=4, **kwargs)
    first = model.generate(**batch, max_new_tokens=3, **kwargs)
    mask = torch.nn.functional.pad(batch["attention_mask"], (0, 3), value=1)
    rest = model.generate(
        input_ids=first.sequences,
        attention_mask=mask,
        **{CACHE_ARGUMENT: cache_of(first)},
        max_new_tokens=1,
        **kwargs,
    )
    assert torch.equal(rest.sequences, whole.sequences)
    torch.testing.assert_close(rest.scores[0], whole.scores[-1], rtol=1e-4, atol=1e-4)

    # A new turn of text continues the cache as the whole conversation with its images would.
    turn = tester.tokenizer(
        [" USER: And then? ASSISTANT:"] * 2, add_special_tokens=False, return_tensors="pt"
    )
    conversation = torch.cat([rest.sequences, turn.input_ids], dim=1)
    mask = torch.nn.functional.pad(mask, (0, conversation.shape[1] - mask.shape[1]), value=1)
    continued = model.generate(
        input_ids=conversation, attention_mask=mask, **{CACHE_ARGUMENT: cache_of(rest)}, max_new_tokens=3,
        do_sample=False,
    )  # fmt: skip
    anew = model.generate(
        input_ids=conversation, attention_mask=mask, pixel_values=batch["pixel_values"], max_new_tokens=3,
        do_sample=False,
    )  # fmt: skip
    assert torch.equal(continued, anew)
    if variant == "none":
        assert torch.equal(continued, stock.generate(input_ids=conversation, attention_mask=mask, pixel_values=batch["pixel_values"], max_new_tokens=3, do_sample=False))  # fmt: skip


def test_a_cache_continues_only_the_conversation_it_holds(models, batch):
    model = models["prumerge"]
    first = model.generate(**batch, max_new_tokens=2, do_sample=False, return_dict_in_generate=True)
    other = first.sequences.flip(0)  # the two conversations swapped
    with pytest.raises(VisualInputError, match="filled from another prompt"):
        model.generate(input_ids=other, **{CACHE_ARGUMENT: cache_of(first)}, max_new_tokens=1)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_a_static_cache_decodes_as_a_dynamic_one(tester, batch, variant, attention):
    """A compilable cache gets a 4-D mask from `generate`: the prefill keeps the padding mask compaction needs."""
    model = tester.get_model(seed=3, token_reduction=variant)
    model.set_attn_implementation(attention)
    for inputs in ({key: value[:1] for key, value in batch.items()}, batch):  # unpadded, then left-padded
        dynamic = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
        static = model.generate(
            **inputs, max_new_tokens=NEW_TOKENS, do_sample=False, cache_implementation="static"
        )
        assert torch.equal(static, dynamic)


def test_masks_and_labels_must_have_the_prompts_shape(models, batch):
    length = batch["input_ids"].shape[1]
    mask = torch.ones(2, 1, length, length)
    with pytest.raises(VisualInputError, match=r"\[batch, length\] padding mask"):
        models["prumerge"](**{**batch, "attention_mask": mask})
    with pytest.raises(
        VisualInputError, match=r"\[batch, length\] padding mask of the prompt, \(2, \d+\), got \(2, \d+\)"
    ):
        models["prumerge"](**{**batch, "attention_mask": batch["attention_mask"][:, :-3]})
    with pytest.raises(VisualInputError, match=r"labels must have the prompt's shape"):
        models["prumerge"](**batch, labels=batch["input_ids"][:, :-3])


@pytest.mark.skipif(TRANSFORMERS_MAJOR < 5, reason="mm_encoder_outputs is transformers 5's")
def test_images_encoded_beforehand_go_in_as_mm_encoder_outputs(models, batch):
    model = models["prumerge"]
    with torch.no_grad():
        features = model.get_image_features(batch["pixel_values"])
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            mm_encoder_outputs={"image": features},
        )
        expected = model(**batch)
    assert out.visual_token_counts == expected.visual_token_counts
    torch.testing.assert_close(out.logits, expected.logits)


@pytest.mark.parametrize("variant", VARIANTS)
def test_adjacent_images_decode_with_beams(models, tester, variant):
    """Adjacent images share one placeholder run, which compaction splits (again when generate re-runs it)."""
    model = models[variant]
    inputs = tester.prepare_inputs(
        tester.images(2, first_seed=2), ["USER: <image><image>\nCompare them. ASSISTANT:"]
    )
    with torch.no_grad():
        counts = model(**inputs).visual_token_counts
    assert len(counts) == 2
    beams = model.generate(**inputs, max_new_tokens=3, num_beams=2, do_sample=False)
    assert torch.equal(beams[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])
