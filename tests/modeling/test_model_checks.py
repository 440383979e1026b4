"""The checks transformers' `ModelTesterMixin` / `GenerationTesterMixin` make of LLaVA-family models, for each
architecture: with token_reduction="none" the model gives what stock gives (shapes and values); with PruMerge
or PruMerge+ only what has the compacted prompt's length differs, by the rule the compaction documents.

Written for this package (the architectures share one `Case` interface); nothing is copied from transformers.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import CompileConfig, LlamaConfig, LlamaForCausalLM

from llava_prumerge import LlavaPruMergeForConditionalGeneration
from llava_prumerge.errors import VisualInputError
from llava_prumerge.modeling import compaction, modeling_prumerge, vision_encoding
from llava_prumerge.modeling.runtime_compat import (
    CACHE_ARGUMENT,
    GENERATE_TAKES_ENCODER_OUTPUTS,
    TRANSFORMERS_MAJOR,
)
from llava_prumerge.testing.model_tester import (
    LONG_PROMPT,
    PROMPT,
    LlavaPruMergeModelTester,
    VideoLlavaPruMergeModelTester,
    make_image,
    stock_twin,
)
from llava_prumerge.testing.tiny import tiny_config, tiny_tokenizer
from llava_prumerge.testing.tiny_next import tiny_next_model, tiny_next_processor
from llava_prumerge.testing.tiny_onevision import (
    tiny_clips,
    tiny_onevision_inputs,
    tiny_onevision_model,
    tiny_onevision_processor,
)
from llava_prumerge.testing.tiny_qwen import (
    tiny_qwen_image_processor,
    tiny_qwen_inputs,
    tiny_qwen_model,
    tiny_qwen_tokenizer,
)

VARIANTS = ["none", "prumerge", "prumerge_plus"]
VIDEO_PROMPT = "USER: <video>\nWhat happens in the video? ASSISTANT:"
MIXED_PROMPT = "USER: <image>\nThis picture, then <video>\nwhich came first? ASSISTANT:"


@dataclasses.dataclass
class Case:
    """One architecture: its models by variant, its stock twin, and processed inputs of chosen samples."""

    name: str
    build: callable  # variant -> model
    stock: callable  # () -> stock model with the same weights
    make_inputs: callable  # (samples, seed) -> processed batch; sample 0 and 1 differ in prompt and media
    models: dict = dataclasses.field(default_factory=dict)

    def model(self, variant: str):
        if variant not in self.models:
            self.models[variant] = self.build(variant)
        return self.models[variant]

    def inputs(self, samples=(0, 1), seed: int = 1):
        return self.make_inputs(list(samples), seed)


def llava_case() -> Case:
    tester = LlavaPruMergeModelTester()
    texts = [PROMPT, LONG_PROMPT]

    def inputs(samples, seed):
        return tester.prepare_inputs([make_image(seed + s) for s in samples], [texts[s] for s in samples])

    return Case(
        "llava",
        lambda v: tester.get_model(seed=3, token_reduction=v),
        lambda: tester.get_stock_model(3),
        inputs,
    )


def llava_next_case() -> Case:
    tokenizer = tiny_tokenizer()
    processor = tiny_next_processor(tokenizer)
    texts, sizes = [PROMPT, LONG_PROMPT], [(90, 40), (120, 112)]  # a 1x2 grid (padded) and a 2x2 grid

    def inputs(samples, seed):
        images = [make_image(seed + s, *sizes[s]) for s in samples]
        return processor(images=images, text=[texts[s] for s in samples], return_tensors="pt", padding=True)

    def build(variant):
        return tiny_next_model(seed=3, tokenizer=tokenizer, token_reduction=variant)

    return Case("llava_next", build, lambda: stock_twin(build("none").config, seed=3), inputs)


def video_llava_case() -> Case:
    tester = VideoLlavaPruMergeModelTester()

    def inputs(samples, seed):
        texts = [[VIDEO_PROMPT, MIXED_PROMPT][s] for s in samples]
        images = tester.images(1, first_seed=seed) if 1 in samples else None
        return tester.prepare_inputs(
            texts, images=images, videos=[tester.clips(1, seed + s)[0] for s in samples]
        )

    return Case(
        "video_llava",
        lambda v: tester.get_model(seed=3, token_reduction=v),
        lambda: tester.get_stock_model(3),
        inputs,
    )


def llava_onevision_case() -> Case:
    processor = tiny_onevision_processor()
    texts = [MIXED_PROMPT, "USER: <image> and <image>\nWhich is brighter? ASSISTANT:"]
    shots = [(120, 112), (60, 70), (50, 40)]  # sample 0: a 2x2 grid and a video; sample 1: two base views

    def inputs(samples, seed):
        images = [[make_image(seed, *shots[0])] if s == 0 else [make_image(seed + 1, *shots[1]),
                  make_image(seed + 2, *shots[2])] for s in samples]  # fmt: skip
        videos = tiny_clips(processor, 1, 4, seed) if 0 in samples else None
        return tiny_onevision_inputs(processor, [texts[s] for s in samples], images, videos)

    def build(variant):
        return tiny_onevision_model(seed=3, tokenizer=processor.tokenizer, token_reduction=variant)

    return Case("llava_onevision", build, lambda: stock_twin(build("none").config, seed=3), inputs)


def qwen_case(arch: str):
    def case() -> Case:
        tokenizer, image_processor = tiny_qwen_tokenizer(), tiny_qwen_image_processor()
        texts = [
            "USER: <image> then <video>\nWhich came first? ASSISTANT:",
            "USER: <image>\nDescribe it in detail. ASSISTANT:",
        ]
        sizes = [(60, 40), (40, 56)]

        def inputs(samples, seed):
            images = [[make_image(seed + s, *sizes[s])] for s in samples]
            videos = [[[2, 4, 6]] if s == 0 else [] for s in samples]
            return tiny_qwen_inputs(
                tokenizer, image_processor, [texts[s] for s in samples], images, videos, seed
            )

        def build(variant):
            return tiny_qwen_model(arch, seed=3, tokenizer=tokenizer, token_reduction=variant)

        return Case(
            arch.replace(".", "_").replace("-", "_"),
            build,
            lambda: stock_twin(build("none").config, seed=3),
            inputs,
        )

    return case


CASES = {
    "llava": llava_case,
    "llava_next": llava_next_case,
    "video_llava": video_llava_case,
    "llava_onevision": llava_onevision_case,
    "qwen2_5_vl": qwen_case("qwen2.5-vl"),
    "qwen2_vl": qwen_case("qwen2-vl"),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    return CASES[request.param]()


QWEN_CASES = ("qwen2_5_vl", "qwen2_vl")


def skip_for_qwen(case: Case, why: str) -> None:
    if case.name in QWEN_CASES:
        pytest.skip(why)


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    return logits.float().log_softmax(dim=-1)


def placeholder_mask(model, input_ids: torch.Tensor) -> torch.Tensor:
    """[B, L]: where any modality's placeholders are."""
    ids = [model.config.image_token_id] + (
        [model.config.video_token_id] if hasattr(model.config, "video_token_id") else []
    )
    return torch.isin(input_ids, torch.tensor(ids))


