"""Roofline estimate of the LLaVA LLM's prefill cost with all visual tokens, PruMerge and PruMerge+.

The LLM (a Llama decoder) is costed operator by operator, as LLM-Viewer (hahnyuan/LLM-Viewer,
`model_analyzer.py`) does: each operator's OPs (a multiply-add is 2) and the bytes it moves
(weights, activations, KV cache) give a time max(OPs / peak, bytes / bandwidth); times add up
over the operators and layers. Prefill only; units are decimal (1 TOPs = 1e12, 1 GB = 1e9).

Per layer: attn_norm, q/k/v_proj (k and v written to the KV cache), qk_matmul, softmax,
sv_matmul, o_proj, attn_add, mlp_norm, gate/up_proj, mlp_act (SiLU and the multiply),
down_proj, mlp_add. Then final_norm and lm_head for the last token of each sequence only.
Conventions kept from LLM-Viewer so that its numbers (and the paper's) are reproduced:
- attention scores cover the full seq x seq square (no causal saving), softmax is 5 OPs a score;
- a norm is 7 OPs an element and loads no weights (an RMSNorm needs fewer: < 0.01% of the OPs);
- a residual add loads one operand; mlp_act is sized by hidden_size (2 OPs, 2 loads, 1 store an
  element), not by intermediate_size. Loading both add operands and sizing mlp_act by
  intermediate_size would add 1.4 ms (1.6%) at the calibration point below.
Where this departs from LLM-Viewer: Q is loaded at the activation width (LLM-Viewer charges it at
the KV width); final_norm is counted (LLM-Viewer has none); lm_head counts 2 OPs a multiply-add
with weights at --w-bits (LLM-Viewer: 1 OP, and 1 byte a weight whatever the width: 0.15 ms less
at FP16 on a V100).
Peak: the INT8 peak when --w-bits, --a-bits and --kv-bits are all <= 8, else the FP16 peak
(LLM-Viewer's rule; 4-bit also runs at the INT8 peak, there is no INT4 peak).

Calibration: the paper's efficiency table (LLaVA-1.5-7B, FP16, V100, batch 1, 576 visual tokens)
gives 9.3 TFLOPs and 88.6 ms. 576 + 123 text tokens (699 in all, the default) gives 9.314 TOPs and
88.63 ms here: both match to the paper's precision. 700 tokens give 9.328 TOPs and 88.76 ms here
and 88.61 ms under LLM-Viewer's own lm_head accounting, so the paper likely used 700.
PruMerge and PruMerge+ keep the paper's average 33 (32 + summary) and 144 visual tokens.

Video-LLaVA (`--arch video-llava-7b`, the same Vicuna-7B LLM) sees one 8-frame video: each frame's
[CLS] token and its 256 patches (CLIP ViT-L/14 at 224 px), 2056 tokens. Reduced, each frame keeps
its [CLS] token and its patches at the paper's image rates (an estimate: 1 + 15 = 16 a frame with
PruMerge, 1 + 64 = 65 with PruMerge+; 128 and 520 a video). `METHOD@TOKENS` in --methods fixes a
budget per image or video instead (adaptive=False): Video-LLaVA also compares prumerge@256 and
prumerge_plus@512, the paper's 12.5% and 25% of the 2048 patches.

LLaVA-NeXT (`--arch llava-next-7b`, the same Vicuna-7B LLM) sees one 672x672 image, the largest square of
llava-v1.6's grid resolutions, in AnyRes views: the base view and 2x2 crops of 336 px, 5 x 576 patches,
plus one image_newline per row of the unpadded 48x48 crop map: 2928 tokens, as LlavaNextProcessor
counts them (`AnyresImage` computes the count for any image size). Reduced, each view keeps the paper's
image share of its patches and one image_newline closes each row of crops, as the model lays them out
(an estimate: 5 x 33 + 2 = 167 with PruMerge, 5 x 144 + 2 = 722 with PruMerge+); the field's fixed
budgets for the whole image, prumerge_plus@160, @320 and @640, are compared too.

LLaVA-OneVision (`--arch llava-onevision-7b`: Qwen2-7B, 28 layers, 4 KV heads) sees one 1152x1152 image, the
largest square it feeds unshrunk under anyres_max_9: the base view and 3x3 crops of 384 px (SigLIP, 27 x 27
patches), 10 x 729 patches, 7371 tokens with the 81 newlines of the 81 x 81 crop map (a larger map is
shrunk bilinearly to about 9 crops' patches: `AnyresImage.fed_map`). Reduced as LLaVA-NeXT's views are
(an estimate: 10 x 42 + 3 = 423 with PruMerge, 1823 with PruMerge+), the field's budgets scaled to its
7290 patches (405, 810 and 1620).

Qwen2.5-VL (`--arch qwen2.5-vl-7b`: Qwen2.5-7B, 28 layers, 4 KV heads) sees one 1280x720 image at its native
resolution: resized to multiples of 28 px (`qwen_grid`, the processor's `smart_resize`), 52 x 92 patches of
14 px merged 2 x 2 into 1196 tokens; reduced at the paper's image rates (an estimate: 69 and 299).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..architectures import ARCHITECTURES as PRUMERGE_ARCHITECTURES
from ..common.cli_args import COMPARED_METHODS, is_method_label, split_method_label

BIT_WIDTHS = (4, 8, 16)
DEFAULT_VISUAL_TOKENS = 576  # CLIP-L/336: 24 x 24 patches
DEFAULT_TEXT_TOKENS = 123  # reproduces the paper's 9.3 TFLOPs / 88.6 ms (module docstring)
PRUMERGE_TOKENS = 33  # paper: 32 kept on average (5.5%) + 1 summary token
PRUMERGE_PLUS_TOKENS = 144  # paper: 25% of 576
NORM_OPS_PER_ELEMENT = 7  # LLM-Viewer: mean, subtract, square, sum, divide, scale, shift
SOFTMAX_OPS_PER_SCORE = 5  # max, subtract, exp, sum, divide
VIDEO_FRAMES = 8  # Video-LLaVA samples 8 frames a video
FRAME_PATCHES = 256  # CLIP ViT-L/14 at 224 px: 16 x 16


@dataclass(frozen=True)
class PromptShape:
    """The visual tokens one image or video puts in the LLM's prompt, per method: the defaults of
    `analyze` and of what `bench` compares."""

    modality: str  # "image" or "video"
    stock_tokens: int  # "none": every token the stock processor expands the placeholder to
    prumerge_tokens: int  # adaptive PruMerge: the paper's average (an estimate for videos)
    prumerge_plus_tokens: int  # adaptive PruMerge+
    fixed_budgets: tuple[str, ...] = ()  # METHOD@TOKENS labels compared by default besides the methods
    anyres: AnyresImage | None = None  # LLaVA-NeXT: the image the counts are for, in views

    @property
    def methods(self) -> tuple[str, ...]:
        return (*COMPARED_METHODS, *self.fixed_budgets)

    @property
    def kind(self) -> str:
        """ "image" (one view), "anyres" (LLaVA-NeXT's views) or "video"."""
        return "anyres" if self.anyres else self.modality


def at_paper_rate(patches: int, tokens_of_576: int) -> int:
    """The tokens an image of `patches` patches keeps at the rate the paper reports for 576 patches."""
    return round(patches * tokens_of_576 / DEFAULT_VISUAL_TOKENS)


def image_prompt(patches: int) -> PromptShape:
    """A LLaVA-1.5-style prompt: one token per patch, reduced at the paper's rates."""
    return PromptShape(
        "image",
        patches,
        at_paper_rate(patches, PRUMERGE_TOKENS),
        at_paper_rate(patches, PRUMERGE_PLUS_TOKENS),
    )


def video_prompt(frames: int, patches: int) -> PromptShape:
    """Video-LLaVA's prompt: per frame its [CLS] token then its patches, those reduced at the paper's image
    rates; fixed budgets of 12.5% and 25% of the patches (with the [CLS] tokens)."""

    def reduced(image_tokens: int) -> int:  # a video's tokens when each frame keeps this share of patches
        return frames * (1 + at_paper_rate(patches, image_tokens))

    return PromptShape(
        "video",
        frames * (1 + patches),
        reduced(PRUMERGE_TOKENS),
        reduced(PRUMERGE_PLUS_TOKENS),
        (f"prumerge@{frames * patches // 8}", f"prumerge_plus@{frames * patches // 4}"),
    )


IMAGE_PROMPT = image_prompt(DEFAULT_VISUAL_TOKENS)
VIDEO_LLAVA_PROMPT = video_prompt(VIDEO_FRAMES, FRAME_PATCHES)


# ---------------------------------------------------------------- LLaVA-NeXT's AnyRes prompt (pure Python)

LLAVA_NEXT_GRID_PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))  # llava-v1.6's
LLAVA_NEXT_IMAGE_SIZE = 672  # a 2 x 2 grid of 336 px crops: the base view and 4 crops
# PruMerge+ budgets the field compares LLaVA-NeXT at, for the 5 x 576 patches of a 672 x 672 image
LLAVA_NEXT_BUDGETS, LLAVA_NEXT_PATCHES = (160, 320, 640), 5 * 576


