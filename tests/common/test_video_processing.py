"""Video-LLaVA's processor without torchvision: `load_video_processor` gives the stock processor where it
builds, else frames through the image processor, which the model takes as it takes stock's inputs."""

import json

import numpy as np
import pytest
import torch

from llava_prumerge import load_video_processor
from llava_prumerge.cli import main
from llava_prumerge.common.video_processing import VideoFramesProcessor
from llava_prumerge.errors import UsageError
from llava_prumerge.testing.subprocesses import VISION_PYTHONS, run_offline

CHAT = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]}]


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("video") / "tiny-video-llava"
    main(["export", "--tiny", "--arch", "video-llava", "--out", str(folder)])
    return folder


def clip(frames: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (frames, 60, 80, 3), dtype=np.uint8)


def test_without_torchvision_frames_go_through_the_image_processor_and_the_model_answers(video_folder):
    try:
        import torchvision  # noqa: F401

        pytest.skip("torchvision loads here: the stock processor is returned (the overlay test covers it)")
    except (ImportError, RuntimeError):  # the registry's CUDA build does not load beside CPU torch
        pass
    from llava_prumerge import VideoLlavaPruMergeForConditionalGeneration

    processor = load_video_processor(str(video_folder))
    assert isinstance(processor, VideoFramesProcessor) and "Torchvision" in processor.reason
    prompt = processor.apply_chat_template(CHAT, add_generation_prompt=True)
    assert "<video>" in prompt
    inputs = processor(videos=clip(), text=prompt, return_tensors="pt")
    model = VideoLlavaPruMergeForConditionalGeneration.from_pretrained(video_folder).eval()
    per_frame = (model.config.vision_config.image_size // model.config.vision_config.patch_size) ** 2 + 1
    assert int((inputs["input_ids"] == model.config.video_token_id).sum()) == 8 * per_frame
    assert inputs["pixel_values_videos"].shape[:2] == (1, 8)
    with torch.no_grad():
        counts = model(**inputs).video_token_counts
    assert 8 < counts[0] < 8 * per_frame  # every frame's [CLS] and its reduced tokens
    answer = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert isinstance(processor.decode(answer[0, inputs["input_ids"].shape[1] :]), str)
    batch = processor(videos=[clip(), clip(seed=1)], text=[prompt, prompt + " Briefly."], padding=True)
    assert batch["pixel_values_videos"].shape[:2] == (2, 8)
    with pytest.raises(UsageError, match="1 <video> placeholder"):
        processor(videos=[clip(), clip(seed=1)], text=prompt)
    with pytest.raises(UsageError, match="different numbers of frames"):
        processor(videos=[clip(), clip(frames=4)], text=[prompt, prompt], padding=True)


STOCK_COMPARISON = r"""
import json, sys
import numpy as np
import torch
import transformers
from llava_prumerge import load_video_processor
from llava_prumerge.common.video_processing import VideoFramesProcessor, processor_for_videos

spec = json.loads(open(sys.argv[1]).read())
stock = load_video_processor(spec["folder"])
assert type(stock).__name__ == "VideoLlavaProcessor", type(stock)
frames = processor_for_videos(None, "compared", stock.image_processor, stock.tokenizer,
                              transformers.AutoConfig.from_pretrained(spec["folder"]).vision_config)
clip = np.random.default_rng(0).integers(0, 256, (8, 60, 80, 3), dtype=np.uint8)
chat = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]}]
prompt = stock.apply_chat_template(chat, add_generation_prompt=True)
expected, ours = stock(videos=clip, text=prompt, return_tensors="pt"), frames(videos=clip, text=prompt)
assert torch.equal(expected["input_ids"], ours["input_ids"])
# torchvision's resize and PIL's round differently: within about one gray level (std 0.27 -> 1 / 255 = 0.015)
difference = (expected["pixel_values_videos"] - ours["pixel_values_videos"]).abs().max().item()
assert difference < 0.03, difference
print("stock and frames processors agree under transformers", transformers.__version__, difference)
"""


def test_where_torchvision_loads_the_stock_processor_is_returned_and_the_frames_one_matches_it(
    video_folder, tmp_path, monkeypatch
):
    if not VISION_PYTHONS:
        pytest.skip("needs the torchvision overlays (PRUMERGE_TEST_VISION_PYTHONS)")
    (tmp_path / "spec.json").write_text(json.dumps({"folder": str(video_folder)}))
    monkeypatch.setattr("llava_prumerge.testing.subprocesses.TEST_PYTHONS", VISION_PYTHONS)
    for output in run_offline(STOCK_COMPARISON, ["spec.json"], tmp_path).values():
        assert "stock and frames processors agree" in output
