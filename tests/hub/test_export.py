"""`export` and `save_hub_folder`: what a Hub folder holds, and that it loads without this package.

The remote-code test exports under the running transformers and loads the folder in fresh
interpreters of both majors (PRUMERGE_TEST_PYTHONS: tf4 python, then tf5 python; the running
interpreter alone when unset). Nothing is downloaded: HF_HUB_OFFLINE=1 in every subprocess.
"""

import json
import shutil

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

from llava_prumerge import LlavaPruMergeForConditionalGeneration
from llava_prumerge.cli import main
from llava_prumerge.errors import UsageError
from llava_prumerge.hub_upload import export
from llava_prumerge.hub_upload.validate import validate_hub_folder
from llava_prumerge.modeling.reduction_settings import REDUCTION_FIELDS
from llava_prumerge.testing.model_tester import make_image, visible_log_probs
from llava_prumerge.testing.subprocesses import REMOTE_PRELUDE, run_offline

PROMPT = "USER: <image>\nWhat is shown? ASSISTANT:"
NEW_TOKENS = 6


def run_cli(*argv):
    main([str(arg) for arg in argv])


def test_folder_holds_sharded_weights_remote_code_and_files_both_majors_read(hub_folder, model):
    assert {path.name for path in hub_folder.iterdir()} == {
        "README.md", "chat_template.jinja", "config.json", "generation_config.json",
        "model-00001-of-00001.safetensors", "model.safetensors.index.json", "preprocessor_config.json",
        "processor_config.json", "tokenizer.json", "tokenizer_config.json",
        # remote code: the shared parts, then LLaVA's configuration and modeling
        "errors.py", "reduction_settings.py", "runtime_compat.py", "token_reduction.py", "vision_encoding.py",
        "anyres.py", "frames.py", "compaction.py", "modeling_prumerge.py", "configuration_prumerge.py", "configuration_llava_prumerge.py",
        "modeling_llava_prumerge.py",
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
    for text in ("AutoModelForImageTextToText", "trust_remote_code=True",
                 'device_map="auto"', '"image-text-to-text"', str(hub_folder)):  # fmt: skip
        assert text in card
    assert "AutoModelForVision2Seq" not in card  # deprecated in 4.57 itself; both majors share the other name
    for field in REDUCTION_FIELDS:
        assert f"| `{field}` |" in card


REMOTE_LOAD_SCRIPT = (
    REMOTE_PRELUDE
    + r"""
from PIL import Image
try:
    import llava_prumerge  # noqa: F401
    raise AssertionError("llava_prumerge must not be importable here")
except ImportError:
    pass
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
torch.testing.assert_close(visible_log_probs(model, inputs), torch.tensor(spec["log_probs"]), rtol=0, atol=1e-4)

mapped = auto.from_pretrained(folder, trust_remote_code=True, device_map="auto")
mapped_sequences = mapped.generate(**inputs.to(mapped.device), max_new_tokens=n, do_sample=False)
assert mapped_sequences[0, -n:].tolist() == spec["new_tokens"]
torch.testing.assert_close(visible_log_probs(mapped, inputs), torch.tensor(spec["log_probs"]), rtol=0, atol=1e-4)

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
)


def test_exported_folder_loads_without_the_package_under_each_major(tmp_path, hub_folder, model, processor):
    image_path = tmp_path / "wide.png"
    make_image(5, width=70, height=40).save(image_path)  # not square: the mean-color padding matters
    image = Image.open(image_path)
    inputs = processor(images=image, text=PROMPT, return_tensors="pt")
    with torch.no_grad():
        sequences = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
        plus = model.config.reduction_settings.replace(token_reduction="prumerge_plus")
        counts = {"prumerge": model(**inputs).visual_token_counts[0], "prumerge_plus": model(**inputs, reduction=plus).visual_token_counts[0]}  # fmt: skip
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
        "log_probs": visible_log_probs(model, inputs).tolist(),
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    for output in run_offline(REMOTE_LOAD_SCRIPT, ["spec.json"], tmp_path).values():
        assert "remote code OK" in output


def test_export_from_hf_with_no_reduction_equals_the_stock_model(tmp_path, tiny_inputs, images):
    out = tmp_path / "hub"
    run_cli("export", "--from-hf", tiny_inputs.llava_hf, "--token-reduction", "none", "--out", out)
    wrapped = LlavaPruMergeForConditionalGeneration.from_pretrained(out).eval()
    stock = LlavaForConditionalGeneration.from_pretrained(tiny_inputs.llava_hf).eval()
    processor = AutoProcessor.from_pretrained(out)
    assert processor.image_processor.do_pad and wrapped.config.token_reduction == "none"
    inputs = processor(
        images=images[:2], text=[PROMPT, PROMPT + " Be brief."], return_tensors="pt", padding=True
    )
    with torch.no_grad():
        torch.testing.assert_close(wrapped(**inputs).logits, stock(**inputs).logits)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("config.json", r"config\.json is not valid JSON \(cut short\?\)"),
        ("tokenizer.json", r"tokenizer\.json is not valid JSON \(cut short\?\)"),
        ("model.safetensors", r"model\.safetensors is unreadable: .*truncated"),
    ],
)
def test_export_from_hf_names_the_file_a_half_written_download_damaged(
    tmp_path, tiny_inputs, damage, message
):
    source = tmp_path / "download"
    shutil.copytree(tiny_inputs.llava_hf, source)
    damaged = source / damage
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    with pytest.raises(UsageError, match=message + ".*download the checkpoint again"):
        main(["--traceback", "export", "--from-hf", str(source), "--out", str(tmp_path / "hub")])
    assert not (tmp_path / "hub").exists()


def test_export_tiny_command_shards_by_size_and_records_the_settings(tmp_path, capsys):
    argv = [
        "--tiny",
        "--token-reduction",
        "prumerge_plus",
        "--importance",
        "mean_query",
        "--dtype",
        "bfloat16",
        "--max-shard-size",
        "200KB",
    ]
    out = tmp_path / "tiny"
    run_cli("export", *argv, "--out", out, "--model-id", "org/tiny")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and shards == sorted(path.name for path in out.glob("*.safetensors"))
    loaded = LlavaPruMergeForConditionalGeneration.from_pretrained(out, dtype="auto")
    assert loaded.config.token_reduction == "prumerge_plus" and loaded.dtype == torch.bfloat16
    assert loaded.config.importance == "mean_query"
    card = (out / "README.md").read_text()
    assert 'model_id = "org/tiny"' in card and "| `token_reduction` | `'prumerge_plus'` |" in card
    assert "\n# tiny\n" in card  # the title is the model's name
    with pytest.raises(SystemExit) as exit_info:
        run_cli("export", *argv, "--out", out)
    assert exit_info.value.code == 2 and "--overwrite" in capsys.readouterr().err


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
