"""The `analyze` roofline estimator: hand-checked operator counts, monotonicity, the paper's calibration
point, the CLI end to end and its input errors."""

import json
from dataclasses import replace

import pytest

from llava_prumerge.benchmarks.roofline import (
    ARCHITECTURES,
    HARDWARE,
    LLAVA_NEXT_GRID_PINPOINTS,
    PRUMERGE_PLUS_TOKENS,
    PRUMERGE_TOKENS,
    AnyresImage,
    Architecture,
    OperatorCost,
    analyze,
    compute_peak,
    head_costs,
    load_architecture,
    operator_costs,
    prefill_totals,
)
from llava_prumerge.cli import main as cli_main
from llava_prumerge.common.cli_args import COMPARED_METHODS as METHODS

TINY = ARCHITECTURES["tiny"]  # hidden 64, 2 layers, 4 heads of 16, 2 KV heads, intermediate 160, vocab 100
REQUIRED_FIELDS = {
    "method",
    "arch",
    "hardware",
    "visual_tokens",
    "text_tokens",
    "sequence_length",
    "batch_size",
    "flops",
    "prefill_seconds",
    "weight_bytes",
    "kv_cache_bytes",
    "activation_bytes",
    "memory_access_bytes",
    "vs_none",
}


def test_tiny_architecture_is_what_the_hand_computation_assumes():
    assert (TINY.hidden_size, TINY.num_layers, TINY.num_heads, TINY.num_kv_heads) == (64, 2, 4, 2)
    assert (TINY.intermediate_size, TINY.vocab_size, TINY.head_dim, TINY.kv_dim) == (160, 100, 16, 32)


def test_layer_operator_counts_match_hand_computation():
    # batch 2, seq 5 -> 10 tokens; 4-bit weights (0.5 B), 8-bit activations (1 B), 16-bit KV (2 B)
    b, s, h, kv, inter, heads, d = 2, 5, 64, 32, 160, 4, 16
    t = b * s
    w, a, c = 0.5, 1, 2
    scores = b * heads * s * s  # 200
    # name: (ops, weight, activation load, activation store, kv load, kv store)
    expected = {
        "attn_norm": (7 * t * h, 0, t * h * a, t * h * a, 0, 0),
        "q_proj": (2 * t * h * h, h * h * w, t * h * a, t * h * a, 0, 0),
        "k_proj": (2 * t * h * kv, h * kv * w, t * h * a, 0, 0, t * kv * c),
        "v_proj": (2 * t * h * kv, h * kv * w, t * h * a, 0, 0, t * kv * c),
        "qk_matmul": (2 * scores * d, 0, t * h * a, scores * a, t * kv * c, 0),
        "softmax": (5 * scores, 0, scores * a, scores * a, 0, 0),
        "sv_matmul": (2 * scores * d, 0, scores * a, t * h * a, t * kv * c, 0),
        "o_proj": (2 * t * h * h, h * h * w, t * h * a, t * h * a, 0, 0),
        "attn_add": (t * h, 0, t * h * a, t * h * a, 0, 0),
        "mlp_norm": (7 * t * h, 0, t * h * a, t * h * a, 0, 0),
        "gate_proj": (2 * t * h * inter, h * inter * w, t * h * a, t * inter * a, 0, 0),
        "up_proj": (2 * t * h * inter, h * inter * w, t * h * a, t * inter * a, 0, 0),
        "mlp_act": (2 * t * h, 0, 2 * t * h * a, t * h * a, 0, 0),  # LLM-Viewer sizes it by hidden
        "down_proj": (2 * t * inter * h, inter * h * w, t * inter * a, t * h * a, 0, 0),
        "mlp_add": (t * h, 0, t * h * a, t * h * a, 0, 0),
    }
    costs = operator_costs(TINY, batch_size=b, seq_len=s, w_bits=4, a_bits=8, kv_bits=16)
    assert list(costs) == list(expected)
    for name, cost in costs.items():
        got = (
            cost.ops,
            cost.weight_bytes,
            cost.activation_load_bytes,
            cost.activation_store_bytes,
            cost.kv_load_bytes,
            cost.kv_store_bytes,
        )
        assert got == expected[name], name
    assert costs["q_proj"].ops == 81920 and costs["q_proj"].memory_access_bytes == 2048 + 640 + 640