def select_best_resolution(height: int, width: int, grid_pinpoints) -> tuple[int, int]:
    """transformers' `image_processing_utils.select_best_resolution`: the (height, width) among the grid
    resolutions that keeps the most of the image's pixels once it is scaled to fit, then wastes the fewest."""
    best, most_kept, least_wasted = None, 0, float("inf")
    for grid_height, grid_width in grid_pinpoints:
        scale = min(grid_width / width, grid_height / height)
        kept = min(int(width * scale) * int(height * scale), width * height)
        wasted = grid_width * grid_height - kept
        if kept > most_kept or (kept == most_kept and wasted < least_wasted):
            best, most_kept, least_wasted = (grid_height, grid_width), kept, wasted
    return best


@dataclass(frozen=True)
class AnyresImage:
    """One LLaVA-NeXT or LLaVA-OneVision image: its size, the tower's view size and patch size, the grid
    resolutions, and (OneVision's `anyres_max_<n>`) the crops' worth of patches past which stock shrinks
    the crop map. Counts as the processors compute them (LLaVA-NeXT's default strategy: no [CLS])."""

    height: int
    width: int
    view_size: int = 336
    patch_size: int = 14
    grid_pinpoints: tuple = LLAVA_NEXT_GRID_PINPOINTS
    max_crops: int | None = None

    @property
    def side(self) -> int:
        """Patches along a view's side (24 for CLIP ViT-L/14-336)."""
        return self.view_size // self.patch_size

    @property
    def grid(self) -> tuple[int, int]:
        """Rows and columns of crops."""
        grid_height, grid_width = select_best_resolution(self.height, self.width, self.grid_pinpoints)
        return grid_height // self.view_size, grid_width // self.view_size

    @property
    def unpadded_window(self) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) of the crops' patch map that unpadding keeps (the processor's
        `_get_unpadded_features`, the model's `unpad_image`)."""
        rows, cols = self.grid
        map_height, map_width = rows * self.side, cols * self.side
        if self.width / self.height > map_width / map_height:
            padding = (map_height - int(round(self.height * (map_width / self.width), 7))) // 2
            return padding, map_height - padding, 0, map_width
        padding = (map_width - int(round(self.width * (map_height / self.height), 7))) // 2
        return 0, map_height, padding, map_width - padding

    @property
    def view_patches(self) -> list[int]:
        """Patches per view that reach the LLM without reduction: the base view's, then each crop's
        (raster order) that survive unpadding."""
        rows, cols = self.grid
        top, bottom, left, right = self.unpadded_window
        side = self.side

        def overlap(start: int, low: int, high: int) -> int:
            return max(0, min(start + side, high) - max(start, low))

        crops = [
            overlap(row * side, top, bottom) * overlap(col * side, left, right)
            for row in range(rows)
            for col in range(cols)
        ]
        return [side * side, *crops]

    @property
    def fed_map(self) -> tuple[int, int]:
        """(rows, columns) of the crops' patch map stock feeds the LLM: the unpadded map, shrunk bilinearly by
        LLaVA-OneVision when it holds more than about `max_crops` crops' patches (by more than 1.1x a side)."""
        top, bottom, left, right = self.unpadded_window
        rows, cols = bottom - top, right - left
        ratio = math.sqrt(rows * cols / (self.max_crops * self.side**2)) if self.max_crops else 0
        return (int(rows // ratio), int(cols // ratio)) if ratio > 1.1 else (rows, cols)

    @property
    def newlines(self) -> int:
        """`image_newline` tokens without reduction: one per row of the crop map stock feeds."""
        return self.fed_map[0]

    @property
    def stock_tokens(self) -> int:
        """The placeholders the stock processor writes for the image: the base view, the crop map, newlines."""
        rows, cols = self.fed_map
        return self.side * self.side + rows * cols + rows

    def reduced_tokens(self, image_tokens: int) -> int:
        """The image's tokens when each view keeps `image_tokens` of every 576 (DEFAULT_VISUAL_TOKENS) of its
        patches, as PruMerge does per view, and one `image_newline` closes each row of crops (the model's
        layout)."""
        return sum(at_paper_rate(patches, image_tokens) for patches in self.view_patches) + self.grid[0]


def anyres_prompt(image: AnyresImage) -> PromptShape:
    """LLaVA-NeXT's prompt for one image: stock's AnyRes count; reduced, the paper's image rates per view
    (an estimate); PruMerge+ with the field's fixed budgets for the whole image (newlines included), scaled
    to the image's patches (160, 320 and 640 for 672 x 672)."""
    patches = sum(image.view_patches)
    fixed_budgets = tuple(
        f"prumerge_plus@{round(budget * patches / LLAVA_NEXT_PATCHES)}" for budget in LLAVA_NEXT_BUDGETS
    )
    return PromptShape(
        "image",
        image.stock_tokens,
        image.reduced_tokens(PRUMERGE_TOKENS),
        image.reduced_tokens(PRUMERGE_PLUS_TOKENS),
        fixed_budgets,
        image,
    )


def bench_anyres_image(
    view_size: int, patch_size: int, grid_pinpoints, max_crops: int | None = None
) -> AnyresImage:
    """The image `analyze` and `bench` cost an AnyRes model with: the largest square grid resolution (672 x 672
    for llava-v1.6: the base view and 2 x 2 crops) whose crops stock feeds unshrunk (at most `max_crops`:
    1152 x 1152 for LLaVA-OneVision's anyres_max_9, 3 x 3 crops), else two views a side."""
    squares = [
        height
        for height, width in grid_pinpoints
        if height == width and (max_crops is None or (height // view_size) ** 2 <= max_crops)
    ]
    side = max(squares) if squares else 2 * view_size
    return AnyresImage(side, side, view_size, patch_size, tuple(tuple(p) for p in grid_pinpoints), max_crops)


LLAVA_NEXT_PROMPT = anyres_prompt(bench_anyres_image(336, 14, LLAVA_NEXT_GRID_PINPOINTS))
# The tiny LLaVA-NeXT's (testing/tiny_next.py): 56 px views of 14 x 14 patches, grids up to 2 x 2 crops
TINY_NEXT_IMAGE = bench_anyres_image(56, 4, ((56, 112), (112, 56), (112, 112)))
# llava-onevision-qwen2-*-ov-hf: SigLIP at 384 px (27 x 27 patches a view), grids of 1 x 1 to 6 x 6 crops,
# anyres_max_9; costed with a 1152 x 1152 image (3 x 3 crops: 10 views, 7371 stock tokens)
LLAVA_ONEVISION_GRID_PINPOINTS = tuple(
    (384 * rows, 384 * cols) for rows in range(1, 7) for cols in range(1, 7)
)
LLAVA_ONEVISION_PROMPT = anyres_prompt(bench_anyres_image(384, 14, LLAVA_ONEVISION_GRID_PINPOINTS, 9))
# The tiny LLaVA-OneVision's (testing/tiny_onevision.py): 56 px views, grids up to 3 x 3 crops, anyres_max_2
TINY_ONEVISION_IMAGE = bench_anyres_image(
    56, 4, tuple((56 * rows, 56 * cols) for rows in range(1, 4) for cols in range(1, 4)), 2
)


# ---------------------------------------------------------------- Qwen-VL's native-resolution images

QWEN_IMAGE_SIZE = (720, 1280)  # (height, width): the 1280 x 720 image
QWEN_PATCH, QWEN_MERGE = 14, 2
QWEN_MIN_PIXELS, QWEN_MAX_PIXELS = 56 * 56, 28 * 28 * 1280  # Qwen2.5-VL's processor defaults


def qwen_grid(height: int, width: int, patch: int = QWEN_PATCH, merge: int = QWEN_MERGE) -> tuple[int, int]:
    """(rows, columns) of patches of an image as Qwen-VL's processor resizes it (`smart_resize`: each side a
    multiple of patch * merge, the area within the processor's bounds)."""
    factor = patch * merge
    rows, cols = max(factor, round(height / factor) * factor), max(factor, round(width / factor) * factor)
    if rows * cols > QWEN_MAX_PIXELS:
        scale = math.sqrt(height * width / QWEN_MAX_PIXELS)
        rows, cols = math.floor(height / scale / factor) * factor, math.floor(width / scale / factor) * factor
    elif rows * cols < QWEN_MIN_PIXELS:
        scale = math.sqrt(QWEN_MIN_PIXELS / (height * width))
        rows, cols = math.ceil(height * scale / factor) * factor, math.ceil(width * scale / factor) * factor
    return rows // patch, cols // patch


def qwen_prompt(height: int, width: int, patch: int = QWEN_PATCH) -> PromptShape:
    """Qwen-VL's prompt for one image: one token per 2 x 2 merged patches, reduced at the paper's rates."""
    rows, cols = qwen_grid(height, width, patch)
    return image_prompt(rows * cols // QWEN_MERGE**2)


QWEN_PROMPT = qwen_prompt(*QWEN_IMAGE_SIZE)
TINY_QWEN_IMAGE_SIZE, TINY_QWEN_PATCH = (48, 64), 4  # the tiny Qwen2.5-VL's (testing/tiny_qwen.py)
# The image each Qwen-VL architecture is measured with by default (`bench --image-size` picks another)
QWEN_IMAGE_SIZES = {"qwen2.5-vl-7b": QWEN_IMAGE_SIZE, "tiny-qwen": TINY_QWEN_IMAGE_SIZE}


@dataclass(frozen=True)
class Architecture:
    """The Llama decoder dimensions that set its cost, and the visual prompt it is costed with."""

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    prompt: PromptShape = IMAGE_PROMPT

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim


ARCHITECTURES = {
    arch.name: arch
    for arch in (
        Architecture("llava-1.5-7b", 4096, 32, 32, 32, 11008, 32000),  # Vicuna-7B v1.5
        Architecture("llava-1.5-13b", 5120, 40, 40, 40, 13824, 32000),  # Vicuna-13B v1.5
        Architecture("video-llava-7b", 4096, 32, 32, 32, 11008, 32000, VIDEO_LLAVA_PROMPT),  # Vicuna-7B v1.5
        Architecture("llava-next-7b", 4096, 32, 32, 32, 11008, 32000, LLAVA_NEXT_PROMPT),  # Vicuna-7B v1.5
        # Qwen2-7B (q/k/v biases: negligible cost); llava-onevision-qwen2-7b-ov-hf
        Architecture("llava-onevision-7b", 3584, 28, 28, 4, 18944, 152064, LLAVA_ONEVISION_PROMPT),
        # Qwen2.5-7B (q/k/v biases: negligible cost); Qwen/Qwen2.5-VL-7B-Instruct on a 1280 x 720 image
        Architecture("qwen2.5-vl-7b", 3584, 28, 28, 4, 18944, 152064, QWEN_PROMPT),
        # for tests: 2 KV heads exercise GQA; the tiny LLaVA's 14 x 14 patches
        Architecture("tiny", 64, 2, 4, 2, 160, 100, image_prompt(14 * 14)),
        # for tests: the tiny Video-LLaVA's 8 frames of 14 x 14 patches
        Architecture("tiny-video", 64, 2, 4, 2, 160, 100, video_prompt(VIDEO_FRAMES, 14 * 14)),
        # for tests: the tiny LLaVA-NeXT's 112 x 112 image, 5 views of 14 x 14 patches (56 px, patch 4)
        Architecture("tiny-next", 64, 2, 4, 2, 160, 100, anyres_prompt(TINY_NEXT_IMAGE)),
        # for tests: the tiny Qwen2.5-VL's 64 x 48 image in 4 px patches
        Architecture("tiny-qwen", 64, 2, 4, 2, 160, 100, qwen_prompt(*TINY_QWEN_IMAGE_SIZE, TINY_QWEN_PATCH)),
        # for tests: the tiny LLaVA-OneVision's 56 x 56 image, 2 views of 14 x 14 patches
        Architecture("tiny-onevision", 64, 2, 4, 2, 160, 100, anyres_prompt(TINY_ONEVISION_IMAGE)),
    )
}

# LlamaConfig's defaults: llava-hf configs leave them out of `text_config`.
LLAMA_DEFAULTS = {
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "intermediate_size": 11008,
    "vocab_size": 32000,
}


@dataclass(frozen=True)
class Hardware:
    """Dense peak throughputs and memory bandwidth, in the units of vendor spec sheets."""

    name: str
    fp16_tflops: float
    int8_tops: float
    bandwidth_gbps: float


# Dense tensor-core peaks (no 2:4 sparsity). V100 is LLM-Viewer's entry: 112 TFLOPS is the PCIe
# card's FP16 tensor peak (SXM2: 125); V100 has no INT8 tensor cores, 62 TOPS is DP4A at 4x the FP32
# rate, below its FP16 peak, so W8A8KV8 is slower than FP16 there. A100 80GB SXM, H100 SXM and
# H200 SXM from NVIDIA's data sheets (the H100/H200 sheets print sparse figures: halved here).
# RTX 4090 from the Ada whitepaper: 165.2 TFLOPS is FP16 with FP16 accumulate (82.6 with FP32
# accumulate), 660.6 TOPS dense INT8.
HARDWARE = {
    hw.name: hw
    for hw in (
        Hardware("v100", 112, 62, 900),
        Hardware("a100", 312, 624, 2039),
        Hardware("h100", 989, 1979, 3350),
        Hardware("h200", 989, 1979, 4800),
        Hardware("rtx4090", 165.2, 660.6, 1008),
    )
}


@dataclass(frozen=True)
class OperatorCost:
    """What one operator computes and moves; bytes may be fractional at 4 bits."""

    ops: float
    weight_bytes: float = 0
    activation_load_bytes: float = 0
    activation_store_bytes: float = 0
    kv_load_bytes: float = 0
    kv_store_bytes: float = 0

    @property
    def memory_access_bytes(self) -> float:
        return (
            self.weight_bytes
            + self.activation_load_bytes
            + self.activation_store_bytes
            + self.kv_load_bytes
            + self.kv_store_bytes
        )

    def seconds(self, peak_ops_per_second: float, bandwidth_bytes_per_second: float) -> float:
        """Roofline time: the operator is bound by compute or by memory, whichever is slower."""
        return max(self.ops / peak_ops_per_second, self.memory_access_bytes / bandwidth_bytes_per_second)


def linear_cost(
    tokens: int, in_features: int, out_features: int, w_bits: int, a_bits: int, kv_bits: int | None = None
) -> OperatorCost:
    """A projection; with `kv_bits` its output is written to the KV cache instead of an activation."""
    outputs = tokens * out_features
    return OperatorCost(
        ops=2 * tokens * in_features * out_features,
        weight_bytes=in_features * out_features * w_bits / 8,
        activation_load_bytes=tokens * in_features * a_bits / 8,
        activation_store_bytes=0 if kv_bits else outputs * a_bits / 8,
        kv_store_bytes=outputs * kv_bits / 8 if kv_bits else 0,
    )


def elementwise_cost(elements: int, ops_per_element: int, loaded_tensors: int, a_bits: int) -> OperatorCost:
    return OperatorCost(
        ops=ops_per_element * elements,
        activation_load_bytes=loaded_tensors * elements * a_bits / 8,
        activation_store_bytes=elements * a_bits / 8,
    )


def operator_costs(
    arch: Architecture, batch_size: int, seq_len: int, w_bits: int = 16, a_bits: int = 16, kv_bits: int = 16
) -> dict[str, OperatorCost]:
    """The cost of each operator of ONE decoder layer during prefill, in execution order."""
    tokens = batch_size * seq_len
    hidden, kv_dim, inter = arch.hidden_size, arch.kv_dim, arch.intermediate_size
    scores = batch_size * arch.num_heads * seq_len * seq_len
    attention_matmul_ops = 2 * scores * arch.head_dim
    norm = elementwise_cost(tokens * hidden, NORM_OPS_PER_ELEMENT, 1, a_bits)
    residual_add = elementwise_cost(tokens * hidden, 1, 1, a_bits)  # LLM-Viewer: one operand loaded
    return {
        "attn_norm": norm,
        "q_proj": linear_cost(tokens, hidden, hidden, w_bits, a_bits),
        "k_proj": linear_cost(tokens, hidden, kv_dim, w_bits, a_bits, kv_bits),
        "v_proj": linear_cost(tokens, hidden, kv_dim, w_bits, a_bits, kv_bits),
        "qk_matmul": OperatorCost(
            ops=attention_matmul_ops,
            activation_load_bytes=tokens * hidden * a_bits / 8,  # Q
            activation_store_bytes=scores * a_bits / 8,
            kv_load_bytes=tokens * kv_dim * kv_bits / 8,  # K
        ),
        "softmax": elementwise_cost(scores, SOFTMAX_OPS_PER_SCORE, 1, a_bits),
        "sv_matmul": OperatorCost(
            ops=attention_matmul_ops,
            activation_load_bytes=scores * a_bits / 8,
            activation_store_bytes=tokens * hidden * a_bits / 8,
            kv_load_bytes=tokens * kv_dim * kv_bits / 8,  # V
        ),
        "o_proj": linear_cost(tokens, hidden, hidden, w_bits, a_bits),
        "attn_add": residual_add,
        "mlp_norm": norm,
        "gate_proj": linear_cost(tokens, hidden, inter, w_bits, a_bits),
        "up_proj": linear_cost(tokens, hidden, inter, w_bits, a_bits),
        # SiLU(gate) * up, sized by hidden_size as LLM-Viewer does (module docstring)
        "mlp_act": elementwise_cost(tokens * hidden, 2, 2, a_bits),
        "down_proj": linear_cost(tokens, inter, hidden, w_bits, a_bits),
        "mlp_add": residual_add,
    }


def head_costs(
    arch: Architecture, batch_size: int, w_bits: int = 16, a_bits: int = 16
) -> dict[str, OperatorCost]:
    """Final norm and lm_head, for the last token of each sequence: prefill only needs its logits."""
    return {
        "final_norm": elementwise_cost(batch_size * arch.hidden_size, NORM_OPS_PER_ELEMENT, 1, a_bits),
        "lm_head": linear_cost(batch_size, arch.hidden_size, arch.vocab_size, w_bits, a_bits),
    }


def compute_peak(hardware: Hardware, w_bits: int, a_bits: int, kv_bits: int) -> tuple[str, float]:
    """LLM-Viewer's rule: the INT8 peak only when weights, activations and KV cache all fit in 8 bits."""
    if max(w_bits, a_bits, kv_bits) <= 8:
        return "INT8", hardware.int8_tops
    return "FP16", hardware.fp16_tflops


def prefill_totals(
    arch: Architecture,
    batch_size: int,
    seq_len: int,
    w_bits: int,
    a_bits: int,
    kv_bits: int,
    peak_ops_per_second: float,
    bandwidth_bytes_per_second: float,
) -> dict[str, float]:
    """Sums over the operators of all layers plus the head."""
    layer = list(operator_costs(arch, batch_size, seq_len, w_bits, a_bits, kv_bits).values())
    costs = layer * arch.num_layers + list(head_costs(arch, batch_size, w_bits, a_bits).values())
    return {
        "flops": sum(c.ops for c in costs),
        "prefill_seconds": sum(c.seconds(peak_ops_per_second, bandwidth_bytes_per_second) for c in costs),
        "weight_bytes": sum(c.weight_bytes for c in costs),
        "kv_cache_bytes": sum(c.kv_store_bytes for c in costs),
        "activation_bytes": sum(c.activation_store_bytes for c in costs),
        "memory_access_bytes": sum(c.memory_access_bytes for c in costs),
    }


def method_visual_tokens(
    label: str, visual_tokens: int, prumerge_tokens: int, prumerge_plus_tokens: int
) -> int:
    """Visual tokens of a method label: its fixed budget ("prumerge@256"), else the method's count."""
    method, fixed_tokens = split_method_label(label)
    if fixed_tokens is not None:
        return fixed_tokens
    return {"none": visual_tokens, "prumerge": prumerge_tokens, "prumerge_plus": prumerge_plus_tokens}[method]


def prompt_of_config(config: dict) -> PromptShape:
    """A LLaVA config's prompt shape: a Video-LLaVA's (stock or PruMerge) is its videos', from its frames and
    patches (VideoLlavaConfig's defaults where the file leaves them out); a LLaVA-NeXT's its AnyRes image's
    (`bench_anyres_image`, LlavaNextConfig's defaults where the file leaves them out); a LLaVA-OneVision's
    its AnyRes image's too, with its anyres_max_<n> shrink (LlavaOnevisionConfig's defaults: 384 px SigLIP
    views, anyres_max_9); a Qwen-VL's that of a 1280 x 720 image at its patch size; other configs' is
    LLaVA-1.5's."""
    vision = config.get("vision_config") or {}
    if config.get("model_type") in ("qwen2_vl", "qwen2_vl_prumerge", "qwen2_5_vl", "qwen2_5_vl_prumerge"):
        return qwen_prompt(*QWEN_IMAGE_SIZE, vision.get("patch_size", QWEN_PATCH))  # a 1280 x 720 image
    if config.get("model_type") in ("llava_onevision", "llava_onevision_prumerge"):
        pinpoints = config.get("image_grid_pinpoints") or LLAVA_ONEVISION_GRID_PINPOINTS
        crops = int(config.get("vision_aspect_ratio", "anyres_max_9").removeprefix("anyres_max_"))
        image = bench_anyres_image(
            vision.get("image_size", 384), vision.get("patch_size", 14), pinpoints, crops
        )
        return anyres_prompt(image)
    if config.get("model_type") in ("llava_next", "llava_next_prumerge"):
        pinpoints = config.get("image_grid_pinpoints") or LLAVA_NEXT_GRID_PINPOINTS
        image = bench_anyres_image(vision.get("image_size", 336), vision.get("patch_size", 14), pinpoints)
        return anyres_prompt(image)
    if config.get("model_type") not in ("video_llava", "video_llava_prumerge"):
        return IMAGE_PROMPT
    patches = (vision.get("image_size", 224) // vision.get("patch_size", 14)) ** 2
    frames = config.get("video_seq_length", VIDEO_FRAMES * (1 + FRAME_PATCHES)) // (1 + patches)
    return video_prompt(frames, patches)


# What load_architecture reads: the LLaVA-family checkpoints (stock and PruMerge), original LLaVA ones
# (the LLM's fields at the top), and a bare Llama LLM; any other config's text tower is no LLaVA's LLM.
ANALYZED_MODEL_TYPES = frozenset(
    {"llama", "llava_llama", "llava_mistral"}
    | {arch.model_type for arch in PRUMERGE_ARCHITECTURES}
    | {arch.stock_model_type for arch in PRUMERGE_ARCHITECTURES}
)


def load_architecture(spec: str | Path) -> Architecture:
    """A name from ARCHITECTURES, or a folder whose config.json is a LLaVA, Video-LLaVA (or Llama) config."""
    if str(spec) in ARCHITECTURES:
        return ARCHITECTURES[str(spec)]
    config_path = Path(spec) / "config.json"
    if not config_path.is_file():
        raise ValueError(
            f"--arch: unknown architecture {str(spec)!r}; use one of {', '.join(ARCHITECTURES)} "
            "or a folder containing a config.json"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except ValueError as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ValueError(f"--arch: {config_path} is not valid JSON ({error})") from error
    if not isinstance(config, dict):
        raise ValueError(f"--arch: {config_path} holds a JSON {type(config).__name__}, not a config object")
    if config.get("model_type") not in ANALYZED_MODEL_TYPES:
        raise ValueError(
            f"--arch: {config_path} is a {config.get('model_type')!r} config, not a LLaVA-family one; pass the "
            "folder of a LLaVA, LLaVA-NeXT, LLaVA-OneVision, Video-LLaVA or Qwen-VL checkpoint (stock or PruMerge)"
        )
    text = config.get("text_config", config)  # original LLaVA checkpoints keep the LLM's fields at the top
    if not isinstance(text, dict):
        raise ValueError(f"--arch: {config_path}: text_config is {text!r}, not a config (a JSON object)")
    fields = {**LLAMA_DEFAULTS, **text} if text.get("model_type", "llama") == "llama" else text
    missing = [key for key in LLAMA_DEFAULTS if key not in fields]
    if missing:
        raise ValueError(f"--arch: {config_path} lacks text_config fields {', '.join(missing)}")
    heads = fields["num_attention_heads"]
    return Architecture(
        name=Path(spec).resolve().name,
        hidden_size=fields["hidden_size"],
        num_layers=fields["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=fields.get("num_key_value_heads") or heads,
        intermediate_size=fields["intermediate_size"],
        vocab_size=fields["vocab_size"],
        prompt=prompt_of_config(config),
    )


def validate_inputs(
    hardware: str | Hardware,
    counts: dict[str, int],
    bits: dict[str, int],
    methods: tuple[str, ...] | list[str],
    visual_tokens: int,
) -> None:
    """ValueErrors that name the offending command-line flag."""
    if isinstance(hardware, str) and hardware not in HARDWARE:
        raise ValueError(f"--hardware: unknown hardware {hardware!r}; use one of {', '.join(HARDWARE)}")
    for flag, value in counts.items():
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{flag} must be a positive integer, got {value!r}")
    for flag, value in bits.items():
        if value not in BIT_WIDTHS:
            raise ValueError(f"{flag} must be one of {BIT_WIDTHS}, got {value!r}")
    unknown = [m for m in methods if not is_method_label(m)]
    if unknown or not methods:
        raise ValueError(
            f"--methods: use a comma-separated subset of {', '.join(COMPARED_METHODS)}, each of the last two "
            f"optionally with @TOKENS (a fixed budget), got {methods!r}"
        )
    for flag in ("--prumerge-tokens", "--prumerge-plus-tokens"):
        if counts[flag] > visual_tokens:
            raise ValueError(f"{flag} ({counts[flag]}) exceeds --visual-tokens ({visual_tokens})")
    for label in methods:
        fixed_tokens = split_method_label(label)[1]
        if fixed_tokens is not None and fixed_tokens > visual_tokens:
            raise ValueError(f"--methods: {label} keeps more than --visual-tokens ({visual_tokens})")


def analyze(
    arch: str | Architecture = "llava-1.5-7b",
    hardware: str | Hardware = "v100",
    visual_tokens: int | None = None,
    text_tokens: int = DEFAULT_TEXT_TOKENS,
    batch_size: int = 1,
    w_bits: int = 16,
    a_bits: int = 16,
    kv_bits: int = 16,
    methods: tuple[str, ...] | list[str] | None = None,
    prumerge_tokens: int | None = None,
    prumerge_plus_tokens: int | None = None,
    peak_tflops: float | None = None,
    bandwidth_gbps: float | None = None,
) -> list[dict]:
    """One row per method: prefill totals, and their ratios to keeping all visual tokens ("none").

    Token counts and methods left as None are the architecture's (`Architecture.prompt`).
    """
    arch = load_architecture(arch) if isinstance(arch, str) else arch
    prompt = arch.prompt
    visual_tokens = prompt.stock_tokens if visual_tokens is None else visual_tokens
    prumerge_tokens = prompt.prumerge_tokens if prumerge_tokens is None else prumerge_tokens
    prumerge_plus_tokens = (
        prompt.prumerge_plus_tokens if prumerge_plus_tokens is None else prumerge_plus_tokens
    )
    methods = prompt.methods if methods is None else methods
    counts = {
        "--visual-tokens": visual_tokens,
        "--text-tokens": text_tokens,
        "--batch-size": batch_size,
        "--prumerge-tokens": prumerge_tokens,
        "--prumerge-plus-tokens": prumerge_plus_tokens,
    }
    validate_inputs(
        hardware,
        counts,
        {"--w-bits": w_bits, "--a-bits": a_bits, "--kv-bits": kv_bits},
        methods,
        visual_tokens,
    )
    for flag, value in (("--peak", peak_tflops), ("--bandwidth", bandwidth_gbps)):
        if value is not None and value <= 0:
            raise ValueError(f"{flag} must be positive, got {value!r}")
    hardware = HARDWARE[hardware] if isinstance(hardware, str) else hardware
    compute_dtype, table_peak = compute_peak(hardware, w_bits, a_bits, kv_bits)
    peak = peak_tflops or table_peak
    bandwidth = bandwidth_gbps or hardware.bandwidth_gbps

    def totals(method: str) -> dict[str, float]:
        visual = method_visual_tokens(method, visual_tokens, prumerge_tokens, prumerge_plus_tokens)
        return prefill_totals(
            arch, batch_size, visual + text_tokens, w_bits, a_bits, kv_bits, peak * 1e12, bandwidth * 1e9
        )

    baseline = totals("none")
    setting = {
        "arch": arch.name, "hardware": hardware.name, "compute_dtype": compute_dtype, "peak_tflops": peak,
        "bandwidth_gbps": bandwidth, "batch_size": batch_size, "w_bits": w_bits, "a_bits": a_bits, "kv_bits": kv_bits,
    }  # fmt: skip
    rows = []
    for method in methods:
        visual = method_visual_tokens(method, visual_tokens, prumerge_tokens, prumerge_plus_tokens)
        result = totals(method)
        rows.append(
            {
                "method": method,
                **setting,
                "visual_tokens": visual,
                "text_tokens": text_tokens,
                "sequence_length": visual + text_tokens,
                **result,
                "vs_none": {key: value / baseline[key] for key, value in result.items()},
            }
        )
    return rows


DECIMAL_PREFIXES = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K"), (1, ""))


def decimal_unit(largest: float) -> tuple[float, str]:
    """The scale and prefix that print `largest` with at least one digit before the point (9.3 T, 41 M)."""
    return next(((scale, prefix) for scale, prefix in DECIMAL_PREFIXES if largest >= scale), (1, ""))


def format_table(rows: list[dict]) -> str:
    first = rows[0]
    ops_scale, ops_prefix = decimal_unit(max(row["flops"] for row in rows))
    gb = max(
        max(row[key] for row in rows) for key in ("weight_bytes", "activation_bytes", "memory_access_bytes")
    )
    bytes_scale, bytes_prefix = (1e9, "G") if gb >= 1e8 else (1e6, "M")  # GB for 7B-scale models, else MB
    kv_scale, kv_prefix = (1e6, "M") if max(row["kv_cache_bytes"] for row in rows) >= 1e5 else (1e3, "K")
    time_scale, time_unit = (
        (1e3, "ms") if max(row["prefill_seconds"] for row in rows) >= 1e-3 else (1e6, "us")
    )
    width = max(14, *(len(row["method"]) for row in rows))  # fixed budgets make longer labels
    lines = [
        f"{first['arch']} LLM prefill on {first['hardware']} ({first['compute_dtype']} peak "
        f"{first['peak_tflops']:g} TOPS, {first['bandwidth_gbps']:g} GB/s), batch {first['batch_size']}, "
        f"W{first['w_bits']}A{first['a_bits']}KV{first['kv_bits']}, {first['text_tokens']} text tokens",
        f"{'method':<{width}} {'visual':>6} {'seq':>5} {ops_prefix + 'OPs':>7} {'x none':>7} {'prefill ' + time_unit:>10} "
        f"{'x none':>7} {'weights ' + bytes_prefix + 'B':>10} {'KV ' + kv_prefix + 'B':>8} {'x none':>7} "
        f"{'act ' + bytes_prefix + 'B':>7} {'traffic ' + bytes_prefix + 'B':>10}",
    ]
    for row in rows:
        ratio = row["vs_none"]
        lines.append(
            f"{row['method']:<{width}} {row['visual_tokens']:>6} {row['sequence_length']:>5} "
            f"{row['flops'] / ops_scale:>7.3f} {ratio['flops']:>7.3f} "
            f"{row['prefill_seconds'] * time_scale:>10.2f} {ratio['prefill_seconds']:>7.3f} "
            f"{row['weight_bytes'] / bytes_scale:>10.2f} "
            f"{row['kv_cache_bytes'] / kv_scale:>8.1f} {ratio['kv_cache_bytes']:>7.3f} "
            f"{row['activation_bytes'] / bytes_scale:>7.2f} {row['memory_access_bytes'] / bytes_scale:>10.2f}"
        )
    return "\n".join(lines)
