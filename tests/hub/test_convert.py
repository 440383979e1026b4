"""`convert`: the paper's original-format LoRA checkpoints to PruMerge Hub folders."""

import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import (
    AutoProcessor,
    CLIPImageProcessor,
    CLIPModel,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from llava_prumerge import LlavaPruMergeForConditionalGeneration, reduce_visual_tokens
from llava_prumerge.cli import main
from llava_prumerge.hub_upload import convert
from llava_prumerge.modeling.token_reduction import class_attention
from llava_prumerge.testing.files import edit_json, truncate_file
from llava_prumerge.testing.model_tester import make_image

PROMPT = "USER: <image>\nWhat is shown? ASSISTANT:"


def run_cli(*argv):
    main([str(arg) for arg in argv])


def llava_format_lora(tiny_inputs, folder: Path, adapter_format: str) -> Path:
    """The LoRA folder as LLaVA writes it: non_lora_trainables.bin and the adapter via torch.save (or safetensors)."""
    shutil.copytree(tiny_inputs.lora, folder)
    torch.save(load_file(folder / "non_lora_trainables.safetensors"), folder / "non_lora_trainables.bin")
    (folder / "non_lora_trainables.safetensors").unlink()
    if adapter_format == "bin":
        torch.save(load_file(folder / "adapter_model.safetensors"), folder / "adapter_model.bin")
        (folder / "adapter_model.safetensors").unlink()
    return folder


def reference_logits(tiny_inputs, lora: Path, image: Image.Image, base_tokenizer, image_token_id: int):
    """Base Llama + the LoRA unmerged (PEFT) + the projector loaded by hand + CLIP + the reducer."""
    from peft import PeftModel

    llm = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(tiny_inputs.vicuna), lora).eval()
    weights = torch.load(lora / "non_lora_trainables.bin", weights_only=True)
    projector = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 64))
    for index in (0, 2):
        projector[index].weight.data = weights[f"base_model.model.model.mm_projector.{index}.weight"]
        projector[index].bias.data = weights[f"base_model.model.model.mm_projector.{index}.bias"]
    clip_processor = CLIPImageProcessor.from_pretrained(tiny_inputs.clip)
    side = max(image.size)  # LLaVA-1.5's expand2square: pad with the mean color, image centered
    square = Image.new("RGB", (side, side), tuple(int(x * 255) for x in clip_processor.image_mean))
    square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    pixel_values = clip_processor(square, return_tensors="pt").pixel_values
    vision = CLIPModel.from_pretrained(tiny_inputs.clip).vision_model.eval()
    captured = {}
    last = vision.encoder.layers[-1].self_attn
    last.q_proj.register_forward_hook(lambda module, args, out: captured.__setitem__("q", out))
    last.k_proj.register_forward_hook(lambda module, args, out: captured.__setitem__("k", out))
    with torch.no_grad():
        hidden_states = vision(pixel_values, output_hidden_states=True).hidden_states
        reduced = reduce_visual_tokens(
            hidden_states[-2][:, 1:], class_attention(captured["q"], captured["k"]), captured["k"][:, 1:]
        )
        image_embeds = projector(reduced.features[0])
        before = base_tokenizer("USER: ")["input_ids"]
        after = base_tokenizer("\nWhat is shown? ASSISTANT:", add_special_tokens=False)["input_ids"]
        embed = llm.get_input_embeddings()
        embeds = torch.cat([embed(torch.tensor(before)), image_embeds, embed(torch.tensor(after))])
        logits = llm(inputs_embeds=embeds[None]).logits[0]
    return logits, pixel_values, before + [image_token_id] + after


@pytest.mark.parametrize("adapter_format", ["bin", "safetensors"])
def test_convert_equals_the_unmerged_lora_reference(tmp_path, tiny_inputs, adapter_format):
    lora = llava_format_lora(tiny_inputs, tmp_path / "lora", adapter_format)
    out = tmp_path / "hub"
    run_cli(
        "convert", "--base", tiny_inputs.vicuna, "--vision-tower", tiny_inputs.clip, "--lora", lora,
        "--out", out, "--dtype", "float32",
    )  # fmt: skip
    converted = LlavaPruMergeForConditionalGeneration.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    base_tokenizer = PreTrainedTokenizerFast.from_pretrained(tiny_inputs.vicuna)
    vocab = len(base_tokenizer)
    image_token_id, pad_token_id = converted.config.image_token_id, converted.config.text_config.pad_token_id
    assert (image_token_id, pad_token_id) == (vocab, vocab + 1)  # as llava-hf: 32000 and 32001 for Vicuna
    assert converted.config.text_config.vocab_size == 320  # 302 tokens, padded to a multiple of 64
    assert converted.config.vision_feature_layer == -2

    image = make_image(7, width=72, height=48)
    expected, pixel_values, ids = reference_logits(tiny_inputs, lora, image, base_tokenizer, image_token_id)
    inputs = processor(images=image, text=PROMPT, return_tensors="pt")
    torch.testing.assert_close(inputs["pixel_values"], pixel_values)
    runs = inputs["input_ids"][0].tolist()
    assert [t for i, t in enumerate(runs) if t != image_token_id or runs[i - 1] != image_token_id] == ids
    with torch.no_grad():
        logits = converted(**inputs).logits[0, :, :vocab]
        base_only = LlamaForCausalLM.from_pretrained(tiny_inputs.vicuna)(
            inputs_embeds=converted.model.compact_inputs(
                inputs["input_ids"], visual=converted.model.visual_tokens(inputs["pixel_values"])
            ).inputs_embeds
        ).logits[0]
    assert logits.shape == expected.shape
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    assert (base_only - expected).abs().max() > 1e-2, (
        "the LoRA must change the outputs for this test to mean anything"
    )


