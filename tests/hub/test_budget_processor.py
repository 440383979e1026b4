"""Fixed-budget Hub folders: their processor expands `<image>` to exactly the budget (transformers 5), with and
without this package; other folders keep the stock processor."""

import json
import shutil

import pytest
import torch
from transformers import AutoProcessor, LlavaProcessor

from llava_prumerge.cli import main
from llava_prumerge.errors import InvalidHubFolder
from llava_prumerge.hub_upload.validate import validate_hub_folder
from llava_prumerge.modeling.processing_llava_prumerge import LlavaPruMergeProcessor
from llava_prumerge.modeling.runtime_compat import TRANSFORMERS_MAJOR
from llava_prumerge.testing.files import edit_json
from llava_prumerge.testing.model_tester import make_image
from llava_prumerge.testing.subprocesses import run_offline

BUDGET = 16
TWO_IMAGES = "USER: <image><image>\nWhat differs? ASSISTANT:"
PATCHES = 196  # the tiny model's 14 x 14


@pytest.fixture(scope="module")
def budget_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("budget") / "tiny-plus-16"
    main(["export", "--tiny", "--token-reduction", "prumerge_plus", "--no-adaptive", "--num-visual-tokens", str(BUDGET), "--out", str(out)])  # fmt: skip
    return out


def test_a_fixed_budget_folder_names_its_processor_with_the_budget(budget_folder):
    settings = json.loads((budget_folder / "processor_config.json").read_text())
    assert settings["processor_class"] == "LlavaPruMergeProcessor" and settings["num_image_tokens"] == BUDGET
    assert settings["auto_map"] == {"AutoProcessor": "processing_llava_prumerge.LlavaPruMergeProcessor"}
    assert (
        "class LlavaPruMergeProcessor(LlavaProcessor)"
        in (budget_folder / "processing_llava_prumerge.py").read_text()
    )


@pytest.mark.parametrize("flags", [[], ["--token-reduction", "none"]], ids=["adaptive", "none"])
def test_other_folders_keep_the_stock_processor(tmp_path, flags):
    main(["export", "--tiny", *flags, "--out", str(tmp_path / "hub")])
    assert (
        json.loads((tmp_path / "hub" / "processor_config.json").read_text())["processor_class"]
        == "LlavaProcessor"
    )
    assert not (tmp_path / "hub" / "processing_llava_prumerge.py").exists()


def test_the_prompt_has_the_budget_per_image_and_the_model_reads_either_form(budget_folder, tester):
    """transformers 5 writes the budget per image; 4.57's LlavaProcessor has no per-image hook (one per patch)."""
    processor = AutoProcessor.from_pretrained(budget_folder)
    stock = LlavaProcessor.from_pretrained(budget_folder)
    assert type(processor) is LlavaPruMergeProcessor
    images = [make_image(1), make_image(2)]
    inputs = processor(images=images, text=TWO_IMAGES, return_tensors="pt")
    expanded = stock(images=images, text=TWO_IMAGES, return_tensors="pt")
    image_token_id = processor.image_token_id
    per_image = BUDGET if TRANSFORMERS_MAJOR >= 5 else PATCHES
    assert int((inputs["input_ids"] == image_token_id).sum()) == 2 * per_image
    assert int((expanded["input_ids"] == image_token_id).sum()) == 2 * PATCHES
    model = tester.get_model(token_reduction="prumerge_plus", adaptive=False, num_visual_tokens=BUDGET)
    with torch.no_grad():
        outputs = [model.generate(**batch, max_new_tokens=5, do_sample=False) for batch in (inputs, expanded)]
    assert outputs[0][0, -5:].tolist() == outputs[1][0, -5:].tolist()


REMOTE_PROCESSOR_SCRIPT = r"""
import sys
sys.modules["llava_prumerge"] = None  # this package is not installed
import transformers
from PIL import Image

processor = transformers.AutoProcessor.from_pretrained(sys.argv[1], trust_remote_code=True)
assert type(processor).__module__.startswith("transformers_modules."), type(processor).__module__
inputs = processor(images=[Image.new("RGB", (60, 40))] * 2, text=sys.argv[2], return_tensors="pt")
print("PLACEHOLDERS", transformers.__version__.split(".")[0], int((inputs["input_ids"] == processor.image_token_id).sum()))
"""


def test_the_processor_loads_as_remote_code_under_each_major(budget_folder, tmp_path):
    outputs = run_offline(REMOTE_PROCESSOR_SCRIPT, [str(budget_folder), TWO_IMAGES], tmp_path)
    for output in outputs.values():
        major, count = output.split("PLACEHOLDERS ")[1].split()
        assert int(count) == 2 * (BUDGET if int(major) >= 5 else PATCHES), output


def test_a_folder_naming_the_processor_without_its_code_is_invalid(budget_folder, tmp_path):
    broken = shutil.copytree(budget_folder, tmp_path / "broken")
    (broken / "processing_llava_prumerge.py").unlink()
    edit_json(broken / "processor_config.json", num_image_tokens="16")
    with pytest.raises(InvalidHubFolder) as error:
        validate_hub_folder(broken)
    assert "processing_llava_prumerge.py is missing" in str(error.value)
    assert "no integer num_image_tokens" in str(error.value)


def test_the_processor_code_is_accepted_only_as_the_package_writes_it(budget_folder, tmp_path):
    edited = shutil.copytree(budget_folder, tmp_path / "edited")
    code = edited / "processing_llava_prumerge.py"
    code.write_text(code.read_text() + "\nimport os as o\n")
    with pytest.raises(InvalidHubFolder, match="processing_llava_prumerge.py differs from the remote code"):
        validate_hub_folder(edited)
