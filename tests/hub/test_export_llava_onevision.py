"""`export` of LLaVA-OneVision: the Hub folder with its processor files, its loading without the package under
each major (PRUMERGE_TEST_PYTHONS) with images of different sizes, a multi-image prompt and a video in one
batch, its processor (in the torchvision overlays, PRUMERGE_TEST_VISION_PYTHONS: the stock processor
builds a video processor), and `export --from-hf` of a stock LLaVA-OneVision checkpoint."""

import json

import pytest
import torch
from safetensors.torch import save_file

from llava_prumerge import LlavaOnevisionPruMergeForConditionalGeneration
from llava_prumerge.cli import main
from llava_prumerge.testing.model_tester import make_image, stock_twin, visible_log_probs
from llava_prumerge.testing.subprocesses import REMOTE_PRELUDE, VISION_PYTHONS, run_offline
from llava_prumerge.testing.tiny_onevision import tiny_clips, tiny_onevision_inputs, tiny_onevision_processor

TEXTS = [
    "USER: <image>\nWhat is shown? ASSISTANT:",
    "USER: <image> and <image>\nWhich is brighter? ASSISTANT:",
    "USER: <video>\nWhat happens? ASSISTANT:",
]
NEW_TOKENS = 4


@pytest.fixture(scope="module")
def onevision_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("onevision-export") / "tiny-llava-onevision-prumerge"
    main(["export", "--tiny", "--arch", "llava-onevision", "--out", str(out)])
    return out


@pytest.fixture(scope="module")
def processor():
    return tiny_onevision_processor()


def batch_of(processor, seed: int = 0):
    """Images of different sizes and crop counts, a multi-image prompt and a video, in one batch."""
    images = [
        [make_image(seed, 120, 112)],
        [make_image(seed + 1, 60, 70), make_image(seed + 2, 160, 150)],
        [],
    ]
    return tiny_onevision_inputs(processor, TEXTS, images, tiny_clips(processor, 1, 4, seed))


def test_folder_holds_the_onevision_processor_files_and_the_llava_hf_layout(onevision_folder):
    image_settings = json.loads((onevision_folder / "preprocessor_config.json").read_text())
    assert image_settings["image_processor_type"] == "LlavaOnevisionImageProcessor"
    assert len(image_settings["image_grid_pinpoints"]) == 9
    video_settings = json.loads((onevision_folder / "video_preprocessor_config.json").read_text())
    assert video_settings["video_processor_type"] == "LlavaOnevisionVideoProcessor"
    assert video_settings["size"] == {"height": 56, "width": 56}
    processor_settings = json.loads((onevision_folder / "processor_config.json").read_text())
    assert processor_settings == {
        "processor_class": "LlavaOnevisionProcessor", "image_token": "<image>", "video_token": "<video>",
        "num_image_tokens": 196, "vision_aspect_ratio": "anyres_max_2", "vision_feature_select_strategy": "full",
    }  # fmt: skip
    weight_map = json.loads((onevision_folder / "model.safetensors.index.json").read_text())["weight_map"]
    assert "image_newline" in weight_map
    assert all(name.startswith(("language_model.", "vision_tower.vision_model.", "multi_modal_projector.",
                                "image_newline", "lm_head")) for name in weight_map)  # fmt: skip
    card = (onevision_folder / "README.md").read_text()
    assert "LLaVA-OneVision with **PruMerge**" in card and "scored by `mean_attention`" in card


REMOTE_LOAD_SCRIPT = (
    REMOTE_PRELUDE
    + r"""
from safetensors.torch import load_file
model = auto.from_pretrained(folder, trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
assert type(model).__name__ == "LlavaOnevisionPruMergeForConditionalGeneration"
tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
inputs = dict(tokenizer(spec["texts"], return_tensors="pt", padding=True))
assert inputs["input_ids"].tolist() == spec["input_ids"], "tokenization differs"
inputs.update(load_file("visual.safetensors"))
n = spec["n"]
sequences = model.generate(**inputs, max_new_tokens=n, do_sample=False)
assert sequences[:, -n:].tolist() == spec["new_tokens"], sequences[:, -n:].tolist()
out = model(**inputs)
assert [out.visual_token_counts, out.video_token_counts] == spec["counts"]
torch.testing.assert_close(visible_log_probs(model, inputs), torch.tensor(spec["log_probs"]), rtol=0, atol=1e-4)
mapped = auto.from_pretrained(folder, trust_remote_code=True, device_map="auto")
assert mapped.generate(**inputs, max_new_tokens=n, do_sample=False)[:, -n:].tolist() == spec["new_tokens"]
print("remote code OK under transformers", transformers.__version__)
"""
)