def replace_tensor(path: Path, key: str, tensor):
    weights = torch.load(path, weights_only=True)
    weights[key] = tensor
    torch.save(weights, path)


BROKEN_CHECKPOINTS = {
    "missing projector file": (
        lambda lora, clip: (lora / "non_lora_trainables.bin").unlink(),
        "non_lora_trainables.bin is missing",
    ),  # fmt: skip
    "missing adapter": (
        lambda lora, clip: (lora / "adapter_model.bin").unlink(),
        "adapter_model.safetensors is missing",
    ),
    "missing adapter config": (
        lambda lora, clip: (lora / "adapter_config.json").unlink(),
        "adapter_config.json is missing",
    ),  # fmt: skip
    "unknown projector type": (
        lambda lora, clip: edit_json(lora / "config.json", mm_projector_type="qformer"),
        "config.json: mm_projector_type='qformer' is not supported",
    ),
    "projector weight shape": (
        lambda lora, clip: replace_tensor(
            lora / "non_lora_trainables.bin",
            "base_model.model.model.mm_projector.0.weight",
            torch.zeros(64, 48),
        ),  # fmt: skip
        r"non_lora_trainables.bin: model.mm_projector.0.weight has shape \(64, 48\), expected \(64, 32\)",
    ),
    "projector for another vision tower": (
        lambda lora, clip: edit_json(lora / "config.json", mm_hidden_size=1024),
        "mm_hidden_size=1024 does not match the vision tower's hidden_size 32",
    ),
    "select layer out of range": (
        lambda lora, clip: edit_json(lora / "config.json", mm_vision_select_layer=-9),
        "mm_vision_select_layer=-9 is out of range for the vision tower's 3 layers",
    ),
    "not a CLIP tower": (
        lambda lora, clip: edit_json(clip / "config.json", model_type="siglip"),
        "clip/config.json: model_type='siglip'; the vision tower must be a CLIP checkpoint",
    ),
    "LoRA keys for another model": (
        lambda lora, clip: torch.save(
            {
                k.replace("model.layers", "model.decoder.layers"): v
                for k, v in torch.load(lora / "adapter_model.bin", weights_only=True).items()
            },  # fmt: skip
            lora / "adapter_model.bin",
        ),
        "adapter_model.bin: 28 LoRA weight\\(s\\) match no layer of the base model",
    ),
    "LoRA of another width": (
        lambda lora, clip: replace_tensor(
            lora / "adapter_model.bin",
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
            torch.zeros(8, 48),
        ),  # fmt: skip
        "adapter_model.bin does not fit the base model",
    ),
    "LoRA lacking some layers": (
        lambda lora, clip: torch.save(
            {
                k: v
                for k, v in torch.load(lora / "adapter_model.bin", weights_only=True).items()
                if ".layers.1." not in k
            },
            lora / "adapter_model.bin",
        ),
        r"adapter_model.bin lacks 14 LoRA weight\(s\) of the layers its adapter_config.json adapts",
    ),
    "truncated adapter": (
        lambda lora, clip: truncate_safetensors_copy(lora / "adapter_model.bin"),
        r"lora/adapter_model.safetensors is unreadable: .*\(truncated\?\)",
    ),
    "truncated vision tower": (
        lambda lora, clip: truncate_file(clip / "model.safetensors"),
        r"clip/model.safetensors is unreadable: .*\(truncated\?\)",
    ),
    "adapter config a list": (
        lambda lora, clip: (lora / "adapter_config.json").write_text("[]"),
        r"lora/adapter_config.json holds a JSON list, not the object a config is",
    ),
    "LoRA config a list": (
        lambda lora, clip: (lora / "config.json").write_text("[]"),
        r"lora/config.json holds a JSON list",
    ),
    "vision config a list": (
        lambda lora, clip: (clip / "config.json").write_text("[]"),
        r"clip/config.json holds a JSON list",
    ),
}


def truncate_safetensors_copy(bin_path: Path) -> None:
    """Replace a pickled state dict by a safetensors copy that was cut short."""
    target = bin_path.with_suffix(".safetensors")
    save_file(torch.load(bin_path, weights_only=True), target, metadata={"format": "pt"})
    bin_path.unlink()
    truncate_file(target)


@pytest.mark.parametrize("case", list(BROKEN_CHECKPOINTS))
def test_convert_errors_name_the_file_or_key(tmp_path, tiny_inputs, case):
    lora = llava_format_lora(tiny_inputs, tmp_path / "lora", "bin")
    clip = shutil.copytree(tiny_inputs.clip, tmp_path / "clip")
    breaks, message = BROKEN_CHECKPOINTS[case]
    breaks(lora, clip)
    with pytest.raises(convert.ConversionError, match=message):
        convert.convert_llava_lora(tiny_inputs.vicuna, clip, lora, dtype=torch.float32)
