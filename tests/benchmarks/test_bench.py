"""`llava-prumerge bench`: runs end to end on the tiny architectures (images and videos) and on checkpoint
folders, every JSON field, exact token counts and KV-cache sizes, the plot, --reducer-only, and clear errors. No timing thresholds:
this machine is shared and timings are noise here."""

import contextlib
import importlib.util
import io
import json

import pytest
import torch
from PIL import Image

from llava_prumerge.benchmarks import measure, models, reducer
from llava_prumerge.benchmarks.modalities import visual_path
from llava_prumerge.benchmarks.roofline import ARCHITECTURES
from llava_prumerge.cli import main as cli_main
from llava_prumerge.serving.cli import VLLM_MISSING
from llava_prumerge.testing.tiny import tiny_config, tiny_model, tiny_processor
from llava_prumerge.testing.tiny_video import (
    TINY_VIDEO_FRAMES,
    tiny_video_image_processor,
    tiny_video_model,
    tiny_video_tokenizer,
)

QUICK = ["--repeats", "1", "--warmup", "0", "--new-tokens", "2", "--text-tokens", "8"]
FIELDS = {
    # what ran
    "arch", "checkpoint", "layers", "full_depth_layers", "device", "dtype", "threads",
    "text_tokens", "new_tokens", "repeats", "warmup", "compile", "batch_size", "method",
    # measured
    "visual_tokens_per_image", "visual_tokens_min", "visual_tokens_max", "sequence_length",
    "vision_ms", "stock_vision_ms", "vision_vs_stock", "reduction_layer_qk_ms", "reducer_ms",
    "reduction_overhead_vs_vision", "projector_compaction_ms", "llm_prefill_ms", "llm_prefill_ms_per_layer",
    "llm_prefill_ms_per_layer_range", "lm_head_ms", "ttft_ms", "ttft_ms_range", "decode_ms", "decode_tokens_per_s", "kv_cache_bytes_per_sample",
    "peak_memory_increase_bytes", "peak_memory_measure",
    # against "none", same run and batch size
    "prefill_per_layer_speedup_vs_none", "prefill_speedup_vs_none", "ttft_speedup_vs_none",
    "decode_speedup_vs_none", "kv_cache_vs_none", "peak_memory_vs_none",
    # scaled to the full depth, not measured
    "estimated_full_depth_prefill_ms", "estimated_full_depth_ttft_ms",
    "estimated_full_depth_kv_cache_bytes_per_sample", "estimated_full_depth_ttft_speedup_vs_none",
}  # fmt: skip
TINY_PATCHES = (tiny_config().vision_config.image_size // tiny_config().vision_config.patch_size) ** 2


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny-architecture run at batch sizes 1 and 2, its JSON rows and its plot."""
    folder = tmp_path_factory.mktemp("bench")
    json_path, plot_path = folder / "rows.json", folder / "bench.png"
    cli_main(
        [
            "bench",
            "--arch",
            "tiny",
            "--batch-size",
            "1,2",
            *QUICK,
            "--json",
            str(json_path),
            "--plot",
            str(plot_path),
        ]
    )
    return json.loads(json_path.read_text()), plot_path


def test_tiny_run_has_every_field_for_every_method_and_batch_size(tiny_run):
    rows, _ = tiny_run
    assert [(r["batch_size"], r["method"]) for r in rows] == [
        (b, m) for b in (1, 2) for m in ("none", "prumerge", "prumerge_plus")
    ]
    for row in rows:
        assert set(row) >= FIELDS, FIELDS - set(row)
        assert [k for k, v in row.items() if v is None and k not in measure.NULLABLE_FIELDS] == []
    assert all(r["arch"] == "tiny" and r["checkpoint"] is None and r["layers"] == 2 for r in rows)


def test_tiny_run_counts_tokens_and_ratios_against_none(tiny_run):
    rows, _ = tiny_run
    for row in rows:
        if row["method"] == "none":
            assert row["visual_tokens_per_image"] == TINY_PATCHES
            assert row["ttft_speedup_vs_none"] == row["kv_cache_vs_none"] == 1.0
            assert row["reduction_layer_qk_ms"] == 0.0
        else:
            assert row["visual_tokens_max"] < TINY_PATCHES
            assert row["kv_cache_vs_none"] < 1
        assert row["ttft_ms"] >= row["vision_ms"] + row["llm_prefill_ms"]
        assert row["estimated_full_depth_ttft_ms"] == pytest.approx(row["ttft_ms"])  # tiny is full depth
        for field in ("llm_prefill_ms_per_layer", "ttft_ms"):  # the median lies within the passes' spread
            fastest, slowest = row[f"{field}_range"]
            assert fastest <= row[field] <= slowest


def test_kv_cache_bytes_are_those_of_the_cache_tensors(tiny_run):
    rows, _ = tiny_run
    text = tiny_config().text_config
    head_dim = text.hidden_size // text.num_attention_heads
    for row in rows:
        # keys and values, every layer, [kv_heads, compacted length, head_dim] per sample, float32
        expected = row["layers"] * 2 * text.num_key_value_heads * row["sequence_length"] * head_dim * 4
        assert row["kv_cache_bytes_per_sample"] == expected
        assert row["sequence_length"] >= row["visual_tokens_max"] + row["text_tokens"]


def test_plot_is_a_png_of_the_figure_size(tiny_run):
    _, plot_path = tiny_run
    with Image.open(plot_path) as image:
        assert image.format == "PNG"
        assert image.size == (1000, 720)  # 2 x 2 panels of 5 x 3.6 inches at 100 dpi


def test_checkpoint_folder_runs(tmp_path, capsys):
    tiny_model().save_pretrained(tmp_path)
    tiny_processor().save_pretrained(tmp_path)
    cli_main(["bench", "--model", str(tmp_path), "--methods", "prumerge", *QUICK, "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in rows] == ["none", "prumerge"]  # the baseline is always measured
    assert all(r["checkpoint"] == str(tmp_path) and r["arch"] is None for r in rows)
    assert rows[1]["visual_tokens_per_image"] < TINY_PATCHES


def test_table_output_names_what_is_estimated(capsys):
    cli_main(["bench", "--arch", "tiny", "--layers", "1", "--threads", "1", *QUICK])
    out = capsys.readouterr().out
    assert "NOTE: 1 of the 2 LLM layers built" in out
    assert "ESTIMATED full-depth (2 LLM layers)" in out
    assert "stock LLaVA vision path" in out
    assert "(1 thread)" in out and "median of 1 pass after" in out
    assert "spread over" not in out  # one pass has none
    cli_main(
        [
            "bench",
            "--arch",
            "tiny",
            "--layers",
            "1",
            "--repeats",
            "2",
            "--warmup",
            "0",
            "--methods",
            "none,prumerge",
        ]
    )
    assert "spread over the 2 passes (fastest-slowest):" in capsys.readouterr().out


def test_vision_only_leaves_the_llm_fields_empty(capsys):
    cli_main(["bench", "--arch", "tiny", "--vision-only", *QUICK, "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert all(r["ttft_ms"] is None and r["kv_cache_bytes_per_sample"] is None for r in rows)
    assert all(r["vision_ms"] > 0 for r in rows)


def test_reducer_only_times_vectorised_and_loop_at_the_tower_shape(tmp_path, capsys):
    plot_path = tmp_path / "reducer.png"
    cli_main(
        [
            "bench",
            "--arch",
            "tiny",
            "--reducer-only",
            "--batch-size",
            "1,2",
            "--repeats",
            "1",
            "--json",
            "--plot",
            str(plot_path),
        ]
    )
    rows = json.loads(capsys.readouterr().out)
    assert [(r["method"], r["batch_size"]) for r in rows] == [
        (m, b) for m in ("prumerge", "prumerge_plus") for b in (1, 2)
    ]
    assert all(r["patches"] == TINY_PATCHES and r["channels"] == 32 and r["loop_ms"] > 0 for r in rows)
    with Image.open(plot_path) as image:
        assert image.format == "PNG"


def test_reducer_only_runs_in_the_requested_dtype(capsys):
    cli_main(
        [
            "bench",
            "--arch",
            "tiny",
            "--reducer-only",
            "--dtype",
            "bfloat16",
            "--batch-size",
            "2",
            "--repeats",
            "1",
        ]
    )
    out = capsys.readouterr().out
    assert "bfloat16" in out and "prumerge_plus" in out


def test_reducer_bench_runs_at_any_patch_and_channel_count():
    rows = reducer.run(batch_sizes=[1], patches=64, channels=16, repeats=1)
    assert [row["patches"] for row in rows] == [64, 64] and all(row["loop_ms"] > 0 for row in rows)
    assert "vectorised ms" in reducer.format_table(rows)


def test_peak_memory_sees_an_allocation():
    memory = measure.PeakMemory(torch.device("cpu"))
    if not memory.measurable:
        pytest.skip(memory.description)
    with memory:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        del block
    assert memory.increase_bytes >= 60 * 2**20


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--arch", "llava-2"], "invalid choice: 'llava-2'"),
        (["--arch", "tiny", "--methods", "prumerge,tome"], "unknown method(s) ['tome']"),
        (["--arch", "tiny", "--batch-size", "1,0"], "expected comma-separated positive integers, got '1,0'"),
        (["--arch", "tiny", "--batch-size", "two"], "expected comma-separated positive integers, got 'two'"),
        (["--arch", "tiny", "--repeats", "0"], "--repeats: must be an integer >= 1, got '0'"),
        (["--arch", "tiny", "--layers", "two"], "--layers: must be an integer >= 1, got 'two'"),
        (["--arch", "video-llava"], "invalid choice: 'video-llava'"),
        (["--arch", "tiny-video", "--methods", "none@8"], "unknown method(s) ['none@8']"),
        (["--arch", "tiny-video", "--methods", "prumerge@0"], "unknown method(s) ['prumerge@0']"),
        (
            ["--arch", "tiny", "--batch-size", "1,,2"],
            "expected comma-separated positive integers, got '1,,2'",
        ),
        (["--arch", "tiny", "--vision-only", "--reducer-only"], "--reducer-only: not allowed with argument"),
    ],
)
def test_bad_arguments_are_named(arguments, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["bench", *arguments])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--arch", "tiny", "--layers", "3"], "--layers 3 exceeds tiny's 2 LLM layers"),
        (["--model", "some/folder", "--layers", "2"], "--layers applies to --arch"),
        (["--arch", "tiny", "--reducer-only", "--methods", "none"], "needs prumerge and/or prumerge_plus"),
        ([], "choose a checkpoint (--model) or random weights (--arch), or pass --reducer-only"),
        (["--arch", "tiny", "--compile", "eager", "--warmup", "0"], "--compile needs --warmup 1 or more"),
        (
            ["--arch", "tiny", "--compile", "eager", "--engine", "vllm"],
            "--compile applies to --engine transformers",
        ),
        (["--arch", "tiny", "--image-size", "64x64"], "--image-size applies to Qwen-VL models"),
        (["--arch", "tiny", "--reducer-only", "--image-size", "64x64"], "not to --reducer-only"),
        (["--arch", "tiny", "--budgets", "16"], "--budgets applies to --engine vllm"),
    ],
)
def test_inconsistent_arguments_are_explained(arguments, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["bench", *arguments])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("llava-prumerge bench: error: ") and message in err


def test_a_checkpoint_for_image_size_is_checked_before_its_weights_load(tmp_path, capsys):
    tiny_model().save_pretrained(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["bench", "--model", str(tmp_path), "--image-size", "64x64", *QUICK])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"llava-prumerge bench: error: --image-size applies to Qwen-VL models (native resolution); {tmp_path}"
    )


def test_vllm_missing_is_one_line_before_any_work(monkeypatch, capsys):
    """`serve`'s wording; it was a ModuleNotFoundError traceback."""
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *rest: None if name == "vllm" else real_find_spec(name, *rest),
    )
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["bench", "--arch", "tiny", "--engine", "vllm", *QUICK])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"llava-prumerge bench: error: --engine vllm: {VLLM_MISSING}\n"


