"""Hub folders exported by llava-prumerge 0.1 (three remote-code files, before the shared parts existed)
keep loading: with their own remote code under both transformers majors, and with this package's classes."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from llava_prumerge import LlavaPruMergeForConditionalGeneration
from llava_prumerge.hub_upload.remote_code import REMOTE_CODE_SOURCES
from llava_prumerge.testing.model_tester import PROMPT
from llava_prumerge.testing.subprocesses import run_offline

LEGACY_REMOTE_CODE = Path(__file__).parent / "legacy_0_1_remote_code"
NEW_TOKENS = 5

LOAD_WITH_ITS_OWN_CODE = r"""
import json, sys
sys.modules["llava_prumerge"] = None  # a user's machine: this package is not installed
import torch, transformers

spec = json.loads(open(sys.argv[1]).read())
auto = getattr(transformers, "AutoModelForVision2Seq", transformers.AutoModelForImageTextToText)
model = auto.from_pretrained(spec["folder"], trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
inputs = {"input_ids": torch.tensor(spec["input_ids"]), "pixel_values": torch.tensor(spec["pixel_values"])}
out = model(**inputs)
assert out.visual_token_counts == spec["counts"], out.visual_token_counts
sequences = model.generate(**inputs, max_new_tokens=len(spec["new_tokens"]), do_sample=False)
assert sequences[0, -len(spec["new_tokens"]):].tolist() == spec["new_tokens"], sequences.tolist()
print("legacy folder OK under transformers", transformers.__version__)
"""


@pytest.fixture(scope="module")
def legacy_folder(hub_folder, tmp_path_factory) -> Path:
    """Today's export with its remote code replaced by what 0.1 wrote (config, weights and processor
    files have the same layout in both)."""
    folder = shutil.copytree(hub_folder, tmp_path_factory.mktemp("legacy") / "tiny-prumerge-0.1")
    for name in REMOTE_CODE_SOURCES:
        (folder / name).unlink(missing_ok=True)
    for source in LEGACY_REMOTE_CODE.glob("*.py"):
        shutil.copy(source, folder / source.name)
    return folder


def test_the_legacy_folder_is_what_0_1_wrote(legacy_folder):
    code = sorted(path.name for path in legacy_folder.glob("*.py"))
    assert code == ["configuration_llava_prumerge.py", "modeling_llava_prumerge.py", "token_reduction.py"]
    auto_map = json.loads((legacy_folder / "config.json").read_text())["auto_map"]
    assert (
        auto_map["AutoModelForImageTextToText"]
        == "modeling_llava_prumerge.LlavaPruMergeForConditionalGeneration"
    )


def test_legacy_folders_load_with_this_packages_classes(legacy_folder, model, processor, images):
    loaded = LlavaPruMergeForConditionalGeneration.from_pretrained(legacy_folder).eval()
    inputs = processor(images=images[:1], text=[PROMPT], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits)


def test_legacy_folders_load_with_their_own_remote_code_under_each_major(
    legacy_folder, model, processor, images, tmp_path
):
    inputs = processor(images=images[2:3], text=[PROMPT], return_tensors="pt")
    with torch.no_grad():
        counts = model(**inputs).visual_token_counts
        sequences = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    spec = {
        "folder": str(legacy_folder),
        "input_ids": inputs["input_ids"].tolist(),
        "pixel_values": inputs["pixel_values"].tolist(),
        "counts": counts,
        "new_tokens": sequences[0, -NEW_TOKENS:].tolist(),
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    for output in run_offline(LOAD_WITH_ITS_OWN_CODE, ["spec.json"], tmp_path).values():
        assert "legacy folder OK" in output