def holed_masks(model, batch) -> dict[str, torch.Tensor]:
    """Masks as transformers' testers make them: holes in the text and inside a placeholder run, a mask that
    covers each sample's first placeholder run whole, and a lower-triangular one."""
    mask = batch["attention_mask"]
    holes, covered = mask.clone(), mask.clone()
    holes[:, -6:-3] = 0  # text near the end
    for row, runs in enumerate(runs_of(placeholder_mask(model, batch["input_ids"]))):
        holes[row, runs[0].start + 1] = 0  # one placeholder of the first run
        covered[row, runs[0]] = 0
    return {"holes": holes, "covered": covered, "lower-triangular": torch.tril(torch.ones_like(mask))}


@pytest.mark.parametrize("variant", VARIANTS)
def test_masks_hide_positions_but_never_remove_them(case, variant):
    skip_for_qwen(
        case,
        "Qwen-VL's stock positions skip masked tokens (get_rope_index reads the mask), so the "
        "LLaVA-family rule checked here does not apply; test_qwen_vl checks Qwen-VL's positions",
    )
    model, batch = case.model(variant), case.inputs()
    placeholders = placeholder_mask(model, batch["input_ids"])
    with torch.no_grad():
        unmasked = model(**batch)
        for name, mask in holed_masks(model, batch).items():
            out = model(**{**batch, "attention_mask": mask})
            if variant == "none":
                stock = case.stock()(**{**batch, "attention_mask": mask})
                assert out.logits.shape == stock.logits.shape, name
                torch.testing.assert_close(out.logits, stock.logits, rtol=1e-5, atol=1e-5)
                continue
            # a placeholder run is one item whatever its mask; every text position stays, hidden where it was
            assert out.visual_token_counts == unmasked.visual_token_counts, name
            tokens = [sum(row) for row in per_sample_counts(model, batch, unmasked)]
            kept = [int((~placeholders[row]).sum()) + tokens[row] for row in range(len(tokens))]
            assert out.logits.shape[1] == out.attention_mask.shape[1] == max(kept), name
            visible_text = ((mask == 1) & ~placeholders).sum(1)
            visible_items = [
                sum(count for count, run in zip(row_counts, runs, strict=True) if bool(mask[row, run].any()))
                for row, (row_counts, runs) in enumerate(zip(per_sample_counts(model, batch, unmasked), runs_of(placeholders), strict=True))
            ]  # fmt: skip
            assert (
                out.attention_mask.sum(1).tolist() == (visible_text + torch.tensor(visible_items)).tolist()
            ), name


