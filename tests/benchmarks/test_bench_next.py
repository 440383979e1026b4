"""`llava-prumerge bench` on LLaVA-NeXT (AnyRes): the tiny architecture end to end, token counts that are the
model's own, the processor's stock count, exact fixed budgets and KV-cache sizes, the 7B shape, errors.
No timing thresholds: this machine is shared and timings are noise here."""

import contextlib
import functools
import io
import json

import pytest
import torch
from PIL import Image

from llava_prumerge.benchmarks import measure, models
from llava_prumerge.benchmarks.modalities import AnyresPath, visual_path
from llava_prumerge.benchmarks.roofline import ARCHITECTURES, LLAVA_NEXT_GRID_PINPOINTS
from llava_prumerge.cli import main as cli_main
from llava_prumerge.testing.tiny_next import tiny_next_config, tiny_next_model, tiny_next_processor

QUICK = ["--repeats", "1", "--warmup", "0", "--new-tokens", "2", "--text-tokens", "8"]
PROMPT = ARCHITECTURES["tiny-next"].prompt
METHODS = ("none", "prumerge", "prumerge_plus", *PROMPT.fixed_budgets)
SEED = 3


@pytest.fixture(scope="module")
def tiny_next_run(tmp_path_factory):
    """One tiny LLaVA-NeXT run at batch sizes 1 and 2 with its default methods, its rows and its table."""
    json_path = tmp_path_factory.mktemp("bench") / "rows.json"
    arguments = ["bench", "--arch", "tiny-next", "--batch-size", "1,2", "--seed", str(SEED), *QUICK]
    with contextlib.redirect_stdout(io.StringIO()) as table:
        cli_main([*arguments, "--json", str(json_path)])
    return json.loads(json_path.read_text()), table.getvalue()


@functools.cache
def bench_subject() -> models.BenchSubject:
    """The model the bench builds for tiny-next with the run's seed (the same weights)."""
    return models.build_random_subject("tiny-next", None, torch.float32, torch.device("cpu"), SEED)


def model_counts(batch_size: int, label: str) -> list[int]:
    """The visual tokens per image the model itself reports in a forward pass on the bench's inputs."""
    subject = bench_subject()
    inputs = models.make_inputs(subject, batch_size, text_tokens=8, seed=SEED)
    with torch.inference_mode():
        output = subject.model(
            input_ids=inputs.input_ids,
            attention_mask=inputs.attention_mask,
            pixel_values=inputs.pixel_values,
            image_sizes=subject.visual.image_sizes(batch_size),
            reduction=measure.method_settings(subject, label),
        )
    return output.visual_token_counts


def test_tiny_next_compares_the_fields_budgets_by_default(tiny_next_run):
    rows, _ = tiny_next_run
    assert [(r["batch_size"], r["method"]) for r in rows] == [(b, m) for b in (1, 2) for m in METHODS]
    for row in rows:
        assert [k for k, v in row.items() if v is None and k not in measure.NULLABLE_FIELDS] == []
        assert (row["arch"], row["modality"], row["frames"], row["layers"]) == ("tiny-next", "image", 5, 2)


@pytest.mark.parametrize("batch_size", [1, 2])
def test_tiny_next_tokens_are_the_models_own_counts(tiny_next_run, batch_size):
    rows, _ = tiny_next_run
    for row in (r for r in rows if r["batch_size"] == batch_size):
        counts = model_counts(batch_size, row["method"])
        assert (row["visual_tokens_min"], row["visual_tokens_max"]) == (min(counts), max(counts)), row[
            "method"
        ]
        assert row["visual_tokens_per_image"] == pytest.approx(sum(counts) / batch_size)
        assert row["tokens_vs_stock"] == pytest.approx(row["visual_tokens_per_image"] / PROMPT.stock_tokens)


def test_tiny_next_stock_count_is_the_processors(tiny_next_run):
    """`none` feeds every placeholder LlavaNextProcessor writes for the bench's image, newlines included."""
    processor = tiny_next_processor()
    image = PROMPT.anyres
    picture = Image.new("RGB", (image.width, image.height), (90, 140, 200))
    inputs = processor(images=[picture], text=["USER: <image>\nhi ASSISTANT:"], return_tensors="pt")
    placeholders = int((inputs["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<image>")).sum())
    rows, _ = tiny_next_run
    for row in rows:
        if row["method"] == "none":
            assert row["visual_tokens_min"] == row["visual_tokens_max"] == placeholders
        elif row["fixed_tokens"] is not None:  # the whole image's budget, newlines included: exactly
            assert row["visual_tokens_min"] == row["visual_tokens_max"] == row["fixed_tokens"]
            assert row["token_reduction"] == "prumerge_plus"
        else:
            assert row["visual_tokens_max"] < placeholders


