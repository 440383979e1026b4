"""`export` of Qwen2.5-VL and Qwen2-VL: the Hub folder in Qwen's own weight layout with its processor files,
its loading without the package under each major (PRUMERGE_TEST_PYTHONS) with images of different sizes, a
multi-image prompt and a video in one batch, a fixed-budget folder's processor (in the torchvision overlays,
PRUMERGE_TEST_VISION_PYTHONS: the stock processor builds a video processor), and `export --from-hf` of stock
checkpoints."""

import json

import pytest
import torch
from safetensors.torch import save_file

from llava_prumerge.cli import main
from llava_prumerge.common.loading import load_prumerge_model
from llava_prumerge.testing.model_tester import make_image, stock_twin, visible_log_probs
from llava_prumerge.testing.subprocesses import REMOTE_PRELUDE, VISION_PYTHONS, run_offline
from llava_prumerge.testing.tiny_qwen import tiny_qwen_image_processor, tiny_qwen_inputs, tiny_qwen_tokenizer

ARCHS = {"qwen2.5-vl": "Qwen2_5_VL", "qwen2-vl": "Qwen2VL"}
TEXTS = ["USER: <image>\nWhat is it? ASSISTANT:", "USER: <image> and <image>\nWhich? ASSISTANT:",
         "USER: <video>\nWhat happens? ASSISTANT:"]  # fmt: skip
NEW_TOKENS = 4
BUDGET = 6


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


STOCK_PROCESSOR_SCRIPT = (
    REMOTE_PRELUDE
    + r"""
import numpy as np
from PIL import Image
processor = transformers.AutoProcessor.from_pretrained(folder, trust_remote_code=True)
assert type(processor).__name__ == spec["stock"], type(processor).__name__
images = [Image.new("RGB", (60, 40), "red"), Image.new("RGB", (32, 48), "blue")]
rng = np.random.default_rng(0)
clip = rng.integers(0, 256, (4, 48, 64, 3), dtype=np.uint8)  # 4 frames: 2 frame groups of 12 x 16 patches
texts = ["USER: <|vision_start|><|image_pad|><|vision_end|> and <|vision_start|><|image_pad|><|vision_end|>? ASSISTANT:",
         "USER: <|vision_start|><|video_pad|><|vision_end|> What happens? ASSISTANT:"]
inputs = processor(images=images, videos=[clip], text=texts, return_tensors="pt", padding=True)
merged = {name: (inputs[name + "_grid_thw"].prod(-1) // 4).tolist() for name in ("image", "video")}
assert merged == {"image": [40, 24], "video": [96]}, merged
ids = {name: processor.tokenizer.convert_tokens_to_ids(f"<|{name}_pad|>") for name in merged}
assert [int((inputs["input_ids"] == ids[name]).sum()) for name in merged] == [64, 96]
if spec["stock"] == "Qwen2_5_VLProcessor":
    assert "second_per_grid_ts" in inputs, sorted(inputs)
auto = getattr(transformers, "AutoModelForImageTextToText", None) or transformers.AutoModelForVision2Seq
model = auto.from_pretrained(folder, trust_remote_code=True)
out = model(**inputs)
assert len(out.visual_token_counts) == 2 and len(out.video_token_counts) == 1, out.video_token_counts
sequences = model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
assert sequences.shape[1] == inputs["input_ids"].shape[1] + 2
alone = processor(images=images[:1], text=texts[0].replace("and <|vision_start|><|image_pad|><|vision_end|>", ""),
                  return_tensors="pt")
expected = processor.decode(model.generate(**alone, max_new_tokens=3, do_sample=False)[0, -3:], skip_special_tokens=True)
pipe = transformers.pipeline("image-text-to-text", model=folder, trust_remote_code=True)
prompt = processor.decode(alone["input_ids"][0]).replace("<|image_pad|>" * 40, "<|image_pad|>")
answer = pipe(images=images[0], text=prompt, max_new_tokens=3, return_full_text=False)
assert answer[0]["generated_text"] == expected, (answer, expected)
print("stock processor OK under transformers", transformers.__version__)
"""
)


