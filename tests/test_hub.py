"""Hub distribution: export, convert and upload, and loading an exported folder without this package.

The remote-code test exports under the running transformers and loads the folder in fresh
interpreters of both majors (PRUMERGE_TEST_PYTHONS: tf4 python, then tf5 python; the running
interpreter alone when unset). Nothing is downloaded: HF_HUB_OFFLINE=1 in every subprocess.
"""

import argparse
import ast
import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_image
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    AutoProcessor,
    CLIPImageProcessor,
    CLIPModel,
    LlamaForCausalLM,
    LlavaForConditionalGeneration,
    PreTrainedTokenizerFast,
)

from llava_prumerge import REDUCTION_DEFAULTS, LlavaPruMergeForConditionalGeneration, reduce_visual_tokens
from llava_prumerge.hub_upload import convert, export, upload
from llava_prumerge.hub_upload.remote_code import REMOTE_CODE_SOURCES, RemoteCodeError, flatten_imports
from llava_prumerge.hub_upload.tiny_inputs import write_tiny_inputs
from llava_prumerge.hub_upload.validate import InvalidHubFolder, validate_hub_folder
from llava_prumerge.modeling.token_reduction import class_attention

PYTHONS = os.environ.get("PRUMERGE_TEST_PYTHONS", sys.executable).split(":")
PROMPT = "USER: <image>\nWhat is shown? ASSISTANT:"
NEW_TOKENS = 6


def run_cli(module, argv: list[str]):
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return module.main_from_args(parser.parse_args([str(arg) for arg in argv]))


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory, model, processor) -> Path:
    out = tmp_path_factory.mktemp("export") / "tiny-prumerge"
    return export.save_hub_folder(model, processor, out, model_card_extra={"license": "apache-2.0"})


# ---------------------------------------------------------------- the folder


