"""The mini LLaVA-PruMerge model: its shape, tokenizer, processor, and the weights shipped in the package.

A LLaVA-1.5-shaped model at toy scale, trained on this project's machines on Shapes-VQA (a synthetic
task, see `llava_prumerge.evaluation.shapes_vqa`) by `llava-prumerge train-mini`:
- vision tower: a transformers `CLIPVisionModel` (72 px images, 6 px patches: 12 x 12 = 144 patches
  and a [CLS] token), trained from scratch on a [CLS] objective. It is CLIP's architecture, not
  OpenAI's CLIP weights: it has only ever seen Shapes-VQA images.
- projector: LLaVA-1.5's 2-layer GELU MLP on the layer -2 patch features.
- language model: a 4-layer Llama trained from scratch, with a byte-level BPE tokenizer trained in
  code on the task's text; it speaks only the vicuna_v1 template and Shapes-VQA's one-word answers.
Not the paper's weights, and no evidence about real images: it exists so that PruMerge's premise
(a sparse [CLS] attention on the content) and price (accuracy against visual tokens) can be seen
and measured on a machine without downloads.

A SigLIP variant (`train-mini --tower siglip`; the shipped weights are the CLIP one): the same model
with a transformers `SiglipVisionModel` of the same size (no [CLS] token, an attention-pooling head,
LLaVA-OneVision's kind of tower), which LLaVA reads with vision_feature_select_strategy "full" (every
row is a patch: 144 placeholders per image, as with CLIP's "default", which drops the [CLS] row). With
no [CLS] row PruMerge's importance is a stand-in (`ReductionSettings.importance` "auto" picks
`STAND_IN_IMPORTANCE` there): the variant exists to prove the stand-ins on a tower trained here. Both
variants share the image processor (LLaVA-1.5's padding and CLIP normalization; the tower is trained on
what it gives). `load_mini` reads which tower a folder holds from its weights.

The weights are stored as float16 safetensors (`weights/model.safetensors`) with the tokenizer
(`weights/tokenizer.json`); `mini_model()` builds the model from them, `save_hub_folder` (via
`llava-prumerge export --mini`) writes a Hub folder.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer
from transformers import LlavaImageProcessor, LlavaProcessor, PreTrainedTokenizerFast

from ..common.conversation import VICUNA_CHAT_TEMPLATE, VICUNA_V1_SYSTEM
from ..configuration.configuration_llava_prumerge import LlavaPruMergeConfig
from ..errors import MissingInputError, UsageError
from ..evaluation.shapes_vqa import question_corpus
from ..modeling.modeling_llava_prumerge import LlavaPruMergeForConditionalGeneration
from ..testing.tiny import SPECIAL_TOKENS, byte_level_bpe, llava_fast_tokenizer
from . import SHIPPED_MINI_MODELS

WEIGHTS_DIR = Path(__file__).parent / "weights"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
TRAINING_RECORD = "training.json"  # how the shipped weights were made, and what they scored

IMAGE_SIZE = 72
PATCH_SIZE = 6  # 12 x 12 = 144 patches
PATCHES = (IMAGE_SIZE // PATCH_SIZE) ** 2
VISION_CONFIG = {
    "model_type": "clip_vision_model",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 2,
    "image_size": IMAGE_SIZE,
    "patch_size": PATCH_SIZE,
    "projection_dim": 64,
}
SIGLIP_VISION_CONFIG = {  # the CLIP tower's size; no [CLS] token, no pre-norm, an attention-pooling head
    **{name: value for name, value in VISION_CONFIG.items() if name != "projection_dim"},
    "model_type": "siglip_vision_model",
}
VISION_CONFIGS = {"clip": VISION_CONFIG, "siglip": SIGLIP_VISION_CONFIG}
TOWERS = tuple(VISION_CONFIGS)
# The rows of the layer -2 hidden state that LLaVA gives the language model, PATCHES of them either way:
# "default" drops CLIP's [CLS] row 0, "full" keeps every SigLIP row (each a patch).
FEATURE_SELECT_STRATEGIES = {"clip": "default", "siglip": "full"}
CLASS_TOKENS = {"clip": 1, "siglip": 0}  # rows before the patches in the tower's sequence
# A parameter only CLIP's tower has (its [CLS] token's embedding), by its `stored_name`: `load_mini` reads
# the tower from the weights by it.
CLIP_ONLY_PARAMETER = "model.vision_tower.embeddings.class_embedding"
TEXT_CONFIG = {
    "model_type": "llama",
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": False,
}
TOKENIZER_VOCAB_SIZE = 512
MODEL_CARD_TAGS = ["mini", "synthetic-data", "shapes-vqa"]
CARD_NOTE = """\
> **A mini model for a synthetic task, not LLaVA-1.5.** Trained from scratch on a CPU by
> `llava-prumerge train-mini` on Shapes-VQA (colored circles, squares and triangles; questions about
> color, count, presence and side). The vision tower has CLIP's architecture but is not OpenAI's CLIP,
> the language model is a 4-layer Llama that knows only this task's words, and these are not the
> PruMerge paper's weights. It shows PruMerge working on learned attention; it knows nothing else.
"""


def build_tokenizer() -> Tokenizer:
    """The byte-level BPE tokenizer, trained in code on the chat template's text and every Shapes-VQA
    question and answer (what `train-mini` does; the shipped model keeps the one it was trained with)."""
    corpus = [f"{VICUNA_V1_SYSTEM} USER: <image>\n{text} ASSISTANT: {text}</s>" for text in question_corpus()]
    return byte_level_bpe(corpus * 4, SPECIAL_TOKENS, vocab_size=TOKENIZER_VOCAB_SIZE)


def check_tower(tower: str) -> str:
    """`tower` if it names one of TOWERS, else a UsageError."""
    if tower not in TOWERS:
        raise UsageError(f"the mini model's tower is {tower!r}; use one of {', '.join(map(repr, TOWERS))}")
    return tower


def mini_processor(tokenizer: PreTrainedTokenizerFast, tower: str = "clip") -> LlavaProcessor:
    """LLaVA-1.5's processing at 72 px: pad to a square with the mean color, resize, CLIP normalization
    (for either tower); PATCHES placeholders per image (the `tower`'s feature select strategy)."""
    check_tower(tower)
    image_processor = LlavaImageProcessor(
        do_pad=True,
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy=FEATURE_SELECT_STRATEGIES[tower],
        image_token="<image>",
        num_additional_image_tokens=CLASS_TOKENS[tower],
        chat_template=VICUNA_CHAT_TEMPLATE,
    )


def mini_config(
    tokenizer: PreTrainedTokenizerFast, tower: str = "clip", **reduction_fields
) -> LlavaPruMergeConfig:
    """The mini model's config with the `tower` ("clip" or "siglip") and reducer fields."""
    check_tower(tower)
    text_config = {
        **TEXT_CONFIG,
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    return LlavaPruMergeConfig(
        vision_config=dict(VISION_CONFIGS[tower]),
        text_config=text_config,
        vision_feature_select_strategy=FEATURE_SELECT_STRATEGIES[tower],
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=PATCHES,
        pad_token_id=tokenizer.pad_token_id,
        **reduction_fields,
    )


def new_mini_model(tokenizer: PreTrainedTokenizerFast, seed: int, tower: str = "clip", **reduction_fields):
    """The mini architecture with the `tower` and fresh random weights (what training starts from)."""
    torch.manual_seed(seed)
    model = LlavaPruMergeForConditionalGeneration(mini_config(tokenizer, tower, **reduction_fields))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def load_shipped_mini(name: str = "mini", **reduction_fields):
    """(model, processor) of a mini model shipped in the package, by its --model name (`SHIPPED_MINI_MODELS`)."""
    return load_mini(Path(__file__).parent / SHIPPED_MINI_MODELS[name], **reduction_fields)


def load_mini(weights_dir: str | Path = WEIGHTS_DIR, **reduction_fields):
    """(model, processor) from a folder holding `model.safetensors` and `tokenizer.json` (default: the
    weights shipped in the package), in float32 and eval mode; reducer fields override the defaults.

    The tower (CLIP or SigLIP) is read from the weights, by CLIP_ONLY_PARAMETER: they are what is loaded
    and always there, where training.json may be missing or older than `MiniRecipe.tower` (the shipped
    one is) and could disagree with them."""
    from safetensors.torch import load_file

    weights_dir = Path(weights_dir)
    missing = [name for name in (WEIGHTS_FILE, TOKENIZER_FILE) if not (weights_dir / name).is_file()]
    if missing:
        raise MissingInputError(
            f"{weights_dir} lacks {', '.join(missing)}; train the mini model with `llava-prumerge train-mini`"
        )
    tokenizer = llava_fast_tokenizer(Tokenizer.from_file(str(weights_dir / TOKENIZER_FILE)))
    stored = load_file(weights_dir / WEIGHTS_FILE)
    tower = "clip" if CLIP_ONLY_PARAMETER in stored else "siglip"  # the name check below catches others
    model = new_mini_model(tokenizer, seed=0, tower=tower, **reduction_fields)
    names = {stored_name(name): name for name in model.state_dict()}
    if set(names) != set(stored):
        raise MissingInputError(
            f"{weights_dir / WEIGHTS_FILE} does not hold the mini model's weights ({tower} tower): "
            f"{sorted(set(names) ^ set(stored))[:3]} ... differ"
        )
    model.load_state_dict({names[name]: tensor.float() for name, tensor in stored.items()}, strict=True)
    return model.eval(), mini_processor(tokenizer, tower)


def stored_name(name: str) -> str:
    """A parameter's name in the weights file: transformers 5's layout, where `CLIPVisionModel` and
    `SiglipVisionModel` hold their layers directly (4.x nests them under `vision_model.`), so one file loads
    under both."""
    return name.replace("vision_tower.vision_model.", "vision_tower.")


def add_card_note(folder: Path) -> Path:
    """Put CARD_NOTE under the title of a Hub folder's model card (README.md)."""
    card = folder / "README.md"
    lines = card.read_text(encoding="utf-8").split("\n")
    title = next(i for i, line in enumerate(lines) if line.startswith("# "))
    lines[title + 1 : title + 1] = ["", CARD_NOTE.rstrip("\n")]
    card.write_text("\n".join(lines), encoding="utf-8")
    return folder


def save_mini_weights(model, tokenizer: PreTrainedTokenizerFast, weights_dir: str | Path) -> Path:
    """The model's weights as float16 safetensors and its tokenizer, as shipped in the package."""
    from safetensors.torch import save_file

    weights_dir = Path(weights_dir)
    weights_dir.mkdir(parents=True, exist_ok=True)
    state = {
        stored_name(name): tensor.detach().to(torch.float16).contiguous()
        for name, tensor in model.state_dict().items()
    }
    save_file(state, weights_dir / WEIGHTS_FILE, metadata={"format": "pt"})
    tokenizer.backend_tokenizer.save(str(weights_dir / TOKENIZER_FILE))
    return weights_dir
