"""`export` of Video-LLaVA: the Hub folder, its loading without the package under each major, its processor.

The model test loads the folder in fresh interpreters of both majors (PRUMERGE_TEST_PYTHONS) with
inputs built here. Building the folder's `VideoLlavaProcessor` needs torchvision, so the processor test
runs in the torchvision overlays of the test environments (PRUMERGE_TEST_VISION_PYTHONS, set by
scripts/test.sh; see scripts/setup_vision_overlay.sh) and is skipped where none is given.
"""

import json

import pytest
import torch
from safetensors.torch import save_file

from llava_prumerge import VideoLlavaPruMergeForConditionalGeneration
from llava_prumerge.cli import main
from llava_prumerge.testing.model_tester import visible_log_probs
from llava_prumerge.testing.subprocesses import REMOTE_PRELUDE, VISION_PYTHONS, run_offline
from llava_prumerge.testing.tiny_video import TINY_PATCHES, TINY_VIDEO_FRAMES

PROMPT = "USER: <video>\nWhat happens? ASSISTANT:"
NEW_TOKENS = 5


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("video-export") / "tiny-video-prumerge"
    main(["export", "--tiny", "--arch", "video-llava", "--out", str(out), "--model-id", "org/tiny-video"])
    return out


@pytest.fixture(scope="module")
def exported(video_folder):
    return VideoLlavaPruMergeForConditionalGeneration.from_pretrained(video_folder).eval()