def test_folder_holds_sharded_weights_remote_code_and_files_both_majors_read(hub_folder, model):
    assert {path.name for path in hub_folder.iterdir()} == {
        "README.md", "chat_template.jinja", "config.json", "configuration_llava_prumerge.py",
        "generation_config.json", "model-00001-of-00001.safetensors", "model.safetensors.index.json",
        "modeling_llava_prumerge.py", "preprocessor_config.json", "processor_config.json", "token_reduction.py",
        "tokenizer.json", "tokenizer_config.json",
    }  # fmt: skip
    config = json.loads((hub_folder / "config.json").read_text())
    assert config["model_type"] == "llava_prumerge"
    assert config["auto_map"]["AutoModelForVision2Seq"] == config["auto_map"]["AutoModelForImageTextToText"]
    assert config["auto_map"]["AutoModel"] == "modeling_llava_prumerge.LlavaPruMergeModel"
    assert "rope_theta" in config["text_config"]  # 4.57 ignores 5.x's rope_parameters
    weight_map = json.loads((hub_folder / "model.safetensors.index.json").read_text())["weight_map"]
    assert all(
        name.startswith(("language_model.model.", "language_model.lm_head.", "vision_tower.vision_model.",
                         "multi_modal_projector."))
        for name in weight_map
    ), "weights must use the llava-hf key layout, which both majors load"  # fmt: skip

    tokenizer_config = json.loads((hub_folder / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert tokenizer_config["model_input_names"] == ["input_ids", "attention_mask"]
    assert tokenizer_config["additional_special_tokens"] == ["<image>"]
    image_settings = json.loads((hub_folder / "preprocessor_config.json").read_text())
    assert (
        image_settings["image_processor_type"] == "LlavaImageProcessor" and image_settings["do_pad"] is True
    )
    processor_settings = json.loads((hub_folder / "processor_config.json").read_text())
    assert "image_processor" not in processor_settings and processor_settings["patch_size"] == 4

    loaded, info = LlavaPruMergeForConditionalGeneration.from_pretrained(hub_folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_model_card_has_hub_metadata_usage_for_both_majors_and_the_reducer_settings(hub_folder):
    card = (hub_folder / "README.md").read_text()
    front_matter = card.split("---")[1]
    for line in ("license: apache-2.0", "pipeline_tag: image-text-to-text", "library_name: transformers"):
        assert line in front_matter
    assert "- llava-prumerge" in front_matter and "- custom_code" in front_matter
    for text in ("AutoModelForVision2Seq", "AutoModelForImageTextToText", "trust_remote_code=True",
                 'device_map="auto"', '"image-text-to-text"', str(hub_folder)):  # fmt: skip
        assert text in card
    for field in REDUCTION_DEFAULTS:
        assert f"| `{field}` |" in card


# ---------------------------------------------------------------- remote code

NETWORK_OR_CODE_MODULES = {"socket", "ssl", "http", "urllib", "requests", "huggingface_hub", "subprocess",
                           "pickle", "marshal", "shelve", "ctypes", "importlib"}  # fmt: skip
DANGEROUS_CALLS = {"eval", "exec", "compile", "__import__", "torch.load", "os.system", "os.popen"}


def test_remote_code_is_self_contained_and_does_no_io_pickling_or_code_execution(hub_folder):
    siblings = {name.removesuffix(".py") for name in REMOTE_CODE_SOURCES}
    for name in REMOTE_CODE_SOURCES:
        tree = ast.parse((hub_folder / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1 and node.module in siblings, (
                    f"{name}: from {'.' * node.level}{node.module}"
                )
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = (
                    [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module]
                )
                for module in modules:
                    top = module.split(".")[0]
                    assert top in {"torch", "transformers"} or top in sys.stdlib_module_names, (
                        f"{name}: {module}"
                    )
                    assert top not in NETWORK_OR_CODE_MODULES, f"{name}: {module}"
            elif isinstance(node, ast.Call):
                assert ast.unparse(node.func) not in DANGEROUS_CALLS, f"{name}: {ast.unparse(node.func)}()"
    configuration = (hub_folder / "configuration_llava_prumerge.py").read_text()
    assert "from .token_reduction import" in configuration and "from .." not in configuration
    modeling = (hub_folder / "modeling_llava_prumerge.py").read_text()
    assert "from .configuration_llava_prumerge import LlavaPruMergeConfig" in modeling


def test_other_package_relative_imports_are_refused():
    with pytest.raises(RemoteCodeError, match=r"x\.py:2: package-relative import `from \.\.tiny import"):
        flatten_imports("import torch\nfrom ..tiny import tiny_model\n", "x.py")


REMOTE_LOAD_SCRIPT = r"""
import sys
sys.modules["llava_prumerge"] = None  # a user's machine: this package is not installed
import json
import transformers
from PIL import Image

spec = json.loads(open(sys.argv[1]).read())
folder = spec["folder"]
try:
    import llava_prumerge  # noqa: F401
    raise AssertionError("llava_prumerge must not be importable here")
except ImportError:
    pass
major = int(transformers.__version__.split(".")[0])
auto = transformers.AutoModelForImageTextToText if major >= 5 else transformers.AutoModelForVision2Seq
model = auto.from_pretrained(folder, trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
processor = transformers.AutoProcessor.from_pretrained(folder, trust_remote_code=True)
chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]}]
prompt = processor.apply_chat_template(chat, add_generation_prompt=True)
assert prompt == spec["prompt"], prompt
image = Image.open(spec["image"])
inputs = processor(images=image, text=prompt, return_tensors="pt")
assert sorted(inputs) == ["attention_mask", "input_ids", "pixel_values"], sorted(inputs)
assert inputs["input_ids"][0].tolist() == spec["input_ids"], "tokenization differs"
assert abs(float(inputs["pixel_values"].sum()) - spec["pixel_sum"]) < 1e-2, "image preprocessing differs"
n = len(spec["new_tokens"])
sequences = model.generate(**inputs, max_new_tokens=n, do_sample=False)
assert sequences[0, -n:].tolist() == spec["new_tokens"], sequences[0, -n:].tolist()

mapped = auto.from_pretrained(folder, trust_remote_code=True, device_map="auto")
mapped_sequences = mapped.generate(**inputs.to(mapped.device), max_new_tokens=n, do_sample=False)
assert mapped_sequences[0, -n:].tolist() == spec["new_tokens"]

pipe = transformers.pipeline("image-text-to-text", model=folder, trust_remote_code=True)
out = pipe(images=image, text=prompt, max_new_tokens=n, return_full_text=False)
assert out[0]["generated_text"] == spec["new_text"], out
if major < 5:
    pipe = transformers.pipeline("image-to-text", model=folder, trust_remote_code=True)
    out = pipe(image, prompt=prompt, generate_kwargs={"max_new_tokens": n})
    assert out[0]["generated_text"] == processor.decode(sequences[0], skip_special_tokens=True), out

for method, count in spec["visual_token_counts"].items():
    variant = auto.from_pretrained(folder, trust_remote_code=True, token_reduction=method)
    assert variant(**inputs).visual_token_counts == [count], (method, variant.config.token_reduction)
print("remote code OK under transformers", transformers.__version__)
"""


def test_exported_folder_loads_without_the_package_under_each_major(tmp_path, hub_folder, model, processor):
    image_path = tmp_path / "wide.png"
    make_image(5, width=70, height=40).save(image_path)  # not square: the mean-colour padding matters
    image = Image.open(image_path)
    inputs = processor(images=image, text=PROMPT, return_tensors="pt")
    with torch.no_grad():
        sequences = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
        plus = copy.deepcopy(model)
        plus.config.token_reduction = "prumerge_plus"
        counts = {"prumerge": model(**inputs).visual_token_counts[0], "prumerge_plus": plus(**inputs).visual_token_counts[0]}  # fmt: skip
    assert counts["prumerge"] < counts["prumerge_plus"] < 196
    spec = {
        "folder": str(hub_folder),
        "image": str(image_path),
        "prompt": PROMPT,
        "input_ids": inputs["input_ids"][0].tolist(),
        "pixel_sum": float(inputs["pixel_values"].sum()),
        "new_tokens": sequences[0, -NEW_TOKENS:].tolist(),
        "new_text": processor.decode(sequences[0, -NEW_TOKENS:], skip_special_tokens=True),
        "visual_token_counts": counts,
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "load.py").write_text(REMOTE_LOAD_SCRIPT)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf_home"),
        "TRANSFORMERS_VERBOSITY": "error",
    }
    runs = {
        python: subprocess.Popen(
            [python, "load.py", "spec.json"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for python in PYTHONS
    }
    for python, process in runs.items():
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, f"loading under {python} failed:\n{output[-3000:]}"
        assert "remote code OK" in output


# ---------------------------------------------------------------- export


def test_export_from_hf_with_no_reduction_equals_the_stock_model(tmp_path, tiny_inputs, images):
    out = run_cli(
        export, ["--from-hf", tiny_inputs.llava_hf, "--token-reduction", "none", "--out", tmp_path / "hub"]
    )
    wrapped = LlavaPruMergeForConditionalGeneration.from_pretrained(out).eval()
    stock = LlavaForConditionalGeneration.from_pretrained(tiny_inputs.llava_hf).eval()
    processor = AutoProcessor.from_pretrained(out)
    assert processor.image_processor.do_pad and wrapped.config.token_reduction == "none"
    inputs = processor(
        images=images[:2], text=[PROMPT, PROMPT + " Be brief."], return_tensors="pt", padding=True
    )
    with torch.no_grad():
        torch.testing.assert_close(wrapped(**inputs).logits, stock(**inputs).logits)


def test_export_tiny_command_shards_by_size_and_records_the_settings(tmp_path):
    argv = [
        "--tiny",
        "--token-reduction",
        "prumerge_plus",
        "--dtype",
        "bfloat16",
        "--max-shard-size",
        "200KB",
    ]
    out = run_cli(export, [*argv, "--out", tmp_path / "tiny", "--model-id", "org/tiny"])
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and shards == sorted(path.name for path in out.glob("*.safetensors"))
    loaded = LlavaPruMergeForConditionalGeneration.from_pretrained(out, dtype="auto")
    assert loaded.config.token_reduction == "prumerge_plus" and loaded.dtype == torch.bfloat16
    card = (out / "README.md").read_text()
    assert 'model_id = "org/tiny"' in card and "| `token_reduction` | `'prumerge_plus'` |" in card
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_cli(export, [*argv, "--out", out])


def test_interrupted_export_leaves_no_folder_and_existing_folders_are_kept(
    tmp_path, model, processor, monkeypatch
):
    out = tmp_path / "tiny-prumerge"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(export, "write_processor_files", interrupted)
        with pytest.raises(KeyboardInterrupt):
            export.save_hub_folder(model, processor, out)
    assert list(tmp_path.iterdir()) == [], "no OUT and no partial folder may remain"

    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--overwrite"):
        export.save_hub_folder(model, processor, out)
    assert (out / "keep.txt").read_text() == "mine"
    export.save_hub_folder(model, processor, out, overwrite=True)
    assert not (out / "keep.txt").exists()
    validate_hub_folder(out)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["tiny-prumerge"]


# ---------------------------------------------------------------- convert


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory):
    return write_tiny_inputs(tmp_path_factory.mktemp("inputs"))


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
    side = max(image.size)  # LLaVA-1.5's expand2square: pad with the mean colour, image centred
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
    out = run_cli(
        convert,
        ["--base", tiny_inputs.vicuna, "--vision-tower", tiny_inputs.clip, "--lora", lora,
         "--out", tmp_path / "hub", "--dtype", "float32"],
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
                inputs["input_ids"], inputs["pixel_values"]
            ).inputs_embeds
        ).logits[0]
    assert logits.shape == expected.shape
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    assert (base_only - expected).abs().max() > 1e-2, (
        "the LoRA must change the outputs for this test to mean anything"
    )


def edit_json(path: Path, **changes):
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


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
}


@pytest.mark.parametrize("case", list(BROKEN_CHECKPOINTS))
def test_convert_errors_name_the_file_or_key(tmp_path, tiny_inputs, case):
    lora = llava_format_lora(tiny_inputs, tmp_path / "lora", "bin")
    clip = shutil.copytree(tiny_inputs.clip, tmp_path / "clip")
    breaks, message = BROKEN_CHECKPOINTS[case]
    breaks(lora, clip)
    with pytest.raises(convert.ConversionError, match=message):
        convert.convert_llava_lora(tiny_inputs.vicuna, clip, lora, dtype=torch.float32)


# ---------------------------------------------------------------- upload


class RecordingHubApi:
    """Stands in for huggingface_hub.HfApi (the network API only): records every call."""

    def __init__(self, **kwargs):
        self.init_kwargs = kwargs
        self.calls = []

    def whoami(self):
        self.calls.append(("whoami", {}))
        return {"name": "maintainer"}

    def create_repo(self, **kwargs):
        self.calls.append(("create_repo", kwargs))

    def create_branch(self, **kwargs):
        self.calls.append(("create_branch", kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        return argparse.Namespace(commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/abc")


SECRET = "hf_secretTokenThatMustNeverBePrinted"


def test_upload_creates_the_repo_and_branch_and_pushes_the_folder_in_one_commit(
    hub_folder, monkeypatch, capsys
):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    api = RecordingHubApi()
    upload.upload_hub_folder(
        hub_folder,
        "org/llava-prumerge-7b",
        private=True,
        revision="v2",
        commit_message="Tiny variant",
        api=api,
    )
    names = [name for name, _ in api.calls]
    assert names == ["whoami", "create_repo", "create_branch", "upload_folder"]
    calls = dict(api.calls)
    assert calls["create_repo"] == {"repo_id": "org/llava-prumerge-7b", "repo_type": "model", "private": True, "exist_ok": True}  # fmt: skip
    assert calls["create_branch"] == {"repo_id": "org/llava-prumerge-7b", "repo_type": "model", "branch": "v2", "exist_ok": True}  # fmt: skip
    pushed = calls["upload_folder"]
    assert (pushed["repo_id"], pushed["revision"], pushed["commit_message"]) == ("org/llava-prumerge-7b", "v2", "Tiny variant")  # fmt: skip
    assert Path(pushed["folder_path"]) == hub_folder
    assert sorted(pushed["allow_patterns"]) == sorted(path.name for path in hub_folder.iterdir())
    output = capsys.readouterr()
    assert SECRET not in output.out + output.err and SECRET not in repr(api.calls)


def test_upload_command_defaults_and_token_from_the_standard_places(hub_folder, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    constructed = []
    monkeypatch.setattr(upload, "HfApi", lambda **kwargs: constructed.append(RecordingHubApi(**kwargs)) or constructed[-1])  # fmt: skip
    run_cli(upload, [hub_folder, "--repo-id", "org/llava-prumerge-7b"])
    (api,) = constructed
    assert api.init_kwargs == {}, "huggingface_hub must find the token itself (HF_TOKEN or `hf auth login`)"
    calls = dict(api.calls)
    assert "create_branch" not in calls and calls["create_repo"]["private"] is False
    assert calls["upload_folder"]["revision"] is None
    assert calls["upload_folder"]["commit_message"] == "Upload tiny-prumerge"
    output = capsys.readouterr()
    assert SECRET not in output.out + output.err


def test_dry_run_lists_paths_and_sizes_and_makes_no_calls(hub_folder, monkeypatch, capsys):
    monkeypatch.setattr(
        upload, "HfApi", lambda **kwargs: pytest.fail("a dry run must not create an API client")
    )
    files = run_cli(upload, [hub_folder, "--repo-id", "org/llava-prumerge-7b", "--dry-run", "--private"])
    out = capsys.readouterr().out
    assert "Would push 13 files" in out and "org/llava-prumerge-7b@main (private)" in out
    listed = {
        line.split()[0]: " ".join(line.split()[1:]) for line in out.splitlines() if line.startswith("  ")
    }
    assert listed == {
        path.as_posix(): upload.human_size((hub_folder / path).stat().st_size) for path in files
    }
    assert "nothing was pushed" in out


def truncate_shard(folder: Path):
    shard = folder / "model-00001-of-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])


INVALID_FOLDERS = {
    "missing shard": (
        lambda folder: (folder / "model-00001-of-00001.safetensors").unlink(),
        "shard model-00001-of-00001.safetensors .listed in model.safetensors.index.json. is missing",
    ),
    "truncated shard": (truncate_shard, r"unreadable: .* \(truncated\?\)"),
    "tampered remote code": (
        lambda folder: (folder / "modeling_llava_prumerge.py").write_text(
            (folder / "modeling_llava_prumerge.py").read_text() + "\nimport socket\n"
        ),
        "modeling_llava_prumerge.py:.*: imports socket",
    ),
    "remote code importing the package": (
        lambda folder: (folder / "token_reduction.py").write_text("from ..tiny import tiny_model\n"),
        "token_reduction.py:1: relative import from ..tiny",
    ),
    "bad config": (
        lambda folder: edit_json(folder / "config.json", token_reduction="tome"),
        "config.json does not load as LlavaPruMergeConfig: token_reduction='tome'",
    ),
    "weights for another config": (
        lambda folder: edit_json(
            folder / "config.json",
            text_config={
                **json.loads((folder / "config.json").read_text())["text_config"],
                "hidden_size": 128,
            },
        ),
        "weight.s. have the wrong shape",
    ),  # fmt: skip
    "pickle weights": (
        lambda folder: torch.save({}, folder / "pytorch_model.bin"),
        "pytorch_model.bin is a pickle",
    ),
    "transformers 5 tokenizer layout": (
        lambda folder: edit_json(folder / "tokenizer_config.json", tokenizer_class="TokenizersBackend"),
        "tokenizer_class 'TokenizersBackend', which transformers 4.57 cannot load",
    ),
}


@pytest.mark.parametrize("case", list(INVALID_FOLDERS))
def test_invalid_folders_are_refused_before_any_call(tmp_path, hub_folder, case, monkeypatch):
    folder = shutil.copytree(hub_folder, tmp_path / "tiny-prumerge")
    breaks, message = INVALID_FOLDERS[case]
    breaks(folder)
    api = RecordingHubApi()
    with pytest.raises(InvalidHubFolder, match=message):
        upload.upload_hub_folder(folder, "org/llava-prumerge-7b", api=api)
    assert api.calls == []
