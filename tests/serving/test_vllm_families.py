"""vLLM serving LLaVA-NeXT, LLaVA-OneVision, Qwen2.5-VL and Qwen2-VL fixed-budget folders (run in the vLLM
environment scripts/test.sh builds; skipped elsewhere).

For each architecture one in-process engine serves a batch of requests with images of different sizes (and
videos where the family has them): every prompt holds its text and the budget per item, and each request's
greedy tokens and log-probabilities equal the transformers model's on the same folder (`testing.served`).
Qwen-VL's kept tokens sit at their 3-D positions: a wrong place moves the log-probabilities.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoProcessor

from llava_prumerge.common.loading import load_prumerge_model
from llava_prumerge.errors import UnservableBudgetError
from llava_prumerge.hub_upload.export import save_hub_folder
from llava_prumerge.testing.model_tester import make_image
from llava_prumerge.testing.served import (
    ENGINE,
    assert_chat_reply_as_transformers,
    assert_served_as_transformers,
    chat_on_two_ranks,
    greedy,
)
from llava_prumerge.testing.tiny import tiny_tokenizer
from llava_prumerge.testing.tiny_next import tiny_next_model, tiny_next_processor
from llava_prumerge.testing.tiny_onevision import tiny_onevision_model, tiny_onevision_parts
from llava_prumerge.testing.tiny_qwen import QWEN_IMAGE, QWEN_VIDEO, tiny_qwen_model, tiny_qwen_parts
from llava_prumerge.testing.tiny_video import make_clip

NEW_TOKENS = 5
FRAMES = 4
# how vLLM's Qwen-VL takes a video's frames: with their timing (frames 0.5 s apart), which sets the time between
# frame groups in Qwen2.5-VL's positions; the transformers processor is given the same
VIDEO_TIMING = {"fps": 2.0, "duration": 2.0, "total_num_frames": FRAMES, "frames_indices": list(range(FRAMES)),
                "video_backend": "opencv"}  # fmt: skip


@dataclass
class Request:
    text: str
    images: list
    video: np.ndarray | None = None  # [frames, H, W, 3] uint8

    def visual_items(self) -> dict[str, int]:
        return {"image": len(self.images), "video": int(self.video is not None)}


@dataclass
class Case:
    """A tiny fixed-budget export, its budgets, placeholders, and the requests served in one batch."""

    build: object  # () -> (model, processor parts)
    budgets: dict[str, int]  # per image, per video
    placeholders: dict[str, str]  # what each item's placeholder is in the text
    requests: list[Request]
    video_timing: bool = False  # Qwen-VL: frames come with their timing

    def engine_request(self, request: Request) -> dict:
        data = {}
        if request.images:
            data["image"] = request.images if len(request.images) > 1 else request.images[0]
        if request.video is not None:
            data["video"] = (request.video, VIDEO_TIMING) if self.video_timing else request.video
        return {"prompt": request.text, "multi_modal_data": data}

    def serve(self, vllm, folder: Path, max_model_len: int = ENGINE["max_model_len"]) -> list:
        """The requests' outputs from an in-process engine on `folder` (greedy, NEW_TOKENS each)."""
        limits = {modality: 2 if modality == "image" else 1 for modality in self.budgets}
        engine = {**ENGINE, "max_model_len": max_model_len}
        llm = vllm.LLM(model=str(folder), limit_mm_per_prompt=limits, **engine)
        requests = [self.engine_request(request) for request in self.requests]
        outputs = llm.generate(requests, greedy(vllm, NEW_TOKENS, NEW_TOKENS), use_tqdm=False)
        del llm
        return outputs

    def transformers_inputs(self, processor, request: Request) -> dict:
        kwargs = {"images": request.images} if request.images else {}
        if request.video is not None:
            kwargs["videos"] = [request.video]
            if self.video_timing:
                from transformers.video_utils import VideoMetadata

                kwargs.update(video_metadata=[VideoMetadata(**VIDEO_TIMING)], do_sample_frames=False)
        return processor(text=request.text, return_tensors="pt", **kwargs)


def clip(seed: int) -> np.ndarray:
    return np.stack([np.asarray(frame.convert("RGB")) for frame in make_clip(seed, FRAMES)])


def next_build():
    tokenizer = tiny_tokenizer()
    fields = {"token_reduction": "prumerge_plus", "adaptive": False, "num_visual_tokens": 24}
    model = tiny_next_model(tokenizer=tokenizer, **fields)
    return model, tiny_next_processor(tokenizer)


def onevision_build():
    parts = tiny_onevision_parts()
    fields = {
        "token_reduction": "prumerge_plus",
        "adaptive": False,
        "num_visual_tokens": 40,
        "num_video_tokens": 33,
    }
    return tiny_onevision_model(tokenizer=parts.tokenizer, **fields), parts


def qwen_build(arch: str):
    def build():
        parts = tiny_qwen_parts()
        fields = {
            "token_reduction": "prumerge_plus",
            "adaptive": False,
            "num_visual_tokens": 6,
            "num_video_tokens": 8,
        }
        model = tiny_qwen_model(arch, tokenizer=parts.tokenizer, **fields)
        return model, parts

    return build


