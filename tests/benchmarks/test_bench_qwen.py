"""`bench` and `analyze` on Qwen-VL: the tiny architecture end to end with the model's own counts, the
processor's resizing reproduced in pure Python (for analyze), the 7B shape and its 1280x720 image, and the
image size argument. No timing thresholds: this machine is shared and timings are noise here."""

import contextlib
import io
import json

import pytest
import torch
from PIL import Image

from llava_prumerge.benchmarks import measure, models
from llava_prumerge.benchmarks.modalities import QwenPath
from llava_prumerge.benchmarks.roofline import (
    ARCHITECTURES,
    QWEN_MAX_PIXELS,
    QWEN_MIN_PIXELS,
    prompt_of_config,
    qwen_grid,
)
from llava_prumerge.cli import main as cli_main
from llava_prumerge.testing.tiny_qwen import tiny_qwen_model

QUICK = ["--repeats", "1", "--warmup", "0", "--new-tokens", "2", "--text-tokens", "8"]
SEED = 3


def test_tiny_qwen_bench_counts_are_the_models_own(tmp_path):
    json_path = tmp_path / "rows.json"
    with contextlib.redirect_stdout(io.StringIO()) as table:
        cli_main(["bench", "--arch", "tiny-qwen", "--seed", str(SEED), *QUICK, "--json", str(json_path)])
    rows = json.loads(json_path.read_text())
    subject = models.build_random_subject("tiny-qwen", None, torch.float32, torch.device("cpu"), SEED)
    assert isinstance(subject.visual, QwenPath)
    inputs = models.make_inputs(subject, 1, text_tokens=8, seed=SEED)
    for row in rows:
        with torch.inference_mode():
            output = subject.model(
                input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, pixel_values=inputs.pixel_values,
                image_grid_thw=subject.visual.grid, reduction=measure.method_settings(subject, row["method"]),
            )  # fmt: skip
        assert row["visual_tokens_per_image"] == output.visual_token_counts[0], row["method"]
    assert rows[0]["visual_tokens_per_image"] == ARCHITECTURES["tiny-qwen"].prompt.stock_tokens
    assert "stock Qwen-VL vision path" in table.getvalue()


@pytest.mark.parametrize("size", [(720, 1280), (100, 3000), (30, 40), (2000, 2000), (4000, 600), (48, 64)])
def test_the_grid_is_the_processors(size):
    """`qwen_grid` (pure Python, for analyze) resizes as Qwen-VL's image processor does."""
    from transformers import Qwen2VLImageProcessor

    height, width = size
    processor = Qwen2VLImageProcessor(min_pixels=QWEN_MIN_PIXELS, max_pixels=QWEN_MAX_PIXELS)
    grid = processor(images=[Image.new("RGB", (width, height))], return_tensors="pt")["image_grid_thw"][0]
    assert qwen_grid(height, width) == tuple(grid[1:].tolist())


def test_qwen2_5_vl_7b_is_costed_with_a_1280x720_image_and_the_published_shapes(capsys):
    assert ARCHITECTURES["qwen2.5-vl-7b"].prompt.stock_tokens == 52 * 92 // 4 == 1196
    config = models.random_architecture("qwen2.5-vl-7b", layers=2).config
    assert (config.text_config.hidden_size, config.text_config.num_key_value_heads) == (3584, 4)
    assert (config.vision_config.depth, config.vision_config.fullatt_block_indexes) == (32, [7, 15, 23, 31])
    tiny = tiny_qwen_model().config.to_dict()
    assert prompt_of_config(tiny).stock_tokens == qwen_grid(720, 1280, 4)[0] * qwen_grid(720, 1280, 4)[1] // 4
    cli_main(["analyze", "--arch", "qwen2.5-vl-7b", "--json"])
    assert json.loads(capsys.readouterr().out)[0]["visual_tokens"] == 1196


def test_the_image_size_is_width_by_height(capsys):
    rows = json.loads(
        _bench_json(["--arch", "tiny-qwen", "--image-size", "80x40", "--methods", "none"], capsys)
    )
    assert rows[0]["visual_tokens_per_image"] == qwen_grid(40, 80, 4)[0] * qwen_grid(40, 80, 4)[1] // 4
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["bench", "--arch", "tiny-qwen", "--image-size", "80by40"])
    assert exit_info.value.code == 2 and "is not WIDTHxHEIGHT in pixels" in capsys.readouterr().err


def _bench_json(arguments, capsys) -> str:
    capsys.readouterr()
    cli_main(["bench", *arguments, *QUICK, "--json"])
    return capsys.readouterr().out


def test_a_qwen_checkpoint_is_benched_with_its_own_processors_bounds(tmp_path, capsys):
    """The folder's image processor (tiny bounds: 256 to 4096 pixels) decides the image's tokens."""
    folder = tmp_path / "tiny-qwen2.5-vl-prumerge"
    cli_main(["export", "--tiny", "--arch", "qwen2.5-vl", "--out", str(folder)])
    rows = json.loads(
        _bench_json(["--model", str(folder), "--image-size", "64x48", "--methods", "none,prumerge"], capsys)
    )
    assert (
        rows[0]["visual_tokens_per_image"] == 48
    )  # 64 x 48 within 4096 pixels: 12 x 16 patches, merged 2 x 2
    assert rows[1]["visual_tokens_per_image"] < 48
