"""`bench --engine vllm`: the derived fields, usage errors, and (in the vLLM environment) a run on the tiny model."""

import json

import pytest

from llava_prumerge.cli import main
from llava_prumerge.serving.vllm_bench import add_derived_fields, compared_methods


def test_methods_are_none_and_the_fixed_budgets():
    assert compared_methods("prumerge_plus", [64, 128]) == [
        ("none", {"token_reduction": "none"}),
        (
            "prumerge_plus 64",
            {"token_reduction": "prumerge_plus", "adaptive": False, "num_visual_tokens": 64},
        ),
        (
            "prumerge_plus 128",
            {"token_reduction": "prumerge_plus", "adaptive": False, "num_visual_tokens": 128},
        ),
    ]


def test_ratios_and_the_full_depth_estimate():
    rows = [
        {
            "method": "none",
            "batch_size": 4,
            "throughput_s": 10.0,
            "llm_only_throughput_s": 8.0,
            "ttft_ms": 900.0,
        },
        {
            "method": "b64",
            "batch_size": 4,
            "throughput_s": 4.0,
            "llm_only_throughput_s": 2.0,
            "ttft_ms": 300.0,
        },
    ]
    for row in rows:
        row["requests_per_s"], row["total_tokens_per_s"] = 4 / row["throughput_s"], 1.0
    add_derived_fields(rows, layers=2, full_depth_layers=32)
    none, b64 = rows
    assert b64["requests_per_s_vs_none"] == pytest.approx(2.5) and b64[
        "ttft_speedup_vs_none"
    ] == pytest.approx(3)
    assert b64["llm_only_requests_per_s_vs_none"] == pytest.approx(4)
    # vision share 2 s (none) and 2 s (b64), plus 16 x the text-only time
    assert none["estimated_full_depth_requests_per_s"] == pytest.approx(4 / (2 + 128))
    assert b64["estimated_full_depth_requests_per_s_vs_none"] == pytest.approx(130 / 34)


def test_options_of_the_transformers_engine_are_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--engine", "vllm", "--arch", "tiny", "--vision-only"])
    assert (
        exit_info.value.code == 2
        and "--vision-only, --whole-prefill and --plot apply to --engine transformers"
        in capsys.readouterr().err
    )


# what the stock processors write for the bench's image of each tiny model (AnyRes views, native resolution)
STOCK_TOKENS = {"tiny": 196, "tiny-next": 1008, "tiny-onevision": 406, "tiny-qwen": 63}


@pytest.mark.parametrize("arch", list(STOCK_TOKENS))
def test_each_tiny_model_prefills_the_budget_per_image(vllm, tmp_path, arch):
    main(["bench", "--engine", "vllm", "--arch", arch, "--budgets", "16", "--batch-size", "2", "--repeats", "1",
          "--warmup", "0", "--new-tokens", "2", "--json", str(tmp_path / "rows.json")])  # fmt: skip
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [(row["method"], row["prefill_tokens_per_image"]) for row in rows] == [
        ("none", STOCK_TOKENS[arch]),
        ("prumerge_plus 16", 16),
    ]
    for row in rows:
        low, high = row["requests_per_s_range"]
        assert 0 < low <= row["requests_per_s"] <= high and row["ttft_ms"] > 0
    assert rows[1]["requests_per_s_vs_none"] == rows[1]["requests_per_s"] / rows[0]["requests_per_s"]