def runs_of(placeholders: torch.Tensor) -> list[list[slice]]:
    """Per sample, each placeholder run as a slice (one item each in these prompts)."""
    return [
        [slice(start, start + length) for start, length in row]
        for row in compaction.placeholder_runs(placeholders)
    ]


def per_sample_counts(model, batch, out) -> list[list[int]]:
    """Per sample, the token counts of its items in prompt order (these prompts hold images before videos)."""
    counts = {model.config.image_token_id: iter(out.visual_token_counts or [])}
    if getattr(out, "video_token_counts", None) is not None:
        counts[model.config.video_token_id] = iter(out.video_token_counts)
    return [
        [next(counts[int(row[run.start])]) for run in runs]
        for row, runs in zip(
            batch["input_ids"], runs_of(placeholder_mask(model, batch["input_ids"])), strict=True
        )
    ]


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_batch_gives_what_each_sample_gives_alone(case, variant):
    model, batch = case.model(variant), case.inputs()
    with torch.no_grad():
        together = model(**batch)
        for row in range(2):
            alone = model(**case.inputs([row]))
            visible = together.attention_mask[row].bool()
            torch.testing.assert_close(
                log_probs(together.logits[row][visible]), log_probs(alone.logits[0][alone.attention_mask[0].bool()]),
                rtol=1e-4, atol=1e-4,
            )  # fmt: skip
        if variant == "none":
            torch.testing.assert_close(together.logits, case.stock()(**batch).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_output_tensor_is_batch_first(case, variant):
    model, batch = case.model(variant), case.inputs()
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
    for name, value in out.items():
        if name in ("image_hidden_states", "video_hidden_states"):  # stock 4.x's layout: all items' tokens
            continue
        tensors = value if isinstance(value, (tuple, list)) else [value]
        for tensor in tensors:
            if isinstance(tensor, torch.Tensor) and tensor.dim() > 0:
                assert tensor.shape[0] == 2, name
    if variant != "none":  # the kept patches are reported, batch-first (checked above)
        centers = out.visual_token_centers if case.name != "video_llava" else out.video_token_centers
        assert centers is not None and centers.dim() >= 3


@pytest.mark.parametrize("variant", VARIANTS)
def test_tuples_hold_what_dicts_hold(case, variant):
    model, batch = case.model(variant), case.inputs()
    with torch.no_grad():
        as_dict = model(**batch)
        as_tuple = model(**batch, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(as_dict.to_tuple())
    for ours, expected in zip(as_tuple, as_dict.to_tuple(), strict=True):
        assert type(ours) is type(expected)
        if isinstance(ours, torch.Tensor):
            torch.testing.assert_close(ours, expected)


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_prompt_given_as_embeddings_gives_what_its_ids_give(case, variant):
    if case.name in QWEN_CASES:  # stock Qwen-VL places visual tokens by their ids too
        batch = case.inputs()
        embeds = case.model(variant).get_input_embeddings()(batch.pop("input_ids"))
        with pytest.raises(VisualInputError, match="pass input_ids with visual inputs"):
            case.model(variant)(inputs_embeds=embeds, **batch)
        return
    model, batch = case.model(variant), case.inputs()
    embeds = model.get_input_embeddings()(batch["input_ids"])
    as_embeds = {
        **{key: value for key, value in batch.items() if key != "input_ids"},
        "inputs_embeds": embeds,
    }
    with torch.no_grad():
        from_ids = model(**batch)
        from_embeds = model(**as_embeds)
        torch.testing.assert_close(from_embeds.logits, from_ids.logits)
        if variant == "none":
            torch.testing.assert_close(
                from_embeds.logits, case.stock()(**as_embeds).logits, rtol=1e-5, atol=1e-5
            )


def test_ids_and_embeddings_together_and_positions_of_another_shape_are_refused(case):
    """Both prompts at once: the embeddings would silently win (stock refuses it too). Positions of another
    length or batch: compaction would read the wrong columns (stock fails on the shapes, without saying which)."""
    model, batch = case.model("prumerge"), case.inputs()
    embeds = model.get_input_embeddings()(batch["input_ids"])
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        model(**batch, inputs_embeds=embeds)
    rows, length = batch["input_ids"].shape
    rotary = (3,) if case.name in QWEN_CASES else ()
    for shape in ((rows, length - 3), (rows, length + 7), (rows + 2, length)):
        positions = torch.arange(shape[1]).expand(*rotary, *shape)
        with pytest.raises(
            VisualInputError, match=r"position_ids must end in the prompt's \[batch, length\]"
        ):
            model(**batch, position_ids=positions)


@pytest.mark.parametrize("variant", VARIANTS)
def test_save_and_load_round_trip(case, variant, tmp_path):
    model, batch = case.model(variant), case.inputs()
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path).eval()
    assert loaded.config.reduction_settings == model.config.reduction_settings
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits)


