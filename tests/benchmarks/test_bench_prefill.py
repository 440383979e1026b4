"""`bench --whole-prefill`: the model's forward timed as one call, pixels to the first token, eager or compiled
whole, with fixed budgets' prompts in the budget's layout."""

import json

import pytest

from llava_prumerge.cli import main as cli_main

QUICK = ["--threads", "1", "--repeats", "1", "--text-tokens", "12"]
FIELDS = {
    "arch", "checkpoint", "layers", "device", "dtype", "threads", "compile", "repeats", "warmup", "batch_size",
    "method", "prompt_layout", "visual_tokens_per_image", "sequence_length", "ttft_ms", "ttft_ms_range",
    "ttft_speedup_vs_none",
}  # fmt: skip


def whole_prefill_rows(capsys, *arguments) -> list[dict]:
    cli_main(["bench", "--arch", "tiny", "--whole-prefill", *QUICK, *arguments, "--json"])
    return json.loads(capsys.readouterr().out)


def test_rows_say_what_reached_the_llm_and_how_long_the_first_token_took(capsys):
    rows = whole_prefill_rows(capsys, "--methods", "prumerge,prumerge_plus@24", "--batch-size", "1,2")
    assert [(row["batch_size"], row["method"]) for row in rows] == [
        (batch, method) for batch in (1, 2) for method in ("none", "prumerge", "prumerge_plus@24")
    ]
    text = 12  # every prompt: bos and the text (--text-tokens), around the image's run
    layouts = {"none": ("stock", 196), "prumerge": ("stock", None), "prumerge_plus@24": ("budget", 24)}
    for row in rows:
        assert set(row) == FIELDS and row["compile"] is None
        assert row["ttft_ms_range"][0] <= row["ttft_ms"] <= row["ttft_ms_range"][1]
        layout, tokens = layouts[row["method"]]
        assert row["prompt_layout"] == layout
        if tokens is not None:
            assert row["visual_tokens_per_image"] == tokens and row["sequence_length"] == text + tokens
        else:  # adaptive: fewer, and the prompt compacted to them
            assert row["visual_tokens_per_image"] < 196 and row["sequence_length"] < text + 196
        none = next(r for r in rows if r["batch_size"] == row["batch_size"] and r["method"] == "none")
        assert row["ttft_speedup_vs_none"] == pytest.approx(none["ttft_ms"] / row["ttft_ms"])


def test_compiled_whole_a_fixed_budget_reaches_the_llm_as_in_eager(capsys):
    """--compile compiles the forward whole (here with a backend that only traces): the rows eager gives."""
    options = ["--methods", "prumerge_plus@24"]
    compiled = whole_prefill_rows(capsys, *options, "--compile", "eager", "--warmup", "2")
    eager = whole_prefill_rows(capsys, *options)
    assert [row["compile"] for row in compiled] == ["eager", "eager"]
    for ours, expected in zip(compiled, eager, strict=True):
        for field in ("method", "prompt_layout", "visual_tokens_per_image", "sequence_length"):
            assert ours[field] == expected[field]


def test_the_table_names_the_layouts_and_the_compilation(capsys):
    cli_main(["bench", "--arch", "tiny", "--whole-prefill", "--methods", "prumerge_plus@24", *QUICK])
    out = capsys.readouterr().out
    assert "pixels to the first token, eager" in out and "one placeholder per reduced token" in out
    assert "prumerge_plus@24" in out and "x none" in out


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--arch", "tiny-next"], "--whole-prefill measures LLaVA-1.5-style images"),
        (["--arch", "tiny", "--plot", "bench.png"], "--whole-prefill times the forward as one call"),
        (
            ["--arch", "tiny", "--compile", "eager", "--warmup", "1"],
            "--whole-prefill --compile needs --warmup 2",
        ),
        (["--arch", "tiny", "--vision-only"], "not allowed with argument"),
    ],
)
def test_settings_it_cannot_measure_are_refused(arguments, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["bench", "--whole-prefill", *arguments, *QUICK])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