QWEN_REQUESTS = [
    Request(f"USER: {QWEN_IMAGE}\nWhat is shown? ASSISTANT:", [make_image(1, width=60, height=40)]),
    Request(
        f"USER: {QWEN_IMAGE} and {QWEN_IMAGE}\nWhich? ASSISTANT:",
        [make_image(2, width=32, height=48), make_image(3, width=64, height=64)],
    ),  # fmt: skip
    Request(f"USER: {QWEN_VIDEO}\nWhat happens? ASSISTANT:", [], clip(4)),
]
CASES = {
    "llava-next": Case(
        next_build,
        {"image": 24},
        {"image": "<image>"},
        [
            Request("USER: <image>\nWhat is shown? ASSISTANT:", [make_image(1, width=100, height=44)]),
            Request(
                "USER: <image>\nCompare it with <image>. ASSISTANT:",
                [make_image(2, width=40, height=90), make_image(3, width=60, height=60)],
            ),
        ],
    ),  # fmt: skip
    "llava-onevision": Case(
        onevision_build,
        {"image": 40, "video": 33},
        {"image": "<image>", "video": "<video>"},
        [
            Request("USER: <image>\nWhat is shown? ASSISTANT:", [make_image(1, width=120, height=60)]),
            Request("USER: <video>\nWhat happens? ASSISTANT:", [], clip(2)),
        ],
    ),  # fmt: skip
    **{
        arch: Case(
            qwen_build(arch),
            {"image": 6, "video": 8},
            {"image": "<|image_pad|>", "video": "<|video_pad|>"},
            QWEN_REQUESTS,
            video_timing=True,
        )
        for arch in ("qwen2.5-vl", "qwen2-vl")
    },  # fmt: skip
}


@pytest.fixture(scope="module", autouse=True)
def in_process_engines():
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    yield
    del os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"]


def export(folder: Path, build) -> Path:
    model, processor = build()
    return save_hub_folder(model, processor, folder, model_card_extra={"license": "apache-2.0"})


@pytest.mark.parametrize("name", list(CASES))
def test_a_batch_is_served_with_the_budgets_as_the_transformers_model_answers(vllm, tmp_path, name):
    case = CASES[name]
    folder = export(tmp_path / "tiny", case.build)
    outputs = case.serve(vllm, folder)
    processor = AutoProcessor.from_pretrained(folder)
    model = load_prumerge_model(str(folder)).eval()
    for index, (request, output) in enumerate(zip(case.requests, outputs, strict=True)):
        text = request.text
        for placeholder in case.placeholders.values():
            text = text.replace(placeholder, "")
        items = request.visual_items()
        visual = sum(case.budgets.get(modality, 0) * count for modality, count in items.items())
        assert len(output.prompt_token_ids) == len(processor.tokenizer(text).input_ids) + visual, index
        inputs = case.transformers_inputs(processor, request)
        assert_served_as_transformers(output, model, inputs, NEW_TOKENS, NEW_TOKENS)


@pytest.mark.parametrize("name", ["llava-next", "qwen2.5-vl"])
def test_none_serves_every_token_as_the_transformers_model_does(vllm, tmp_path, name):
    """token_reduction="none": stock's counts (AnyRes crops, native resolution) and stock's positions."""
    case = CASES[name]

    def build():
        model, processor = case.build()
        model.config.update({"token_reduction": "none", "num_visual_tokens": None, "num_video_tokens": None})
        return model, processor

    folder = export(tmp_path / "none", build)
    outputs = case.serve(vllm, folder, max_model_len=2048)  # every placeholder stays
    processor = AutoProcessor.from_pretrained(folder)
    model = load_prumerge_model(str(folder)).eval()
    for request, output in zip(case.requests, outputs, strict=True):
        inputs = case.transformers_inputs(processor, request)
        assert len(output.prompt_token_ids) == inputs["input_ids"].shape[1]  # every placeholder stays
        assert_served_as_transformers(output, model, inputs, NEW_TOKENS, NEW_TOKENS)


@pytest.mark.parametrize(
    "name, fields, message",
    [
        ("qwen2.5-vl", {"token_reduction": "prumerge", "adaptive": True}, "adaptive=True"),
        ("llava-next", {"num_visual_tokens": None}, "follows each image's size"),
    ],
)
def test_a_folder_whose_count_varies_is_refused_at_load(vllm, tmp_path, name, fields, message):
    def build():
        model, processor = CASES[name].build()
        model.config.update(fields)
        return model, processor

    folder = export(tmp_path / "varying", build)
    with pytest.raises(UnservableBudgetError, match=message):
        vllm.LLM(model=str(folder), **ENGINE)


def test_the_openai_server_on_two_tensor_parallel_ranks_answers_a_qwen_image_chat_as_transformers_does(
    vllm, tmp_path
):
    """Qwen2.5-VL over two ranks: vLLM splits the vision tower's heads (q, k and v of each rank's heads in one
    fused projection), and the reducer gathers the q/k it scores with."""
    folder = export(tmp_path / "tiny", CASES["qwen2.5-vl"].build)
    image = make_image(3, width=64, height=40)
    reply = chat_on_two_ranks(folder, tmp_path / "server.log", image, "What is shown?", NEW_TOKENS)
    processor = AutoProcessor.from_pretrained(folder)
    model = load_prumerge_model(str(folder)).eval()
    budget = CASES["qwen2.5-vl"].budgets["image"]
    assert_chat_reply_as_transformers(
        reply, processor, model, image, "What is shown?", "<|image_pad|>", budget
    )