def cache_of(output):
    """The cache `generate` returned (the field is `cache` from transformers 5.24, `past_key_values` before)."""
    return getattr(output, CACHE_ARGUMENT)


@pytest.mark.parametrize("variant", VARIANTS)
def test_generation_continues_from_its_cache(case, variant):
    """The returned sequences and cache continue the conversation; visual options without pixels (LLaVA-NeXT's
    `image_sizes`) are ignored there, as stock ignores them."""
    model, batch = case.model(variant), case.inputs()
    kwargs = {"do_sample": False, "return_dict_in_generate": True, "output_scores": True}
    whole = model.generate(**batch, max_new_tokens=4, **kwargs)
    first = model.generate(**batch, max_new_tokens=3, **kwargs)
    options = {"image_sizes": batch["image_sizes"]} if "image_sizes" in batch else {}
    rest = model.generate(
        input_ids=first.sequences, attention_mask=torch.nn.functional.pad(batch["attention_mask"], (0, 3), value=1),
        **{CACHE_ARGUMENT: cache_of(first)}, **options, max_new_tokens=1, **kwargs,
    )  # fmt: skip
    assert torch.equal(rest.sequences, whole.sequences)
    torch.testing.assert_close(log_probs(rest.scores[0]), log_probs(whole.scores[-1]), rtol=1e-4, atol=1e-4)
    if variant == "none":
        stock = case.stock().generate(**batch, max_new_tokens=4, **kwargs)
        assert torch.equal(whole.sequences, stock.sequences)
        for ours, theirs in zip(whole.scores, stock.scores, strict=True):
            torch.testing.assert_close(log_probs(ours), log_probs(theirs), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant", ["none", "prumerge"])
def test_compiled_static_cache_decoding_compiles_once_for_calls_of_one_shape(case, variant):
    """Calls of one shape whose images reduce to different lengths share one compiled graph (the static cache is
    sized from the prompt as passed), and decode as a dynamic cache does."""
    model = case.model(variant)
    graphs = []

    def backend(graph, example_inputs, **options):
        graphs.append(graph)
        return graph.forward

    compile_config = CompileConfig(backend=backend)
    compile_config._compile_all_devices = True  # transformers compiles on accelerators only, unless told
    torch._dynamo.reset()
    lengths = set()
    for seed in (1, 5):
        batch = case.inputs(seed=seed)
        with torch.no_grad():
            lengths.add(model(**batch).attention_mask.shape[1])
        static = model.generate(
            **batch,
            max_new_tokens=4,
            do_sample=False,
            cache_implementation="static",
            compile_config=compile_config,
        )
        assert torch.equal(static, model.generate(**batch, max_new_tokens=4, do_sample=False))
    assert len(graphs) == 1
    # the tiny Qwen-VL towers 4.57 initializes attend near-uniformly: every image keeps the same adaptive count
    if variant != "none" and not (case.name in QWEN_CASES and TRANSFORMERS_MAJOR < 5):
        assert len(lengths) == 2, (
            "the two calls' prompts must compact to different lengths for this test to mean anything"
        )


@pytest.mark.parametrize("variant", VARIANTS)
def test_assisted_decoding(case, variant):
    model, batch = case.model(variant), case.inputs([0])
    text = (
        model.config.text_config
    )  # a small Llama of the same vocabulary (Qwen-VL's text config is its own class)
    shape = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "pad_token_id", "bos_token_id", "eos_token_id")  # fmt: skip
    assistant = LlamaForCausalLM(LlamaConfig(**{name: getattr(text, name) for name in shape})).eval()
    if (
        not GENERATE_TAKES_ENCODER_OUTPUTS
    ):  # transformers 4.x: refused with visual inputs, as stock refuses them
        with pytest.raises(VisualInputError, match="need transformers >= 5"):
            model.generate(**batch, max_new_tokens=4, assistant_model=assistant)
        return
    expected = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert torch.equal(
        model.generate(**batch, max_new_tokens=4, do_sample=False, assistant_model=assistant), expected
    )


