"""`export` of LLaVA-NeXT: the Hub folder with its AnyRes processor files, loaded without the package under
each major (PRUMERGE_TEST_PYTHONS), and `export --from-hf` of a stock LLaVA-NeXT checkpoint."""

import json
import re
import shutil

import pytest
import torch
from transformers import AutoProcessor

from llava_prumerge import LlavaNextPruMergeForConditionalGeneration
from llava_prumerge.cli import main
from llava_prumerge.errors import InvalidHubFolder
from llava_prumerge.hub_upload.validate import validate_hub_folder
from llava_prumerge.modeling.errors import VisualInputError
from llava_prumerge.testing.files import edit_json
from llava_prumerge.testing.model_tester import make_image, stock_twin, visible_log_probs
from llava_prumerge.testing.subprocesses import REMOTE_PRELUDE, run_offline
from llava_prumerge.testing.tiny_next import tiny_next_model, tiny_next_processor

PROMPT = "USER: <image>\nWhat is shown? ASSISTANT:"
NEW_TOKENS = 5


@pytest.fixture(scope="module")
def next_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("next-export") / "tiny-llava-next-prumerge"
    main(["export", "--tiny", "--arch", "llava-next", "--out", str(out)])
    return out


def test_folder_holds_the_anyres_processor_files_and_the_llava_hf_layout(next_folder):
    image_settings = json.loads((next_folder / "preprocessor_config.json").read_text())
    assert image_settings["image_processor_type"] == "LlavaNextImageProcessor"
    assert image_settings["image_grid_pinpoints"] == [[56, 112], [112, 56], [112, 112]]
    processor_settings = json.loads((next_folder / "processor_config.json").read_text())
    assert processor_settings["processor_class"] == "LlavaNextProcessor"
    assert processor_settings["num_additional_image_tokens"] == 1
    weight_map = json.loads((next_folder / "model.safetensors.index.json").read_text())["weight_map"]
    assert "image_newline" in weight_map
    assert all(name.startswith(("language_model.", "vision_tower.vision_model.", "multi_modal_projector.", "image_newline"))
               for name in weight_map)  # fmt: skip
    card = (next_folder / "README.md").read_text()
    assert "LLaVA-NeXT (AnyRes) with **PruMerge**" in card and "up to 4 high-resolution crops" in card


REMOTE_LOAD_SCRIPT = (
    REMOTE_PRELUDE
    + r"""
from PIL import Image
model = auto.from_pretrained(folder, trust_remote_code=True)
assert type(model).__name__ == "LlavaNextPruMergeForConditionalGeneration", type(model)
processor = transformers.AutoProcessor.from_pretrained(folder, trust_remote_code=True)
images = [Image.open(path) for path in spec["images"]]
inputs = processor(images=images, text=[spec["prompt"]] * len(images), return_tensors="pt", padding=True)
assert inputs["input_ids"].tolist() == spec["input_ids"], "placeholder expansion differs"
assert inputs["image_sizes"].tolist() == spec["image_sizes"]
sequences = model.generate(**inputs, max_new_tokens=spec["n"], do_sample=False)
assert sequences[:, -spec["n"]:].tolist() == spec["new_tokens"], sequences[:, -spec["n"]:].tolist()
assert model(**inputs).visual_token_counts == spec["counts"]
torch.testing.assert_close(visible_log_probs(model, inputs), torch.tensor(spec["log_probs"]), rtol=0, atol=1e-4)
mapped = auto.from_pretrained(folder, trust_remote_code=True, device_map="auto")
assert mapped.generate(**inputs, max_new_tokens=spec["n"], do_sample=False)[:, -spec["n"]:].tolist() == spec["new_tokens"]
torch.testing.assert_close(visible_log_probs(mapped, inputs), torch.tensor(spec["log_probs"]), rtol=0, atol=1e-4)
print("remote code OK under transformers", transformers.__version__)
"""
)


def test_exported_folder_loads_without_the_package_under_each_major(tmp_path, next_folder):
    model = LlavaNextPruMergeForConditionalGeneration.from_pretrained(next_folder).eval()
    processor = AutoProcessor.from_pretrained(next_folder)
    paths = []
    for seed, (width, height) in enumerate([(90, 40), (120, 112)]):
        paths.append(str(tmp_path / f"image{seed}.png"))
        make_image(seed, width=width, height=height).save(paths[-1])
    from PIL import Image

    images = [Image.open(path) for path in paths]
    inputs = processor(images=images, text=[PROMPT] * 2, return_tensors="pt", padding=True)
    with torch.no_grad():
        sequences = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
        counts = model(**inputs).visual_token_counts
    spec = {
        "folder": str(next_folder), "images": paths, "prompt": PROMPT, "n": NEW_TOKENS,
        "input_ids": inputs["input_ids"].tolist(), "image_sizes": inputs["image_sizes"].tolist(),
        "new_tokens": sequences[:, -NEW_TOKENS:].tolist(), "counts": counts,
        "log_probs": visible_log_probs(model, inputs).tolist(),
    }  # fmt: skip
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    for output in run_offline(REMOTE_LOAD_SCRIPT, ["spec.json"], tmp_path).values():
        assert "remote code OK" in output


def test_export_from_a_stock_llava_next_with_no_reduction_equals_it(tmp_path, tiny_inputs):
    out = tmp_path / "hub"
    main(
        [
            "export",
            "--from-hf",
            str(tiny_inputs.llava_next_hf),
            "--token-reduction",
            "none",
            "--out",
            str(out),
        ]
    )
    wrapped = LlavaNextPruMergeForConditionalGeneration.from_pretrained(out).eval()
    stock = stock_twin(wrapped.config).from_pretrained(tiny_inputs.llava_next_hf).eval()
    processor = AutoProcessor.from_pretrained(out)
    images = [make_image(1, width=90, height=40), make_image(2, width=56, height=120)]
    inputs = processor(images=images, text=[PROMPT, PROMPT + " Be brief."], return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(**inputs).logits, stock(**inputs).logits)


@pytest.mark.parametrize(
    "pinpoints, message",
    [
        ([], "non-empty list"),
        ([[56]], "each must be [height, width]"),
        ([[56, 60]], "multiples of the tower's"),
    ],
)
def test_broken_grid_pinpoints_are_refused_by_validation_and_by_a_forward(
    tmp_path, next_folder, pinpoints, message
):
    """`image_grid_pinpoints=[]` once passed upload validation, then every forward failed with a TypeError."""
    broken = shutil.copytree(next_folder, tmp_path / "broken")
    edit_json(broken / "config.json", image_grid_pinpoints=pinpoints)
    with pytest.raises(InvalidHubFolder, match=re.escape(message)):
        validate_hub_folder(broken)
    processor = tiny_next_processor()
    inputs = processor(
        images=[make_image(1, 100, 44)], text="USER: <image>\nHi ASSISTANT:", return_tensors="pt"
    )
    model = tiny_next_model(tokenizer=processor.tokenizer)
    model.config.image_grid_pinpoints = pinpoints
    with pytest.raises(VisualInputError, match=re.escape(message)):
        model(**inputs)