def test_exported_folder_loads_without_the_package_under_each_major(tmp_path, onevision_folder, processor):
    model = LlavaOnevisionPruMergeForConditionalGeneration.from_pretrained(onevision_folder).eval()
    inputs = batch_of(processor)
    with torch.no_grad():
        sequences = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
        out = model(**inputs)
    visual = ("pixel_values", "image_sizes", "batch_num_images", "pixel_values_videos")
    save_file({name: inputs[name].contiguous() for name in visual}, tmp_path / "visual.safetensors")
    texts = processor.tokenizer.batch_decode(inputs["input_ids"], skip_special_tokens=False)
    spec = {
        "folder": str(onevision_folder), "n": NEW_TOKENS,
        "texts": [text.replace(processor.tokenizer.pad_token, "") for text in texts],
        "input_ids": inputs["input_ids"].tolist(), "new_tokens": sequences[:, -NEW_TOKENS:].tolist(),
        "counts": [out.visual_token_counts, out.video_token_counts],
        "log_probs": visible_log_probs(model, inputs).tolist(),
    }  # fmt: skip
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    for output in run_offline(REMOTE_LOAD_SCRIPT, ["spec.json"], tmp_path).values():
        assert "remote code OK" in output


PROCESSOR_SCRIPT = r"""
import sys
sys.modules["llava_prumerge"] = None
import json
import numpy as np
import transformers
from PIL import Image

spec = json.loads(open(sys.argv[1]).read())
folder = spec["folder"]
processor = transformers.AutoProcessor.from_pretrained(folder, trust_remote_code=True)
assert type(processor).__name__ == "LlavaOnevisionProcessor", type(processor).__name__
assert type(processor.video_processor).__name__.startswith("LlavaOnevisionVideoProcessor")
images = [Image.open(path) for path in spec["images"]]
clip = np.stack([np.asarray(Image.open(path).convert("RGB")) for path in spec["frames"]])
inputs = processor(images=[[images[0]], images[1:], []], videos=[clip], text=spec["texts"], return_tensors="pt", padding=True)
assert inputs["input_ids"].tolist() == spec["input_ids"], "placeholder expansion differs"
assert [n for n in inputs["batch_num_images"].tolist() if n] == [1, 2], inputs["batch_num_images"]  # 4.57 drops the 0
major = int(transformers.__version__.split(".")[0])
auto = transformers.AutoModelForImageTextToText if major >= 5 else transformers.AutoModelForVision2Seq
model = auto.from_pretrained(folder, trust_remote_code=True)
out = model(**inputs)
assert len(out.visual_token_counts) == 3 and len(out.video_token_counts) == 1
assert model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False).shape[1] == inputs["input_ids"].shape[1] + 2
print("processor OK under transformers", transformers.__version__)
"""


@pytest.mark.skipif(
    not VISION_PYTHONS, reason="needs the torchvision overlays (PRUMERGE_TEST_VISION_PYTHONS)"
)
def test_the_folders_processor_expands_images_multi_image_prompts_and_videos_as_the_model_counts(
    tmp_path, onevision_folder, processor, monkeypatch
):
    """The stock processor of the folder writes the placeholders the model's stock counts expect."""
    inputs = batch_of(processor)
    shots = [make_image(0, 120, 112), make_image(1, 60, 70), make_image(2, 160, 150)]
    from llava_prumerge.testing.tiny_video import make_clip

    paths = {"images": [], "frames": []}
    for index, image in enumerate(shots):
        paths["images"].append(str(tmp_path / f"image{index}.png"))
        image.save(paths["images"][-1])
    for index, frame in enumerate(make_clip(0, 4)):
        paths["frames"].append(str(tmp_path / f"frame{index}.png"))
        frame.save(paths["frames"][-1])
    spec = {
        "folder": str(onevision_folder),
        "texts": TEXTS,
        "input_ids": inputs["input_ids"].tolist(),
        **paths,
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    monkeypatch.setattr("llava_prumerge.testing.subprocesses.TEST_PYTHONS", VISION_PYTHONS)
    for output in run_offline(PROCESSOR_SCRIPT, ["spec.json"], tmp_path).values():
        assert "processor OK" in output


def test_export_from_a_stock_llava_onevision_with_no_reduction_equals_it(tmp_path, tiny_inputs, processor):
    out = tmp_path / "hub"
    main(
        [
            "export",
            "--from-hf",
            str(tiny_inputs.llava_onevision_hf),
            "--token-reduction",
            "none",
            "--out",
            str(out),
        ]
    )
    wrapped = LlavaOnevisionPruMergeForConditionalGeneration.from_pretrained(out).eval()
    stock = stock_twin(wrapped.config).from_pretrained(tiny_inputs.llava_onevision_hf).eval()
    assert json.loads((out / "processor_config.json").read_text())["num_image_tokens"] == 196
    inputs = batch_of(processor, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(**inputs).logits, stock(**inputs).logits)