@pytest.mark.skipif(
    not VISION_PYTHONS, reason="needs the torchvision overlays (PRUMERGE_TEST_VISION_PYTHONS)"
)
def test_the_folders_stock_processor_and_the_pipeline_give_what_the_model_reduces(
    tmp_path, exported, monkeypatch
):
    """Without the package, the folder's own (stock) processor expands images and a video (with Qwen2.5-VL's
    `second_per_grid_ts`) into the placeholders the model reduces, and the image-text-to-text pipeline answers
    as generate does."""
    arch, folder = exported
    (tmp_path / "spec.json").write_text(
        json.dumps({"folder": str(folder), "stock": f"{ARCHS[arch]}Processor"})
    )
    monkeypatch.setattr("llava_prumerge.testing.subprocesses.TEST_PYTHONS", VISION_PYTHONS)
    for output in run_offline(STOCK_PROCESSOR_SCRIPT, ["spec.json"], tmp_path).values():
        assert "stock processor OK" in output


def export_with_budget(arch: str, out, *flags: str):
    main(["export", "--tiny", "--arch", arch, "--token-reduction", "prumerge_plus", "--no-adaptive", *flags,
          "--out", str(out)])  # fmt: skip
    return json.loads((out / "processor_config.json").read_text())


@pytest.mark.parametrize("arch", list(ARCHS))
def test_a_fixed_budget_folder_names_its_processor_and_a_share_of_each_image_keeps_stocks(tmp_path, arch):
    """A budget is the same count for every image larger than it; a share (reduction_ratio) follows each
    image's size, so its folder keeps the stock processor and the model compacts."""
    name = f"{ARCHS[arch]}PruMergeProcessor"
    assert export_with_budget(arch, tmp_path / "budget", "--num-visual-tokens", str(BUDGET)) == {
        "processor_class": name,
        "num_image_tokens": BUDGET,
        "auto_map": {"AutoProcessor": f"processing_qwen_vl_prumerge.{name}"},
    }
    code = (tmp_path / "budget" / "processing_qwen_vl_prumerge.py").read_text()
    assert f"class {name}(QwenVLBudgetMixin, {ARCHS[arch]}Processor)" in code
    assert export_with_budget(arch, tmp_path / "share") == {"processor_class": f"{ARCHS[arch]}Processor"}


BUDGET_PROCESSOR_SCRIPT = (
    REMOTE_PRELUDE
    + r"""
from PIL import Image
processor = transformers.AutoProcessor.from_pretrained(folder, trust_remote_code=True)
assert type(processor).__module__.startswith("transformers_modules."), type(processor).__module__
stock = getattr(transformers, spec["stock"]).from_pretrained(folder)
images = [Image.new("RGB", size, color) for size, color in (((60, 40), "red"), ((32, 48), "blue"))]
text = ["USER: <|vision_start|><|image_pad|><|vision_end|> and <|vision_start|><|image_pad|><|vision_end|>? ASSISTANT:"]
prompts = [processor(images=images, text=text, return_tensors="pt"), stock(images=images, text=text, return_tensors="pt")]
counts = [int((prompt["input_ids"] == processor.image_token_id).sum()) for prompt in prompts]
assert counts == ([2 * spec["budget"]] if major >= 5 else [spec["stock_count"]]) + [spec["stock_count"]], counts
auto = getattr(transformers, "AutoModelForImageTextToText", None) or transformers.AutoModelForVision2Seq
model = auto.from_pretrained(folder, trust_remote_code=True)
new = [model.generate(**prompt, max_new_tokens=4, do_sample=False)[0, -4:].tolist() for prompt in prompts]
assert new[0] == new[1], new
print("budget processor OK under transformers", transformers.__version__)
"""
)


@pytest.mark.skipif(
    not VISION_PYTHONS, reason="needs the torchvision overlays (PRUMERGE_TEST_VISION_PYTHONS)"
)
@pytest.mark.parametrize("arch", list(ARCHS))
def test_the_budget_processor_writes_the_budget_and_the_model_agrees(tmp_path, arch, monkeypatch):
    """Without the package, under transformers 5 the folder's processor writes the budget per image (4.57's Qwen-VL
    processors have no per-image hook: stock's count), and the model generates from it what it generates from
    the stock processor's prompt."""
    export_with_budget(arch, tmp_path / "budget", "--num-visual-tokens", str(BUDGET))
    spec = {"folder": str(tmp_path / "budget"), "stock": f"{ARCHS[arch]}Processor", "budget": BUDGET,
            "stock_count": 40 + 24}  # fmt: skip  # 60 x 40 px: 10 x 16 patches, 32 x 48 px: 12 x 8; 2 x 2 merge
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    monkeypatch.setattr("llava_prumerge.testing.subprocesses.TEST_PYTHONS", VISION_PYTHONS)
    for output in run_offline(BUDGET_PROCESSOR_SCRIPT, ["spec.json"], tmp_path).values():
        assert "budget processor OK" in output


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