def test_tiny_next_kv_cache_is_that_of_the_compacted_prompt(tiny_next_run):
    rows, _ = tiny_next_run
    text = tiny_next_config().text_config
    head_dim = text.hidden_size // text.num_attention_heads
    for row in rows:
        if row["batch_size"] == 1:  # no padding: the image's tokens, then the text (bos included)
            assert row["sequence_length"] == row["visual_tokens_max"] + row["text_tokens"]
        expected = row["layers"] * 2 * text.num_key_value_heads * row["sequence_length"] * head_dim * 4
        assert row["kv_cache_bytes_per_sample"] == expected
    budget = PROMPT.fixed_budgets[0]
    fixed = next(r for r in rows if r["method"] == budget and r["batch_size"] == 1)
    tokens = int(budget.split("@")[1])
    assert fixed["kv_cache_vs_none"] == pytest.approx((tokens + 8) / (PROMPT.stock_tokens + 8))


def test_tiny_next_table_describes_the_views(tiny_next_run):
    _, table = tiny_next_run
    image = PROMPT.anyres
    assert (
        f"prompt: {PROMPT.stock_tokens} image placeholders (a 112x112 image: base view 196 + 2x2 crops' "
        f"{4 * 196} unpadded patches + {image.newlines} newlines)"
    ) in table
    assert "stock LLaVA-NeXT vision path (all 3 layers" in table and "encode_views" in table


def test_visual_path_of_a_next_model_is_its_architectures():
    path = visual_path(tiny_next_model())
    assert isinstance(path, AnyresPath) and path.frames == 5
    assert path.prompt == PROMPT
    assert PROMPT.methods[3:] == PROMPT.fixed_budgets and len(PROMPT.fixed_budgets) == 3


def test_llava_next_7b_config_has_the_published_shapes():
    architecture = models.random_architecture("llava-next-7b", layers=2)
    config = architecture.config
    vision, text = config.vision_config, config.text_config
    assert (vision.image_size, vision.patch_size, vision.hidden_size, vision.num_hidden_layers) == (
        336,
        14,
        1024,
        24,
    )
    assert config.vision_feature_layer == -2 and config.vision_feature_select_strategy == "default"
    assert [tuple(p) for p in config.image_grid_pinpoints] == list(LLAVA_NEXT_GRID_PINPOINTS)
    assert (config.image_token_id, text.vocab_size, config.image_seq_length) == (32000, 32064, 576)
    assert (text.hidden_size, text.intermediate_size, text.num_attention_heads) == (4096, 11008, 32)
    assert (text.num_hidden_layers, architecture.full_depth_layers) == (2, 32)
    assert ARCHITECTURES["llava-next-7b"].prompt.fixed_budgets == (
        "prumerge_plus@160",
        "prumerge_plus@320",
        "prumerge_plus@640",
    )


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["--methods", "prumerge_plus@1009"],
            "--methods prumerge_plus@1009: more than the 1008 tokens of an unreduced image",
        ),
        (["--methods", "prumerge_plus@11"], "num_visual_tokens=11 does not fit an image of 5 views"),
        (["--layers", "3"], "--layers 3 exceeds tiny-next's 2 LLM layers"),
    ],
)
def test_inconsistent_next_arguments_are_explained_in_one_line(arguments, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["bench", "--arch", "tiny-next", *arguments, *QUICK])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("llava-prumerge bench: error: ") and message in err and err.count("\n") == 1


def test_a_llava_next_checkpoint_folder_is_benchmarked_on_its_views(tmp_path):
    folder = tmp_path / "tiny-llava-next-prumerge"
    cli_main(["export", "--tiny", "--arch", "llava-next", "--out", str(folder)])
    json_path = tmp_path / "rows.json"
    with contextlib.redirect_stdout(io.StringIO()):
        cli_main(["bench", "--model", str(folder), "--methods", "prumerge", *QUICK, "--json", str(json_path)])
    rows = json.loads(json_path.read_text())
    assert [(row["method"], row["checkpoint"], row["frames"]) for row in rows] == [
        ("none", str(folder), 5),
        ("prumerge", str(folder), 5),
    ]
    assert rows[0]["visual_tokens_per_image"] == PROMPT.stock_tokens
    assert rows[1]["visual_tokens_max"] < PROMPT.stock_tokens