@pytest.mark.parametrize("num_beams", [1, 2])
@pytest.mark.parametrize("variant", VARIANTS)
def test_generate_runs_the_tower_the_reducer_and_compaction_once(case, variant, num_beams, monkeypatch):
    """As often as one forward of the prompt: the prefill only places the tokens `generate` compacted."""
    model, batch = case.model(variant), case.inputs()
    calls = {"tower": 0, "reducer": 0, "compaction": 0}

    def counted(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)

        return wrapper

    for module in model.modules():  # every tower's patch embeddings: one call per run of the tower
        if type(module).__name__ in (
            "CLIPVisionEmbeddings",
            "SiglipVisionEmbeddings",
            "Qwen2_5_VisionPatchEmbed",
            "PatchEmbed",
        ):
            monkeypatch.setattr(module, "forward", counted("tower", module.forward))
    monkeypatch.setattr(
        vision_encoding, "reduce_visual_tokens", counted("reducer", vision_encoding.reduce_visual_tokens)
    )
    monkeypatch.setattr(
        modeling_prumerge, "compact_batch", counted("compaction", modeling_prumerge.compact_batch)
    )
    with torch.no_grad():
        model(**batch)
    once = dict(calls)
    calls.update({name: 0 for name in calls})
    model.generate(**batch, max_new_tokens=3, do_sample=False, num_beams=num_beams)
    assert calls == once
    # Video-LLaVA: its image and its video tower; the others with videos: their tower on the images, then the videos
    assert once["tower"] == 1 + (case.name in ("video_llava", "llava_onevision", "qwen2_5_vl", "qwen2_vl"))
    assert once["compaction"] == (variant != "none") and (once["reducer"] > 0) == (variant != "none")


def test_placeholder_counts_come_from_the_vision_config_not_image_seq_length():
    """A stock-valid config whose tower is not 336 px: 112 px in 14 px patches is 64 placeholders per image,
    whatever `image_seq_length` (default 576) says."""
    tokenizer = tiny_tokenizer()
    config = tiny_config(tokenizer, token_reduction="prumerge")
    config.vision_config.image_size, config.vision_config.patch_size = 112, 14
    config.image_seq_length = 576
    torch.manual_seed(0)
    model = LlavaPruMergeForConditionalGeneration(config).eval()
    input_ids = torch.tensor([[1] + [config.image_token_id] * 64 + [5, 6]])
    with torch.no_grad():
        out = model(input_ids=input_ids, pixel_values=torch.randn(1, 3, 112, 112))
    assert 0 < out.visual_token_counts[0] < 64 and out.logits.shape[1] == 3 + out.visual_token_counts[0]
    next_model = tiny_next_model(seed=0, tokenizer=tokenizer, token_reduction="prumerge")
    next_model.config.image_seq_length = (
        576  # stock LLaVA-NeXT's default, as a converted llava-hf config may hold
    )
    inputs = tiny_next_processor(tokenizer)(images=make_image(1, 90, 40), text=PROMPT, return_tensors="pt")
    with torch.no_grad():
        assert next_model(**inputs).visual_token_counts[0] < int(
            (inputs["input_ids"] == config.image_token_id).sum()
        )
