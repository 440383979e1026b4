"""`llava-prumerge bench`: runs end to end on the tiny architecture and on a checkpoint folder, every
JSON field, exact KV-cache sizes, the plot, --reducer-only, and clear errors. No timing thresholds:
this machine is shared and timings are noise here."""

import json

import pytest
import torch
from PIL import Image

from llava_prumerge.benchmarks import measure, models, reducer
from llava_prumerge.cli import main as cli_main
from llava_prumerge.testing.tiny import tiny_config, tiny_model, tiny_processor

QUICK = ["--repeats", "1", "--warmup", "0", "--new-tokens", "2", "--text-tokens", "8"]
FIELDS = {
    # what ran
    "arch", "checkpoint", "layers", "full_depth_layers", "device", "dtype", "threads",
    "text_tokens", "new_tokens", "repeats", "warmup", "batch_size", "method",
    # measured
    "visual_tokens_per_image", "visual_tokens_min", "visual_tokens_max", "sequence_length",
    "vision_ms", "stock_vision_ms", "vision_vs_stock", "reduction_layer_qk_ms", "reducer_ms",
    "reduction_overhead_vs_vision", "projector_compaction_ms", "llm_prefill_ms", "llm_prefill_ms_per_layer",
    "lm_head_ms", "ttft_ms", "decode_ms", "decode_tokens_per_s", "kv_cache_bytes_per_sample",
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
        may_be_empty = {"checkpoint", "peak_memory_increase_bytes", "peak_memory_vs_none"}  # not on every OS
        assert [k for k, v in row.items() if v is None and k not in may_be_empty] == []
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
    cli_main(["bench", "--arch", "tiny", "--layers", "1", *QUICK])
    out = capsys.readouterr().out
    assert "only 1 of the 2 LLM layers are built" in out
    assert "ESTIMATED full-depth (2 LLM layers)" in out
    assert "stock LLaVA vision path" in out


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
    ],
)
def test_inconsistent_arguments_are_explained(arguments, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["bench", *arguments])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("llava-prumerge bench: error: ") and message in err


def test_a_model_too_big_for_memory_is_refused_before_it_is_built(monkeypatch):
    monkeypatch.setattr(models, "_available_memory_bytes", lambda device: 8 * 10**9)
    with pytest.raises(
        ValueError,
        match=r"7\.06B parameters need 28\.3 GB in float32 but cpu has 8\.0 GB available; .*--layers",
    ):
        models.build_random_subject("llava-1.5-7b", None, torch.float32, torch.device("cpu"), seed=0)