def test_json_path_is_checked_up_front_and_its_folder_created(tmp_path, capsys):
    afile = tmp_path / "afile.txt"
    afile.write_text("not a folder")
    for path, message in (
        (tmp_path, "is a folder; pass a file path"),
        (afile / "x.json", f"{afile} is a file"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            cli_main(["bench", "--arch", "tiny", "--json", str(path), *QUICK])
        assert exit_info.value.code == 2
        captured = capsys.readouterr()
        assert f"error: --json {path}" in captured.err and message in captured.err
        assert "visual" not in captured.out  # nothing was measured
    # A parent that does not exist yet is created, like other outputs; repeated methods run once.
    json_path = tmp_path / "new" / "rows.json"
    cli_main(
        [
            "bench",
            "--arch",
            "tiny",
            "--methods",
            "none,none",
            "--vision-only",
            "--json",
            str(json_path),
            *QUICK,
        ]
    )
    assert [row["method"] for row in json.loads(json_path.read_text())] == ["none"]


def test_a_model_too_big_for_memory_is_refused_before_it_is_built(monkeypatch):
    monkeypatch.setattr(models, "_available_memory_bytes", lambda device: 8 * 10**9)
    with pytest.raises(
        ValueError,
        match=r"7\.06B parameters need 28\.3 GB in float32 but cpu has 8\.0 GB available; .*--layers",
    ):
        models.build_random_subject("llava-1.5-7b", None, torch.float32, torch.device("cpu"), seed=0)


# Video-LLaVA: the tiny model's 8 frames of [CLS] + 196 patches reach the LLM as 1576 tokens without reduction.
VIDEO_FIELDS = (FIELDS - {"visual_tokens_per_image", "visual_tokens_min", "visual_tokens_max"}) | {
    "video_tokens_per_video", "video_tokens_min", "video_tokens_max", "tokens_vs_stock", "modality", "frames",
    "token_reduction", "fixed_tokens",
}  # fmt: skip
TINY_VIDEO_TOKENS = TINY_VIDEO_FRAMES * (1 + TINY_PATCHES)
VIDEO_METHODS = ("none", "prumerge", "prumerge_plus", "prumerge@256", "prumerge_plus@512")


@pytest.fixture(scope="module")
def tiny_video_run(tmp_path_factory):
    """One tiny Video-LLaVA run at batch sizes 1 and 2 with the paper's fixed video budgets, and its table."""
    json_path = tmp_path_factory.mktemp("bench") / "rows.json"
    methods = ",".join(VIDEO_METHODS)
    arguments = ["bench", "--arch", "tiny-video", "--batch-size", "1,2", "--methods", methods, *QUICK]
    with contextlib.redirect_stdout(io.StringIO()) as table:
        cli_main([*arguments, "--json", str(json_path)])
    return json.loads(json_path.read_text()), table.getvalue()


def test_tiny_video_run_has_every_field_for_every_method_and_batch_size(tiny_video_run):
    rows, _ = tiny_video_run
    assert [(r["batch_size"], r["method"]) for r in rows] == [(b, m) for b in (1, 2) for m in VIDEO_METHODS]
    for row in rows:
        assert set(row) >= VIDEO_FIELDS, VIDEO_FIELDS - set(row)
        assert "visual_tokens_per_image" not in row
        assert [k for k, v in row.items() if v is None and k not in measure.NULLABLE_FIELDS] == []
        assert (row["arch"], row["modality"], row["frames"], row["layers"]) == ("tiny-video", "video", 8, 2)


def test_tiny_video_run_counts_video_tokens_and_keeps_fixed_budgets_exactly(tiny_video_run):
    rows, _ = tiny_video_run
    for row in rows:
        fewest, most = row["video_tokens_min"], row["video_tokens_max"]
        if row["method"] == "none":
            assert fewest == most == row["video_tokens_per_video"] == TINY_VIDEO_TOKENS
            assert (
                row["tokens_vs_stock"]
                == row["kv_cache_vs_none"]
                == row["prefill_per_layer_speedup_vs_none"]
                == 1
            )
            assert row["reduction_layer_qk_ms"] == 0.0
        elif row["fixed_tokens"] is not None:  # adaptive=False, num_video_tokens: exactly, every video
            assert fewest == most == row["fixed_tokens"] == int(row["method"].split("@")[1])
            assert row["token_reduction"] == row["method"].split("@")[0]
        else:
            assert most < TINY_VIDEO_TOKENS and row["token_reduction"] == row["method"]
        assert row["tokens_vs_stock"] == pytest.approx(row["video_tokens_per_video"] / TINY_VIDEO_TOKENS)
        assert row["ttft_ms"] >= row["vision_ms"] + row["llm_prefill_ms"]


def test_tiny_video_kv_cache_bytes_are_those_of_the_compacted_prompt(tiny_video_run):
    rows, _ = tiny_video_run
    text = tiny_config().text_config
    head_dim = text.hidden_size // text.num_attention_heads
    for row in rows:
        if row["batch_size"] == 1:  # no padding: the video's tokens, then the text (bos included)
            assert row["sequence_length"] == row["video_tokens_max"] + row["text_tokens"]
        expected = row["layers"] * 2 * text.num_key_value_heads * row["sequence_length"] * head_dim * 4
        assert row["kv_cache_bytes_per_sample"] == expected
    fixed = next(r for r in rows if r["method"] == "prumerge@256" and r["batch_size"] == 1)
    assert fixed["kv_cache_vs_none"] == pytest.approx((256 + 8) / (TINY_VIDEO_TOKENS + 8))


def test_tiny_video_table_names_videos(tiny_video_run):
    _, table = tiny_video_run
    assert f"prompt: {TINY_VIDEO_TOKENS} video placeholders (8 frames x ([CLS] + 196 patches))" in table
    assert "tokens/video" in table and "prumerge_plus@512" in table
    assert "stock Video-LLaVA video path (all 3 layers" in table and "encode_video_frames" in table


def test_video_architectures_compare_the_papers_budgets_by_default():
    """12.5% and 25% of the patches, as METHOD@TOKENS labels, for the random architectures and for a model."""
    assert ARCHITECTURES["video-llava-7b"].prompt.methods == (
        "none", "prumerge", "prumerge_plus", "prumerge@256", "prumerge_plus@512",
    )  # fmt: skip
    path = visual_path(tiny_video_model())
    assert (path.name, path.frames, path.patches) == ("video", 8, TINY_PATCHES)
    assert path.prompt == ARCHITECTURES["tiny-video"].prompt
    assert path.prompt.fixed_budgets == ("prumerge@196", "prumerge_plus@392")
    assert visual_path(tiny_model()).prompt.methods == ("none", "prumerge", "prumerge_plus")


def test_video_llava_7b_config_has_the_published_shapes():
    architecture = models.random_architecture("video-llava-7b", layers=2)
    config = architecture.config
    vision, text = config.vision_config, config.text_config
    assert (vision.image_size, vision.patch_size, vision.hidden_size, vision.num_hidden_layers) == (
        224,
        14,
        1024,
        24,
    )
    assert vision.num_attention_heads == 16 and config.vision_feature_layer == -2
    assert (text.hidden_size, text.intermediate_size, text.num_attention_heads) == (4096, 11008, 32)
    assert (text.num_hidden_layers, architecture.full_depth_layers) == (2, 32)
    assert (config.image_seq_length, config.video_seq_length, config.projector_hidden_act) == (
        256,
        2056,
        "gelu",
    )
    ids = architecture.text_token_ids
    assert ids.min() == 3 and ids.max() == 31999  # no special, placeholder or padding ids


def test_a_video_llava_checkpoint_is_benchmarked_on_videos(tmp_path, capsys):
    """The stock processor's video part needs torchvision: the bench reads only the folder's tokenizer and image
    processor."""
    tiny_video_model().save_pretrained(tmp_path)
    tiny_video_tokenizer().save_pretrained(tmp_path)
    tiny_video_image_processor().save_pretrained(tmp_path)
    cli_main(["bench", "--model", str(tmp_path), *QUICK, "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in rows] == [
        "none",
        "prumerge",
        "prumerge_plus",
        "prumerge@196",
        "prumerge_plus@392",
    ]
    assert all(r["modality"] == "video" and r["checkpoint"] == str(tmp_path) for r in rows)
    assert [r["video_tokens_max"] for r in rows if r["fixed_tokens"]] == [196, 392]


def test_fixed_budgets_work_for_images_too(capsys):
    cli_main(["bench", "--arch", "tiny", "--methods", "prumerge_plus@16", "--vision-only", *QUICK, "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert [(r["method"], r["visual_tokens_min"], r["visual_tokens_max"]) for r in rows] == [
        ("none", TINY_PATCHES, TINY_PATCHES),
        ("prumerge_plus@16", 16, 16),
    ]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["--arch", "video-llava-7b", "--layers", "33"],
            "--layers 33 exceeds video-llava-7b's 32 LLM layers",
        ),
        (["--arch", "tiny-video", "--layers", "3"], "--layers 3 exceeds tiny-video's 2 LLM layers"),
        (
            ["--arch", "tiny-video", "--methods", "prumerge@2000"],
            "--methods prumerge@2000: more than the 1576 tokens of an unreduced video",
        ),
        (
            ["--arch", "tiny-video", "--methods", "prumerge@16"],
            "num_video_tokens=16 leaves 2 token(s) for a frame of a 8-frame video, which needs at least 3",
        ),
        (["--arch", "tiny-video", "--reducer-only", "--methods", "prumerge@256"], "drop prumerge@256"),
    ],
)
def test_inconsistent_video_arguments_are_explained_in_one_line(arguments, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["bench", *arguments, *QUICK])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("llava-prumerge bench: error: ") and message in err and err.count("\n") == 1


def test_a_video_model_too_big_for_memory_is_refused_before_it_is_built(monkeypatch):
    monkeypatch.setattr(models, "_available_memory_bytes", lambda device: 8 * 10**9)
    with pytest.raises(
        ValueError,
        match=r"7\.37B parameters need 29\.5 GB in float32 but cpu has 8\.0 GB available; .*--layers",
    ):
        models.build_random_subject("video-llava-7b", None, torch.float32, torch.device("cpu"), seed=0)


def test_ttft_comparisons_within_noise_or_slower_than_none_are_called_out():
    from llava_prumerge.benchmarks.report import timing_cautions

    def row(method, ttft_range, speedup, batch=1):
        return {"method": method, "batch_size": batch, "repeats": 3, "ttft_ms_range": ttft_range,
                "ttft_speedup_vs_none": speedup}  # fmt: skip

    rows = [
        row("none", [10.0, 12.0], 1.0),
        row("prumerge", [11.0, 13.0], 0.95),  # overlapping passes: noise, whatever the median says
        row("prumerge_plus", [14.0, 15.0], 0.8),  # apart and slower: said plainly
        row("none", [40.0, 41.0], 1.0, batch=8),
        row("prumerge", [10.0, 11.0], 3.9, batch=8),  # apart and faster: nothing to say
    ]
    cautions = timing_cautions(rows)
    assert cautions[:2] == ["", "CAUTION:"] and len(cautions) == 4
    assert "prumerge at batch 1: its TTFT passes overlap none's, so the 0.95x is within" in cautions[2]
    assert "prumerge_plus at batch 1: slower than none (0.80x TTFT)" in cautions[3]
    assert timing_cautions(rows[3:]) == []


def test_compile_runs_the_compiled_stages_and_counts_as_eager(capsys):
    """`--compile eager` runs the vision path and the LLM through torch.compile (dynamo only: quick on a CPU),
    and the tokens and sequences are eager's (that the fixed path compiles whole: tests/modeling/test_compile.py)."""
    quick = ["--repeats", "1", "--warmup", "1", "--new-tokens", "2", "--text-tokens", "8"]
    arguments = ["bench", "--arch", "tiny", "--methods", "prumerge,prumerge_plus@16", *quick, "--json"]
    torch._dynamo.reset()
    cli_main([*arguments, "--compile", "eager"])
    compiled = json.loads(capsys.readouterr().out)
    cli_main(arguments)
    eager = json.loads(capsys.readouterr().out)
    assert [row["compile"] for row in compiled] == ["eager"] * 3 and eager[0]["compile"] is None
    for ours, reference in zip(compiled, eager, strict=True):
        assert ours["method"] == reference["method"]
        assert ours["visual_tokens_per_image"] == reference["visual_tokens_per_image"]
        assert ours["sequence_length"] == reference["sequence_length"]