def test_head_is_costed_for_the_last_token_only():
    b, h, vocab = 2, 64, 100
    costs = head_costs(TINY, batch_size=b, w_bits=4, a_bits=8)
    assert (costs["final_norm"].ops, costs["final_norm"].memory_access_bytes) == (7 * b * h, 2 * b * h)
    lm_head = costs["lm_head"]
    assert lm_head.ops == 2 * b * h * vocab  # a multiply-add is 2 OPs
    assert lm_head.weight_bytes == h * vocab * 0.5
    assert (lm_head.activation_load_bytes, lm_head.activation_store_bytes) == (b * h, b * vocab)


def test_operator_time_is_the_slower_of_compute_and_memory():
    cost = OperatorCost(ops=1000, weight_bytes=100)
    assert cost.seconds(peak_ops_per_second=100, bandwidth_bytes_per_second=1000) == 10  # compute-bound
    assert cost.seconds(peak_ops_per_second=1e6, bandwidth_bytes_per_second=10) == 10  # memory-bound


@pytest.mark.parametrize(
    ("bits", "dtype"),
    [
        ((16, 16, 16), "FP16"),
        ((8, 8, 8), "INT8"),
        ((4, 8, 4), "INT8"),
        ((8, 8, 16), "FP16"),
        ((4, 16, 8), "FP16"),
    ],
)
def test_int8_peak_only_when_weights_activations_and_kv_fit_in_8_bits(bits, dtype):
    assert compute_peak(HARDWARE["a100"], *bits) == (dtype, 624 if dtype == "INT8" else 312)


def test_totals_sum_layers_and_head():
    b, s, w_bits, kv_bits = 3, 7, 8, 4
    totals = prefill_totals(
        TINY, b, s, w_bits, 16, kv_bits, peak_ops_per_second=1e12, bandwidth_bytes_per_second=1e9
    )
    layer = operator_costs(TINY, b, s, w_bits, 16, kv_bits).values()
    head = head_costs(TINY, b, w_bits, 16).values()
    assert totals["flops"] == TINY.num_layers * sum(c.ops for c in layer) + sum(c.ops for c in head)
    h, inter, kv = TINY.hidden_size, TINY.intermediate_size, TINY.kv_dim
    layer_weights = 2 * h * h + 2 * h * kv + 3 * h * inter
    assert totals["weight_bytes"] == (TINY.num_layers * layer_weights + h * TINY.vocab_size) * w_bits / 8
    assert totals["kv_cache_bytes"] == 2 * TINY.num_layers * s * kv * kv_bits / 8 * b


@pytest.mark.parametrize("arch", ["tiny", "llava-1.5-7b"])
def test_estimates_are_non_decreasing_in_tokens_and_batch(arch):
    growing = ("flops", "prefill_seconds", "kv_cache_bytes", "activation_bytes", "memory_access_bytes")

    def none_row(**kwargs):
        return analyze(arch=arch, hardware="h100", methods=["none"], **kwargs)[0]

    for sweep in (
        [none_row(text_tokens=t) for t in (1, 2, 40, 123, 1000)],
        [none_row(visual_tokens=v) for v in (144, 576, 2880)],
        [none_row(batch_size=n) for n in (1, 2, 8, 64)],
    ):
        for key in growing:
            values = [row[key] for row in sweep]
            assert values == sorted(values), key
        assert len({row["weight_bytes"] for row in sweep}) == 1


