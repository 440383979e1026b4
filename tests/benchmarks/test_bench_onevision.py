"""`bench` and `analyze` on LLaVA-OneVision: the tiny architecture end to end with the model's own counts, the
stock count (anyres_max shrink included) as the processor writes it, the 7B shape and its 1152x1152 image.
No timing thresholds: this machine is shared and timings are noise here."""

import contextlib
import io
import json

import pytest
import torch

from llava_prumerge.benchmarks import measure, models
from llava_prumerge.benchmarks.modalities import OnevisionPath, visual_path
from llava_prumerge.benchmarks.roofline import (
    ARCHITECTURES,
    LLAVA_ONEVISION_GRID_PINPOINTS,
    AnyresImage,
    prompt_of_config,
)
from llava_prumerge.cli import main as cli_main
from llava_prumerge.testing.model_tester import make_image
from llava_prumerge.testing.tiny_onevision import (
    TINY_ASPECT_RATIO,
    TINY_ONEVISION_PINPOINTS,
    tiny_onevision_model,
    tiny_onevision_processor,
)

QUICK = ["--repeats", "1", "--warmup", "0", "--new-tokens", "2", "--text-tokens", "8"]
SEED = 3


def test_tiny_onevision_bench_counts_are_the_models_own(tmp_path):
    json_path = tmp_path / "rows.json"
    with contextlib.redirect_stdout(io.StringIO()) as table:
        cli_main(["bench", "--arch", "tiny-onevision", "--seed", str(SEED), *QUICK, "--json", str(json_path)])
    rows = json.loads(json_path.read_text())
    subject = models.build_random_subject("tiny-onevision", None, torch.float32, torch.device("cpu"), SEED)
    assert isinstance(subject.visual, OnevisionPath)
    inputs = models.make_inputs(subject, 1, text_tokens=8, seed=SEED)
    for row in rows:
        with torch.inference_mode():
            output = subject.model(
                input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, pixel_values=inputs.pixel_values,
                image_sizes=subject.visual.image_sizes(1), reduction=measure.method_settings(subject, row["method"]),
            )  # fmt: skip
        assert row["visual_tokens_per_image"] == output.visual_token_counts[0], row["method"]
    assert rows[0]["visual_tokens_per_image"] == ARCHITECTURES["tiny-onevision"].prompt.stock_tokens
    assert "stock LLaVA-OneVision vision path (all 3 layers" in table.getvalue()
    assert "layers up to -1, reduction-layer q/k" in table.getvalue()


def test_the_stock_count_is_the_processors_shrink_included():
    """`AnyresImage` (pure Python, for analyze) counts what the stock processor writes, past anyres_max too."""
    processor = tiny_onevision_processor()
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    crops = int(TINY_ASPECT_RATIO.removeprefix("anyres_max_"))
    shrunk = 0
    for width, height in [(90, 40), (120, 112), (160, 150), (56, 56), (200, 30), (31, 57), (168, 60)]:
        image = AnyresImage(height, width, 56, 4, tuple(map(tuple, TINY_ONEVISION_PINPOINTS)), crops)
        inputs = processor(images=make_image(0, width, height), text="<image>", return_tensors="pt")
        assert image.stock_tokens == int((inputs["input_ids"] == image_id).sum()), (width, height)
        top, bottom, left, right = image.unpadded_window
        shrunk += image.fed_map != (bottom - top, right - left)
    assert shrunk >= 2


def test_llava_onevision_7b_is_costed_with_a_1152_image_and_the_published_shapes():
    shape = ARCHITECTURES["llava-onevision-7b"]
    image = shape.prompt.anyres
    assert (image.height, image.width, image.grid, image.max_crops) == (1152, 1152, (3, 3), 9)
    assert shape.prompt.stock_tokens == 729 + 81 * 82 == 7371
    assert shape.prompt.prumerge_tokens <= 0.1 * shape.prompt.stock_tokens
    config = models.random_architecture("llava-onevision-7b", layers=2).config
    assert (config.text_config.hidden_size, config.text_config.num_key_value_heads) == (3584, 4)
    assert (
        config.vision_config.model_type == "siglip_vision_model"
        and config.vision_aspect_ratio == "anyres_max_9"
    )
    # a larger map is shrunk to about 9 crops' patches: 2304 x 2304 (6 x 6 crops, 162 x 162) feeds 81 x 81
    big = AnyresImage(2304, 2304, 384, 14, LLAVA_ONEVISION_GRID_PINPOINTS, 9)
    assert big.grid == (6, 6) and big.fed_map == (81, 81)


@pytest.mark.parametrize("model_type", ["llava_onevision", "llava_onevision_prumerge"])
def test_analyze_reads_a_onevision_config(tmp_path, model_type, capsys):
    config = tiny_onevision_model().config.to_dict()
    config["model_type"] = model_type
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert prompt_of_config(config) == ARCHITECTURES["tiny-onevision"].prompt
    cli_main(["analyze", "--arch", str(tmp_path), "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["visual_tokens"] == ARCHITECTURES["tiny-onevision"].prompt.stock_tokens


def test_visual_path_of_a_onevision_model_is_its_images():
    path = visual_path(tiny_onevision_model())
    assert isinstance(path, OnevisionPath) and path.prompt == ARCHITECTURES["tiny-onevision"].prompt


def test_a_llava_onevision_checkpoint_is_benchmarked_on_its_views_without_torchvision(tmp_path, capsys):
    """The bench reads the folder's tokenizer and image processor, not its processor (whose video part needs
    torchvision)."""
    folder = tmp_path / "tiny-llava-onevision-prumerge"
    cli_main(["export", "--tiny", "--arch", "llava-onevision", "--out", str(folder)])
    capsys.readouterr()
    cli_main(["bench", "--model", str(folder), *QUICK, "--methods", "none,prumerge", "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert [row["method"] for row in rows] == ["none", "prumerge"]
    assert rows[0]["visual_tokens_per_image"] == ARCHITECTURES["tiny-onevision"].prompt.stock_tokens
    assert rows[1]["visual_tokens_per_image"] < rows[0]["visual_tokens_per_image"] / 4