def test_folder_holds_the_video_processor_files_and_the_stock_weight_layout(video_folder, exported):
    names = {path.name for path in video_folder.iterdir()}
    assert {"video_preprocessor_config.json", "configuration_video_llava_prumerge.py",
            "modeling_video_llava_prumerge.py", "preprocessor_config.json"} <= names  # fmt: skip
    config = json.loads((video_folder / "config.json").read_text())
    assert config["model_type"] == "video_llava_prumerge"
    assert config["auto_map"]["AutoModelForImageTextToText"].endswith(
        ".VideoLlavaPruMergeForConditionalGeneration"
    )
    video_settings = json.loads((video_folder / "video_preprocessor_config.json").read_text())
    assert video_settings["video_processor_type"] == "VideoLlavaVideoProcessor"
    assert video_settings["crop_size"] == {"height": 56, "width": 56}
    processor_settings = json.loads((video_folder / "processor_config.json").read_text())
    assert processor_settings["processor_class"] == "VideoLlavaProcessor"
    assert processor_settings["video_token"] == "<video>"
    image_settings = json.loads((video_folder / "preprocessor_config.json").read_text())
    assert image_settings["image_processor_type"] == "VideoLlavaImageProcessor"
    weight_map = json.loads((video_folder / "model.safetensors.index.json").read_text())["weight_map"]
    prefixes = ("language_model.model.", "language_model.lm_head.", "image_tower.vision_model.",
                "video_tower.vision_model.", "multi_modal_projector.")  # fmt: skip
    assert all(name.startswith(prefixes) for name in weight_map), "LanguageBind/Video-LLaVA-7B-hf's layout"
    assert any(name.startswith("video_tower.") for name in weight_map)
    loaded, info = VideoLlavaPruMergeForConditionalGeneration.from_pretrained(
        video_folder, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_model_card_states_the_video_budgets_and_video_usage(video_folder):
    card = (video_folder / "README.md").read_text()
    assert "Video-LLaVA with **PruMerge**" in card
    assert f"{TINY_VIDEO_FRAMES} x {TINY_PATCHES + 1}" in card
    assert "`num_video_tokens=256` (PruMerge) or `512` (PruMerge+)" in card
    assert 'processor(videos=clip, text=prompt, return_tensors="pt")' in card
    assert 'model_id = "org/tiny-video"' in card


def test_a_fixed_video_budget_is_stated_on_the_card(tmp_path):
    out = tmp_path / "fixed"
    main(
        [
            "export",
            "--tiny",
            "--arch",
            "video-llava",
            "--no-adaptive",
            "--num-video-tokens",
            "64",
            "--out",
            str(out),
        ]
    )
    assert "each reach the language model as exactly 64 tokens" in (out / "README.md").read_text()
    assert json.loads((out / "config.json").read_text())["num_video_tokens"] == 64


REMOTE_LOAD_SCRIPT = (
    REMOTE_PRELUDE
    + r"""
from safetensors.torch import load_file
model = auto.from_pretrained(folder, trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
assert type(model).__name__ == "VideoLlavaPruMergeForConditionalGeneration"
tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
expanded = spec["prompt"].replace("<video>", "<video>" * spec["placeholders"])
inputs = dict(tokenizer([expanded], return_tensors="pt"))
assert inputs["input_ids"][0].tolist() == spec["input_ids"], "tokenization differs"
inputs["pixel_values_videos"] = load_file("pixels.safetensors")["pixel_values_videos"]
n = len(spec["new_tokens"])
sequences = model.generate(**inputs, max_new_tokens=n, do_sample=False)
assert sequences[0, -n:].tolist() == spec["new_tokens"], sequences[0, -n:].tolist()
torch.testing.assert_close(visible_log_probs(model, inputs), torch.tensor(spec["log_probs"]), rtol=0, atol=1e-4)
mapped = auto.from_pretrained(folder, trust_remote_code=True, device_map="auto")
assert mapped.generate(**inputs, max_new_tokens=n, do_sample=False)[0, -n:].tolist() == spec["new_tokens"]
torch.testing.assert_close(visible_log_probs(mapped, inputs), torch.tensor(spec["log_probs"]), rtol=0, atol=1e-4)
for method, count in spec["video_token_counts"].items():
    variant = auto.from_pretrained(folder, trust_remote_code=True, token_reduction=method)
    assert variant(**inputs).video_token_counts == [count], (method, variant(**inputs).video_token_counts)
print("remote code OK under transformers", transformers.__version__)
"""
)


def test_exported_folder_loads_without_the_package_under_each_major(
    tmp_path, video_folder, exported, video_tester
):
    inputs = video_tester.prepare_inputs([PROMPT], videos=video_tester.clips(1, first_seed=4))
    with torch.no_grad():
        sequences = exported.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
        counts = {method: exported(**inputs, reduction=exported.config.reduction_settings.replace(token_reduction=method)).video_token_counts[0] for method in ("none", "prumerge", "prumerge_plus")}  # fmt: skip
    assert (
        counts["prumerge"]
        < counts["prumerge_plus"]
        < counts["none"]
        == TINY_VIDEO_FRAMES * (TINY_PATCHES + 1)
    )
    save_file(
        {"pixel_values_videos": inputs["pixel_values_videos"].contiguous()}, tmp_path / "pixels.safetensors"
    )
    spec = {
        "folder": str(video_folder),
        "prompt": PROMPT,
        "placeholders": TINY_VIDEO_FRAMES * (TINY_PATCHES + 1),
        "input_ids": inputs["input_ids"][0].tolist(),
        "new_tokens": sequences[0, -NEW_TOKENS:].tolist(),
        "video_token_counts": counts,
        "log_probs": visible_log_probs(exported, inputs).tolist(),
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    for output in run_offline(REMOTE_LOAD_SCRIPT, ["spec.json"], tmp_path).values():
        assert "remote code OK" in output


PROCESSOR_SCRIPT = r"""
import sys
sys.modules["llava_prumerge"] = None
import json
import numpy as np
import torch
import transformers
from PIL import Image
from safetensors.torch import load_file

spec = json.loads(open(sys.argv[1]).read())
folder = spec["folder"]
processor = transformers.AutoProcessor.from_pretrained(folder, trust_remote_code=True)
assert type(processor).__name__ == "VideoLlavaProcessor", type(processor).__name__
assert type(processor.video_processor).__name__ == "VideoLlavaVideoProcessor"
clip = np.stack([np.asarray(Image.open(path).convert("RGB")) for path in spec["frames"]])
chat = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]}]
prompt = processor.apply_chat_template(chat, add_generation_prompt=True)
assert prompt == spec["prompt"], prompt
inputs = processor(videos=clip, text=prompt, return_tensors="pt")
assert inputs["input_ids"][0].tolist() == spec["input_ids"], "placeholder expansion differs"
expected = load_file("pixels.safetensors")["pixel_values_videos"]
assert inputs["pixel_values_videos"].shape == expected.shape, inputs["pixel_values_videos"].shape
# torchvision and PIL resize differently by a few levels of a pixel; the frames must be the same picture
assert (inputs["pixel_values_videos"] - expected).abs().mean() < 0.05
major = int(transformers.__version__.split(".")[0])
auto = transformers.AutoModelForImageTextToText if major >= 5 else transformers.AutoModelForVision2Seq
model = auto.from_pretrained(folder, trust_remote_code=True)
both = processor(images=Image.open(spec["frames"][0]), videos=clip, text="USER: <image>\nand <video>\nwhich? ASSISTANT:", return_tensors="pt")
out = model(**both)
assert len(out.visual_token_counts) == 1 and len(out.video_token_counts) == 1
assert model.generate(**inputs, max_new_tokens=2, do_sample=False).shape[1] == inputs["input_ids"].shape[1] + 2
# transformers' image-text-to-text pipeline takes images (videos have no pipeline in either major)
pipe = transformers.pipeline("image-text-to-text", model=folder, trust_remote_code=True)
answer = pipe(images=Image.open(spec["frames"][0]), text="USER: <image>\nWhat is it? ASSISTANT:", max_new_tokens=3)
assert isinstance(answer[0]["generated_text"], str), answer
if major >= 5:  # 4.57's VideoLlavaProcessor rejects the `audio=None` the pipeline passes for chats (stock too)
    image_chat = [{"role": "user", "content": [{"type": "image", "image": Image.open(spec["frames"][0])}, {"type": "text", "text": "What is it?"}]}]
    answer = pipe(text=image_chat, max_new_tokens=3)
    assert answer[0]["generated_text"][-1]["role"] == "assistant", answer
print("processor OK under transformers", transformers.__version__)
"""


@pytest.mark.skipif(
    not VISION_PYTHONS, reason="needs the torchvision overlays (PRUMERGE_TEST_VISION_PYTHONS)"
)
def test_the_folders_video_processor_loads_and_matches_the_models_inputs(
    tmp_path, video_folder, video_tester, monkeypatch
):
    clip = video_tester.clips(1, first_seed=2)[0]
    frames = []
    for index, frame in enumerate(clip):
        frames.append(str(tmp_path / f"frame{index}.png"))
        frame.save(frames[-1])
    inputs = video_tester.prepare_inputs([PROMPT], videos=[clip])
    save_file(
        {"pixel_values_videos": inputs["pixel_values_videos"].contiguous()}, tmp_path / "pixels.safetensors"
    )
    spec = {
        "folder": str(video_folder),
        "frames": frames,
        "prompt": PROMPT,
        "input_ids": inputs["input_ids"][0].tolist(),
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    monkeypatch.setattr("llava_prumerge.testing.subprocesses.TEST_PYTHONS", VISION_PYTHONS)
    for output in run_offline(PROCESSOR_SCRIPT, ["spec.json"], tmp_path).values():
        assert "processor OK" in output


def test_export_from_a_stock_video_llava_with_no_reduction_equals_it(tmp_path, tiny_inputs, video_tester):
    out = tmp_path / "hub"
    main(
        [
            "export",
            "--from-hf",
            str(tiny_inputs.video_llava_hf),
            "--token-reduction",
            "none",
            "--out",
            str(out),
        ]
    )
    wrapped = VideoLlavaPruMergeForConditionalGeneration.from_pretrained(out).eval()
    stock = video_tester.get_stock_model().from_pretrained(tiny_inputs.video_llava_hf).eval()
    inputs = video_tester.prepare_inputs(
        [PROMPT, "USER: <image>\nThen <video>\nWhat? ASSISTANT:"],
        images=video_tester.images(1), videos=video_tester.clips(2),
    )  # fmt: skip
    with torch.no_grad():
        torch.testing.assert_close(wrapped(**inputs).logits, stock(**inputs).logits)


def test_export_arch_applies_to_tiny_only(tmp_path, tiny_inputs, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "export",
                "--from-hf",
                str(tiny_inputs.llava_hf),
                "--arch",
                "video-llava",
                "--out",
                str(tmp_path / "x"),
            ]
        )
    assert exit_info.value.code == 2
    assert "--arch applies to --tiny" in capsys.readouterr().err
