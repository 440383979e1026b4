"""The model card (README.md) of a Hub folder: Hub metadata, usage for both transformers majors, reducer settings.

LLaVA-1.5 and Video-LLaVA folders get their own description and usage; Video-LLaVA's states its video budgets.
"""

from __future__ import annotations

from huggingface_hub import ModelCardData

from ..modeling.reduction_settings import REDUCTION_FIELDS, resolved_importance

PAPER_URL = "https://arxiv.org/abs/2403.15388"
# Defaults describe a LLaVA-1.5 derivative (Vicuna, hence Llama 2's licence); callers override them.
DEFAULT_METADATA = {
    "license": "llama2",
    "pipeline_tag": "image-text-to-text",
    "library_name": "transformers",
    "tags": ["llava", "llava-prumerge", "token-pruning", "token-merging", "vision-language", "custom_code"],
}
# What the language model sees of each image's patch tokens, per `token_reduction`.
METHOD_SUMMARIES = {
    "prumerge": "only the patches whose [CLS] attention is an interquartile-range outlier, each merged with "
    "its key-nearest patches, plus one summary token",
    "prumerge_plus": "PruMerge's outlier patches plus spatially uniform samples (about a quarter of the "
    "tokens), each merged with its key-nearest patches, plus one summary token",
    "none": "every patch token, as stock LLaVA-1.5 (set token_reduction to switch PruMerge on)",
    "spatial": "a uniform grid of patches (the paper's spatial baseline)",
    "sequential": "the first patches (the paper's sequential baseline)",
}

IMAGE_USAGE = """\
```python
import transformers
from PIL import Image

model_id = "{model_id}"
model = transformers.AutoModelForImageTextToText.from_pretrained(  # transformers 4.57 and 5.x
    model_id, trust_remote_code=True, device_map="auto"
)
processor = transformers.AutoProcessor.from_pretrained(model_id, trust_remote_code=True)

image = Image.open("photo.jpg")
chat = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "What is shown here?"}}]}}]
prompt = processor.apply_chat_template(chat, add_generation_prompt=True)
inputs = processor(images=image, text=prompt, return_tensors="pt").to(model.device)
output = model.generate(**inputs, max_new_tokens=64, do_sample=False)
print(processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))

# Pipelines: "image-text-to-text" (both majors), "image-to-text" (4.57 only)
pipe = transformers.pipeline("image-text-to-text", model=model_id, trust_remote_code=True)
print(pipe(images=image, text=prompt, max_new_tokens=64, return_full_text=False)[0]["generated_text"])
```"""

VIDEO_USAGE = """\
```python
import av  # or decord / torchvision: any decoder giving 8 frames as uint8 [frames, height, width, 3]
import numpy as np
import transformers

model_id = "{model_id}"
model = transformers.AutoModelForImageTextToText.from_pretrained(  # transformers 4.57 and 5.x
    model_id, trust_remote_code=True, device_map="auto"
)
processor = transformers.AutoProcessor.from_pretrained(model_id, trust_remote_code=True)  # needs torchvision

with av.open("clip.mp4") as container:
    frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
clip = np.stack([frames[i] for i in np.linspace(0, len(frames) - 1, 8).astype(int)])  # 8 frames, as trained
chat = [{{"role": "user", "content": [{{"type": "video"}}, {{"type": "text", "text": "What happens?"}}]}}]
prompt = processor.apply_chat_template(chat, add_generation_prompt=True)
inputs = processor(videos=clip, text=prompt, return_tensors="pt").to(model.device)
output = model.generate(**inputs, max_new_tokens=64, do_sample=False)
print(processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

Images work as for LLaVA (`processor(images=image, text=prompt)` with an `{{"type": "image"}}` item), alone
or with a video in the same prompt."""

CITATION = """\
```bibtex
@inproceedings{shang2025prumerge,
  title     = {LLaVA-PruMerge: Adaptive Token Reduction for Efficient Large Multimodal Models},
  author    = {Shang, Yuzhang and Cai, Mu and Xu, Bingxin and Lee, Yong Jae and Yan, Yan},
  booktitle = {ICCV},
  year      = {2025}
}
```"""