@pytest.mark.parametrize("arch", ["tiny", "llava-1.5-7b", "llava-1.5-13b"])
@pytest.mark.parametrize("hardware", ["v100", "rtx4090"])
def test_token_reduction_cuts_flops_time_and_kv_cache(arch, hardware):
    rows = {row["method"]: row for row in analyze(arch=arch, hardware=hardware)}
    for key in ("flops", "prefill_seconds", "kv_cache_bytes"):
        assert rows["prumerge"][key] < rows["prumerge_plus"][key] < rows["none"][key], key
        assert rows["none"]["vs_none"][key] == 1
        assert rows["prumerge"]["vs_none"][key] == rows["prumerge"][key] / rows["none"][key]
    expected = {"tiny": [196, 11, 49]}.get(arch, [576, 33, 144])  # the paper's rates on the tower's patches
    assert [rows[m]["visual_tokens"] for m in METHODS] == expected


def test_tiny_defaults_come_from_the_tiny_model_and_print_readably(capsys):
    from llava_prumerge.testing.tiny import TINY_IMAGE_SIZE, TINY_PATCH_SIZE

    rows = analyze(arch="tiny")
    assert rows[0]["visual_tokens"] == (TINY_IMAGE_SIZE // TINY_PATCH_SIZE) ** 2
    cli_main(["analyze", "--arch", "tiny"])
    header, none_row = capsys.readouterr().out.splitlines()[1:3]
    assert header.split()[3:4] == ["MOPs"] and "prefill us" in header and "KV KB" in header
    assert float(none_row.split()[3]) > 1 and float(none_row.split()[5]) > 1  # no 0.000 columns


def test_paper_calibration_point():
    # LLaVA-PruMerge's efficiency table (via LLM-Viewer): LLaVA-1.5-7B, FP16, V100, batch 1, all 576
    # visual tokens -> 9.3 TFLOPs and 88.6 ms. The model is deterministic arithmetic, so the default
    # prompt must reproduce both at the precision the paper prints them (0.1 TFLOPs, 0.1 ms).
    (row,) = analyze(arch="llava-1.5-7b", hardware="v100", methods=["none"])
    assert row["sequence_length"] == 576 + 123
    assert round(row["flops"] / 1e12, 1) == 9.3
    assert round(row["prefill_seconds"] * 1e3, 1) == 88.6
    assert row["weight_bytes"] == pytest.approx(13.21e9, rel=1e-3)  # 6.6B linear weights in FP16


def test_cli_json_end_to_end(capsys):
    cli_main(
        ["analyze", "--json", "--arch", "tiny", "--hardware", "a100", "--batch-size", "2", "--kv-bits", "8"]
    )
    rows = json.loads(capsys.readouterr().out)
    assert [row["method"] for row in rows] == list(METHODS)
    for row in rows:
        assert set(row) >= REQUIRED_FIELDS
        assert row["arch"] == "tiny" and row["hardware"] == "a100" and row["batch_size"] == 2
        assert row["sequence_length"] == row["visual_tokens"] + row["text_tokens"]
    assert rows == analyze(arch="tiny", hardware="a100", batch_size=2, kv_bits=8)


def test_cli_table_and_overrides(capsys):
    cli_main(["analyze", "--methods", "none,prumerge", "--peak", "200", "--bandwidth", "1000"])
    out = capsys.readouterr().out
    assert "peak 200 TOPS, 1000 GB/s" in out
    assert [line.split()[0] for line in out.splitlines()[2:]] == ["none", "prumerge"]


def test_arch_from_a_llava_config_folder(tmp_path):
    # llava-hf configs leave LlamaConfig's defaults out of text_config
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "llava", "text_config": {"model_type": "llama", "vocab_size": 32064}})
    )
    arch = load_architecture(tmp_path)
    assert arch == Architecture(tmp_path.name, 4096, 32, 32, 32, 11008, 32064)
    # original LLaVA checkpoints are flat Llama configs
    flat = ARCHITECTURES["llava-1.5-13b"]
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llava_llama",
                "hidden_size": flat.hidden_size,
                "num_hidden_layers": flat.num_layers,
                "num_attention_heads": flat.num_heads,
                "num_key_value_heads": flat.num_kv_heads,
                "intermediate_size": flat.intermediate_size,
                "vocab_size": flat.vocab_size,
            }
        )
    )
    assert load_architecture(str(tmp_path)) == Architecture(tmp_path.name, 5120, 40, 40, 40, 13824, 32000)


