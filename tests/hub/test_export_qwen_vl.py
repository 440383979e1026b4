"""`export` of Qwen2.5-VL and Qwen2-VL: the Hub folder in Qwen's own weight layout with its processor files,
its loading without the package under each major (PRUMERGE_TEST_PYTHONS) with images of different sizes, a
multi-image prompt and a video in one batch, and `export --from-hf` of stock checkpoints."""

import json

import pytest
import torch
from safetensors.torch import save_file

from llava_prumerge.cli import main
from llava_prumerge.common.loading import load_prumerge_model
from llava_prumerge.testing.model_tester import make_image, stock_twin, visible_log_probs
from llava_prumerge.testing.subprocesses import REMOTE_PRELUDE, run_offline
from llava_prumerge.testing.tiny_qwen import tiny_qwen_image_processor, tiny_qwen_inputs, tiny_qwen_tokenizer

ARCHS = {"qwen2.5-vl": "Qwen2_5_VL", "qwen2-vl": "Qwen2VL"}
TEXTS = ["USER: <image>\nWhat is it? ASSISTANT:", "USER: <image> and <image>\nWhich? ASSISTANT:",
         "USER: <video>\nWhat happens? ASSISTANT:"]  # fmt: skip
NEW_TOKENS = 4


@pytest.fixture(scope="module", params=list(ARCHS))
def exported(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("qwen-export") / f"tiny-{request.param}-prumerge"
    main(["export", "--tiny", "--arch", request.param, "--out", str(out)])
    return request.param, out


def batch_of(seed: int = 0):
    images = [[make_image(seed, 60, 40)], [make_image(seed + 1, 30, 50), make_image(seed + 2, 64, 64)], []]
    return tiny_qwen_inputs(
        tiny_qwen_tokenizer(), tiny_qwen_image_processor(), TEXTS, images, [[], [], [[2, 6, 8]]]
    )


def test_folder_holds_qwens_weight_layout_and_processor_files(exported):
    arch, folder = exported
    assert json.loads((folder / "processor_config.json").read_text()) == {
        "processor_class": f"{ARCHS[arch]}Processor".replace("Qwen2VLProcessor", "Qwen2VLProcessor")
    }
    image_settings = json.loads((folder / "preprocessor_config.json").read_text())
    assert image_settings["image_processor_type"] == "Qwen2VLImageProcessor"
    assert (image_settings["patch_size"], image_settings["merge_size"]) == (4, 2)
    assert (image_settings["min_pixels"], image_settings["max_pixels"]) == (256, 4096)  # 4.57 reads these
    video_settings = json.loads((folder / "video_preprocessor_config.json").read_text())
    assert video_settings["video_processor_type"] == "Qwen2VLVideoProcessor"
    weight_map = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    assert all(name.startswith(("visual.", "model.", "lm_head.")) for name in weight_map)
    assert any(name.startswith("visual.merger.") for name in weight_map)
    card = (folder / "README.md").read_text()
    assert "with **PruMerge**" in card and "3-D rotary position" in card


REMOTE_LOAD_SCRIPT = (
    REMOTE_PRELUDE
    + r"""
from safetensors.torch import load_file
model = auto.from_pretrained(folder, trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
assert type(model).__name__ == spec["class"], type(model).__name__
tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
inputs = dict(tokenizer(spec["texts"], return_tensors="pt", padding=True))
assert inputs["input_ids"].tolist() == spec["input_ids"], "tokenization differs"
inputs.update(load_file("visual.safetensors"))
n = spec["n"]
sequences = model.generate(**inputs, max_new_tokens=n, do_sample=False)
assert sequences[:, -n:].tolist() == spec["new_tokens"], sequences[:, -n:].tolist()
out = model(**inputs)
assert [out.visual_token_counts, out.video_token_counts] == spec["counts"]
# stock Qwen2.5-VL's two majors differ by up to 1.2e-3 on a video prompt (measured with token_reduction="none")
torch.testing.assert_close(visible_log_probs(model, inputs), torch.tensor(spec["log_probs"]), rtol=0, atol=5e-3)
mapped = auto.from_pretrained(folder, trust_remote_code=True, device_map="auto")
assert mapped.generate(**inputs, max_new_tokens=n, do_sample=False)[:, -n:].tolist() == spec["new_tokens"]
print("remote code OK under transformers", transformers.__version__)
"""
)


def test_exported_folder_loads_without_the_package_under_each_major(tmp_path, exported):
    arch, folder = exported
    model = load_prumerge_model(str(folder))
    inputs = batch_of()
    inputs.pop(
        "mm_token_type_ids", None
    )  # 5.x's processors add it; both majors' models place tokens without it
    with torch.no_grad():
        sequences = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
        out = model(**inputs)
    visual = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")
    save_file({name: inputs[name].contiguous() for name in visual}, tmp_path / "visual.safetensors")
    tokenizer = tiny_qwen_tokenizer()
    texts = [text.replace(tokenizer.pad_token, "") for text in tokenizer.batch_decode(inputs["input_ids"])]
    spec = {
        "folder": str(folder), "class": f"{ARCHS[arch]}PruMergeForConditionalGeneration", "n": NEW_TOKENS,
        "texts": texts, "input_ids": inputs["input_ids"].tolist(), "new_tokens": sequences[:, -NEW_TOKENS:].tolist(),
        "counts": [out.visual_token_counts, out.video_token_counts], "log_probs": visible_log_probs(model, inputs).tolist(),
    }  # fmt: skip
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    for output in run_offline(REMOTE_LOAD_SCRIPT, ["spec.json"], tmp_path).values():
        assert "remote code OK" in output


@pytest.mark.parametrize("arch", list(ARCHS))
def test_export_from_a_stock_checkpoint_with_no_reduction_equals_it(tmp_path, tiny_inputs, arch):
    source = tiny_inputs.qwen2_5_vl_hf if arch == "qwen2.5-vl" else tiny_inputs.qwen2_vl_hf
    out = tmp_path / "hub"
    main(["export", "--from-hf", str(source), "--token-reduction", "none", "--out", str(out)])
    wrapped = load_prumerge_model(str(out))
    stock = stock_twin(wrapped.config).from_pretrained(source).eval()
    inputs = batch_of(seed=3)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(**inputs).logits, stock(**inputs).logits)