def card_metadata(extra: dict | None) -> dict:
    """The default metadata, updated by `extra`; tags are merged rather than replaced."""
    extra = dict(extra or {})
    tags = list(dict.fromkeys(DEFAULT_METADATA["tags"] + list(extra.pop("tags", []))))
    return {**DEFAULT_METADATA, **extra, "tags": tags}


def render_model_card(config, processor, *, model_id: str, metadata: dict | None = None) -> str:
    """README.md text: metadata front matter, what the model is, usage, reducer settings, citation. The title
    is the model's name: the last part of `model_id` (a Hub id or the folder written)."""
    data = ModelCardData(**card_metadata(metadata))
    vision = config.vision_config
    is_qwen = config.model_type in ("qwen2_5_vl_prumerge", "qwen2_vl_prumerge")
    patches = None if is_qwen else (vision.image_size // vision.patch_size) ** 2  # Qwen-VL: native resolution
    settings = "\n".join(f"| `{name}` | `{getattr(config, name)!r}` |" for name in REDUCTION_FIELDS)
    is_video = config.model_type == "video_llava_prumerge"
    usage = (VIDEO_USAGE if is_video else IMAGE_USAGE).format(model_id=model_id)
    summary = METHOD_SUMMARIES[config.token_reduction]
    if is_video:
        frames = config.video_seq_length // (patches + 1)
        what = f"""Video-LLaVA with **PruMerge** adaptive visual-token reduction ([LLaVA-PruMerge]({PAPER_URL})), applied
training-free as the paper applied it to Video-LLaVA. Each of a video's {frames} frames is reduced like an
image: of its {patches} CLIP patch tokens the language model sees {summary}, after the frame's [CLS]
token, which stock Video-LLaVA keeps ({frames} x {patches + 1} = {config.video_seq_length} tokens per video unreduced).
{_video_budget(config, frames)}"""
    elif config.model_type == "llava_next_prumerge":
        crops = max(height * width for height, width in config.image_grid_pinpoints) // vision.image_size**2
        what = f"""LLaVA-NeXT (AnyRes) with **PruMerge** adaptive visual-token reduction ([LLaVA-PruMerge]({PAPER_URL})):
each view of an image (the base view and up to {crops} high-resolution crops) is reduced with its own [CLS]
attention; of its {patches} CLIP patch tokens the language model sees {summary}. The crops' tokens keep
stock LLaVA-NeXT's order (the raster order of the unpadded crop map), one `image_newline` closing each row of
crops. {"With `adaptive=False`, `num_visual_tokens` fixes each image's tokens, newlines included, shared by its views in proportion to their patches." if config.num_visual_tokens is None else f"Each image reaches the language model as exactly {config.num_visual_tokens} tokens, newlines included."}"""
    elif config.model_type == "llava_onevision_prumerge":
        what = _onevision_summary(config, patches, summary)
    elif is_qwen:
        what = _qwen_summary(config, summary)
    else:
        what = f"""LLaVA-1.5 with **PruMerge** adaptive visual-token reduction ([LLaVA-PruMerge]({PAPER_URL})): of the
{patches} CLIP patch tokens per image, the language model sees {summary}."""
    # LLaVA-1.5's processor pads images to a square; AnyRes processors' do_pad pads their batch of views
    do_pad = config.model_type == "llava_prumerge" and getattr(processor.image_processor, "do_pad", False)
    body = f"""
# {model_id.rstrip("/").rpartition("/")[2]}

{what}
So prefill is shorter and the KV cache smaller. The model code ships in this repository
(`trust_remote_code=True`); nothing beyond `transformers` (4.57 or 5.x), `torch` and, for
`device_map`, `accelerate` needs installing. The weights use the llava-hf layout.

## Usage

{usage}

{_preprocessing(config, do_pad)}

## Token-reduction settings

Stored in `config.json`; override any of them at load time, e.g.
`from_pretrained(model_id, trust_remote_code=True, token_reduction="prumerge_plus")`.

| field | value |
|---|---|
{settings}

## Citation

{CITATION}
"""
    return f"---\n{data.to_yaml()}\n---\n{body}"


def _preprocessing(config, do_pad: bool) -> str:
    """How images reach the tower, in one sentence."""
    vision = config.vision_config
    if not hasattr(vision, "image_size"):  # Qwen-VL
        return (
            f"Images keep their native resolution (resized to multiples of {vision.patch_size * vision.spatial_merge_size} px "
            "within the processor's pixel bounds); the last block's 2 x 2 merged patches are the visual tokens."
        )
    how = (
        "padded to a square with the mean color, as in LLaVA-1.5 training, then resized"
        if do_pad
        else "resized and center-cropped"
    )
    return (
        f"Images are {how}\n({vision.image_size}x{vision.image_size}); vision features come from layer "
        f"{config.vision_feature_layer}."
    )


def _qwen_summary(config, summary: str) -> str:
    """What a Qwen2-VL / Qwen2.5-VL card says the model does."""
    family = "Qwen2.5-VL" if config.model_type == "qwen2_5_vl_prumerge" else "Qwen2-VL"
    score = resolved_importance(config.importance, class_token=False)
    return f"""{family} with **PruMerge** adaptive visual-token reduction ([LLaVA-PruMerge]({PAPER_URL})).
Its vision tower has no [CLS] token, so each merged token (2 x 2 patches) is scored by `{score}` on the last
full-attention block, where the paper reads the [CLS] attention. Each image, and each frame group of a
video, is reduced: of its merged tokens the language model sees {summary.replace("[CLS] attention", "importance")}.
Every kept token keeps the 3-D rotary position (time, row, column) of its place, and text the positions stock
gives it. `AutoProcessor` also builds the video processor, which needs torchvision."""


def _onevision_summary(config, patches: int, summary: str) -> str:
    """What a LLaVA-OneVision card says the model does: the stand-in score, what is reduced, the budgets."""
    score = resolved_importance(config.importance, class_token=False)
    budget = (
        "With `adaptive=False`, `num_visual_tokens` fixes each image's tokens and `num_video_tokens` each "
        "video's, newlines included."
        if config.num_visual_tokens is None and config.num_video_tokens is None
        else f"Fixed budgets: `num_visual_tokens={config.num_visual_tokens}` per image, "
        f"`num_video_tokens={config.num_video_tokens}` per video, newlines included."
    )
    return f"""LLaVA-OneVision with **PruMerge** adaptive visual-token reduction ([LLaVA-PruMerge]({PAPER_URL})).
Its SigLIP tower has no [CLS] token, so each patch is scored by `{score}` (see `importance`) where the paper
reads the [CLS] attention. Each view of an image (the base view and the AnyRes crops), the base view of each
image in a multi-image prompt, and each video frame after stock's 2 x 2 pooling is reduced: of its {patches}
patch tokens (a frame: its pooled tokens) the language model sees {summary.replace("[CLS] attention", "importance")}.
Tokens keep stock's order and its `image_newline` tokens (one per row of crops, one after a lone base view
and after a video). {budget} `AutoProcessor` also builds the video processor, which needs torchvision."""


def _video_budget(config, frames: int) -> str:
    """What fixes the number of tokens per video, in this config and in the paper's comparison."""
    paper = (
        f"For the paper's like-for-like comparison, `adaptive=False` with `num_video_tokens=256` (PruMerge) or "
        f"`512` (PruMerge+) gives exactly that many tokens per {frames}-frame video (12.5% / 25% of its 2048 patch "
        "tokens), split evenly over the frames, each frame's [CLS] included."
    )
    if config.num_video_tokens is not None:
        return f"This model's videos each reach the language model as exactly {config.num_video_tokens} tokens. {paper}"
    if not config.adaptive and config.num_visual_tokens is not None:
        return f"This model gives every frame {config.num_visual_tokens} tokens, its [CLS] included. {paper}"
    return f"How many tokens each frame keeps adapts to its content. {paper}"