def test_config_folder_of_another_llm_must_give_its_dimensions(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "llava", "text_config": {"model_type": "mistral"}})
    )
    with pytest.raises(ValueError, match="--arch: .*lacks text_config fields hidden_size"):
        load_architecture(tmp_path)


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--arch", "llama-9000"], "--arch"),
        (["--hardware", "tpu"], "--hardware"),
        (["--text-tokens", "0"], "--text-tokens"),
        (["--visual-tokens", "-5"], "--visual-tokens"),
        (["--batch-size", "0"], "--batch-size"),
        (["--w-bits", "5"], "--w-bits"),
        (["--a-bits", "32"], "--a-bits"),
        (["--kv-bits", "2"], "--kv-bits"),
        (["--methods", "none,tome"], "--methods"),
        (["--peak", "0"], "--peak"),
    ],
)
def test_cli_rejects_bad_input_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["analyze", *argv])
    assert exit_info.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err


def test_cli_rejects_a_reduction_larger_than_the_image(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["analyze", "--visual-tokens", "100"])
    assert exit_info.value.code == 2
    assert "--prumerge-plus-tokens (144) exceeds --visual-tokens (100)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"arch": "llama-9000"}, "--arch"),
        ({"hardware": "tpu"}, "--hardware"),
        ({"text_tokens": 0}, "--text-tokens"),
        ({"batch_size": -1}, "--batch-size"),
        ({"w_bits": 5}, "--w-bits"),
        ({"kv_bits": 32}, "--kv-bits"),
        ({"methods": ["fastv"]}, "--methods"),
        ({"prumerge_tokens": 600}, "--prumerge-tokens"),
        ({"bandwidth_gbps": 0}, "--bandwidth"),
    ],
)
def test_api_rejects_bad_input_naming_the_flag(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        analyze(**kwargs)


VIDEO_LLAVA_METHODS = ["none", "prumerge", "prumerge_plus", "prumerge@256", "prumerge_plus@512"]


def test_video_llava_7b_is_vicuna_7b_with_an_8_frame_video_prompt():
    video, image = ARCHITECTURES["video-llava-7b"], ARCHITECTURES["llava-1.5-7b"]
    assert replace(video, name=image.name, prompt=image.prompt) == image  # the same LLM
    prompt = video.prompt
    assert (prompt.modality, prompt.stock_tokens) == (
        "video",
        8 * (1 + 16 * 16),
    )  # [CLS] + 256 patches a frame
    # each frame: [CLS] + the paper's image rates of its 256 patches (33 / 576 -> 15, 144 / 576 -> 64)
    assert (prompt.prumerge_tokens, prompt.prumerge_plus_tokens) == (8 * 16, 8 * 65)
    assert prompt.fixed_budgets == ("prumerge@256", "prumerge_plus@512")  # 12.5% and 25% of 2048 patches
    assert 256 / 2056 <= 0.125


def test_video_llava_rows_cost_each_methods_tokens():
    rows = analyze(arch="video-llava-7b", hardware="a100")
    assert [row["method"] for row in rows] == VIDEO_LLAVA_METHODS
    assert [row["visual_tokens"] for row in rows] == [2056, 128, 520, 256, 512]
    assert all(row["sequence_length"] == row["visual_tokens"] + 123 for row in rows)
    by_method = {row["method"]: row for row in rows}
    none, fixed = by_method["none"], by_method["prumerge@256"]
    assert fixed["kv_cache_bytes"] / none["kv_cache_bytes"] == pytest.approx((256 + 123) / (2056 + 123))
    for row in rows[1:]:
        assert row["vs_none"]["flops"] < 0.3 and row["vs_none"]["prefill_seconds"] < 0.3
    # a fixed budget costs what the same number of adaptive tokens costs
    same = analyze(arch="video-llava-7b", hardware="a100", methods=["prumerge"], prumerge_tokens=256)[0]
    assert same["flops"] == fixed["flops"]


def test_fixed_budgets_work_for_images_too():
    rows = analyze(methods=["none", "prumerge_plus@144"])
    assert [(row["method"], row["visual_tokens"]) for row in rows] == [
        ("none", 576),
        ("prumerge_plus@144", 144),
    ]
    assert rows[1]["flops"] == analyze(methods=["prumerge_plus"])[0]["flops"]  # 144: the paper's PruMerge+


def test_cli_video_llava_table_and_json(capsys):
    cli_main(["analyze", "--arch", "video-llava-7b"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("video-llava-7b LLM prefill on v100")
    assert [line.split()[:2] for line in lines[2:]] == [
        [method, str(tokens)]
        for method, tokens in zip(VIDEO_LLAVA_METHODS, [2056, 128, 520, 256, 512], strict=True)
    ]
    cli_main(["analyze", "--arch", "video-llava-7b", "--methods", "none,prumerge@300", "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert [(row["method"], row["visual_tokens"]) for row in rows] == [("none", 2056), ("prumerge@300", 300)]


def test_arch_from_a_video_llava_config_folder(tmp_path):
    # a stock Video-LLaVA config; the vision tower's size and the frames are read when given
    config = {"model_type": "video_llava", "text_config": {"model_type": "llama", "vocab_size": 32064}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert load_architecture(tmp_path).prompt == ARCHITECTURES["video-llava-7b"].prompt
    config["video_seq_length"] = 4 * (1 + 14 * 14)
    config["vision_config"] = {"image_size": 56, "patch_size": 4}
    (tmp_path / "config.json").write_text(json.dumps(config))
    prompt = load_architecture(tmp_path).prompt
    assert (prompt.stock_tokens, prompt.fixed_budgets) == (788, ("prumerge@98", "prumerge_plus@196"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--methods", "none@5"], "unknown method(s) ['none@5']"),
        (["--methods", "prumerge@0"], "unknown method(s) ['prumerge@0']"),
        (["--methods", "prumerge@many"], "unknown method(s) ['prumerge@many']"),
        (["--methods", "tome@8"], "unknown method(s) ['tome@8']"),
        (["--arch", "video-llava"], "unknown architecture 'video-llava'"),
    ],
)
def test_cli_rejects_bad_method_labels_and_architectures(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["analyze", *argv])
    assert exit_info.value.code == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]  # after the usage, the one-line error
    assert last_line.startswith("llava-prumerge analyze: error: argument") and message in last_line


def test_cli_rejects_a_fixed_budget_larger_than_the_video(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(
            ["analyze", "--arch", "video-llava-7b", "--visual-tokens", "300", "--prumerge-plus-tokens", "100"]
        )
    assert exit_info.value.code == 2
    assert "--methods: prumerge_plus@512 keeps more than --visual-tokens (300)" in capsys.readouterr().err


# ---------------------------------------------------------------- LLaVA-NeXT (AnyRes)


def llava_v16_processor():
    """LlavaNextProcessor as llava-hf/llava-v1.6-vicuna-7b-hf configures it (336 px views, patch 14, its grid
    resolutions, [CLS] dropped), built in code with the tiny tokenizer: only the placeholder count matters."""
    from transformers import LlavaNextImageProcessor, LlavaNextProcessor

    from llava_prumerge.testing.tiny import tiny_tokenizer

    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": 336},
        crop_size={"height": 336, "width": 336},
        image_grid_pinpoints=[list(resolution) for resolution in LLAVA_NEXT_GRID_PINPOINTS],
    )
    return LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tiny_tokenizer(),
        patch_size=14,
        vision_feature_select_strategy="default",
        image_token="<image>",
        num_additional_image_tokens=1,
    )


def processor_placeholders(processor, height: int, width: int) -> int:
    from PIL import Image

    inputs = processor(
        images=[Image.new("RGB", (width, height), (90, 140, 200))],
        text=["USER: <image>\nWhat is it? ASSISTANT:"],
        return_tensors="pt",
    )
    return int((inputs["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<image>")).sum())


@pytest.mark.parametrize(("height", "width"), [(672, 672), (400, 900), (1000, 300), (337, 500), (480, 640)])
def test_anyres_count_is_the_llava_next_processors(height, width):
    processor = llava_v16_processor()
    assert AnyresImage(height, width).stock_tokens == processor_placeholders(processor, height, width)


@pytest.mark.parametrize(("height", "width"), [(672, 672), (400, 900), (1000, 300), (337, 500)])
def test_anyres_views_are_the_models_layout(height, width):
    """The pure-Python views (analyze) and the model's torch layout (what it reduces) agree."""
    from llava_prumerge.modeling.anyres import anyres_layout

    image = AnyresImage(height, width)
    layout = anyres_layout((height, width), [list(p) for p in LLAVA_NEXT_GRID_PINPOINTS], 336, 24)
    assert image.grid == (layout.grid_rows, layout.grid_cols)
    assert image.unpadded_window == (layout.top, layout.bottom, layout.left, layout.right)
    crops = [len(layout.crop_patches(crop)) for crop in range(layout.grid_rows * layout.grid_cols)]
    assert image.view_patches == [576, *crops]
    assert image.stock_tokens == 576 + layout.stock_length


def test_llava_next_7b_costs_a_672_image_as_5_views():
    next_7b, image_7b = ARCHITECTURES["llava-next-7b"], ARCHITECTURES["llava-1.5-7b"]
    assert replace(next_7b, name=image_7b.name, prompt=image_7b.prompt) == image_7b  # Vicuna-7B
    prompt = next_7b.prompt
    image = prompt.anyres
    assert (image.height, image.width, image.grid, image.view_patches) == (672, 672, (2, 2), [576] * 5)
    assert prompt.stock_tokens == processor_placeholders(llava_v16_processor(), 672, 672)
    # each view at the paper's image rates, and one image_newline per row of crops (the model's layout)
    assert prompt.prumerge_tokens == 5 * PRUMERGE_TOKENS + 2
    assert prompt.prumerge_plus_tokens == 5 * PRUMERGE_PLUS_TOKENS + 2
    assert prompt.prumerge_tokens <= 0.1 * prompt.stock_tokens
    rows = analyze(arch="llava-next-7b")
    assert [(row["method"], row["visual_tokens"]) for row in rows] == [
        ("none", prompt.stock_tokens),
        ("prumerge", prompt.prumerge_tokens),
        ("prumerge_plus", prompt.prumerge_plus_tokens),
        ("prumerge_plus@160", 160),
        ("prumerge_plus@320", 320),
        ("prumerge_plus@640", 640),
    ]
    none = rows[0]
    for row in rows[1:]:
        ratio = (row["visual_tokens"] + 123) / (prompt.stock_tokens + 123)
        assert row["kv_cache_bytes"] / none["kv_cache_bytes"] == pytest.approx(ratio)


def test_arch_from_a_llava_next_config_folder(tmp_path, capsys):
    from transformers import LlavaNextConfig

    (tmp_path / "config.json").write_text(LlavaNextConfig().to_json_string())  # llava-v1.6's defaults
    assert load_architecture(tmp_path).prompt == ARCHITECTURES["llava-next-7b"].prompt
    cli_main(["analyze", "--arch", "llava-next-7b"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("llava-next-7b LLM prefill on v100")
    assert lines[2].split()[:2] == ["none", str(ARCHITECTURES["llava-next-7b"].prompt.stock_tokens)]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"model_type": "clip", "text_config": {}}, "config.json is a 'clip' config, not a LLaVA-family one"),
        ([], "config.json holds a JSON list, not a config object"),
        ({"model_type": "llava", "text_config": "oops"}, "config.json: text_config is 'oops', not a config"),
    ],
)
def test_cli_refuses_a_config_folder_that_is_no_llava(config, message, tmp_path, capsys):
    """A CLIP folder once printed a table of its text tower; a list or a string text_config, a traceback."""
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["analyze", "--arch", str(tmp_path)])
    assert exit_info.value.code == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.startswith("llava-prumerge analyze: error: argument --arch: ") and message in last_line
