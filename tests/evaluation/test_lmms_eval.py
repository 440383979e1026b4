"""The lmms-eval bridge: the `llava_prumerge` model lmms-eval finds by its entry point, run offline on a
local Shapes-VQA task, and `llava-prumerge eval --lmms-eval-tasks` around it.

Runs where lmms-eval is installed: `scripts/test.sh` builds its own environment for it
(`scripts/setup_lmms_env.sh .venvs/lmms`) and runs this file there; elsewhere it is skipped.
"""

import json
import os
import sys
from types import SimpleNamespace

import pytest

pytest.importorskip("lmms_eval")

from llava_prumerge.cli import main  # noqa: E402
from llava_prumerge.errors import UsageError  # noqa: E402
from llava_prumerge.evaluation.evaluate import evaluate_shapes_vqa  # noqa: E402
from llava_prumerge.evaluation.files import LMMS_TASK_NAME, write_lmms_task  # noqa: E402
from llava_prumerge.evaluation.lmms_eval_model import (  # noqa: E402
    LlavaPruMergeLMMS,
    model_manifests,
    parse_reduction_arguments,
)
from llava_prumerge.mini.model import load_mini  # noqa: E402

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}


@pytest.fixture(scope="module")
def local_task(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapes_task")
    (folder / "images").mkdir()
    write_lmms_task(folder, "test", 6, image_size=72)
    return folder


def test_the_entry_point_resolves_to_our_model():
    from lmms_eval.models.registry_v2 import ModelRegistryV2

    registry = ModelRegistryV2()
    registry.load_entrypoint_manifests()  # lmms-eval 0.7.3 raises when an entry point fails to load
    assert "llava_prumerge" in registry.list_model_names()
    assert registry.get_model_class("llava_prumerge") is LlavaPruMergeLMMS
    assert model_manifests()[0].simple_class_path.endswith("LlavaPruMergeLMMS")


def test_reducer_settings_come_as_model_arguments():
    arguments = {
        "token_reduction": "prumerge_plus",
        "adaptive": "False",
        "num_visual_tokens": "32",
        "other": "x",
    }
    assert parse_reduction_arguments(arguments) == {
        "token_reduction": "prumerge_plus",
        "adaptive": False,
        "num_visual_tokens": 32,
    }
    assert arguments == {"other": "x"}  # the reducer's fields are taken out, the rest left
    with pytest.raises(UsageError, match="adaptive must be True or False"):
        parse_reduction_arguments({"adaptive": "maybe"})
    with pytest.raises(ValueError, match="token_reduction='fast'"):
        parse_reduction_arguments({"token_reduction": "fast"})


def test_loglikelihood_returns_the_loss_of_the_continuation(tmp_path, local_task):
    folder = tmp_path / "tiny"
    main(["export", "--tiny", "--out", str(folder)])
    model = LlavaPruMergeLMMS(pretrained=str(folder), token_reduction="prumerge")
    doc = json.loads((local_task / "test.jsonl").read_text().splitlines()[0])
    from PIL import Image

    image = Image.open(local_task / "images" / doc["image"]).resize((56, 56))
    model.task_dict = {"t": {"test": {0: doc}}}
    request = SimpleNamespace(args=(doc["question"], " red", lambda d: [image], 0, "t", "test"))
    [result] = model.loglikelihood([request])
    nll, greedy = result.text
    assert nll > 0 and isinstance(greedy, bool)
    with pytest.raises(UsageError, match="unknown model argument"):
        LlavaPruMergeLMMS(pretrained=str(folder), colour="red")


def test_eval_runs_lmms_eval_offline_on_a_local_task(tmp_path, local_task, monkeypatch, capsys):
    """`python -m lmms_eval --model llava_prumerge --model_args pretrained=...,token_reduction=...` for
    two methods, on the shipped mini model, then the comparison table."""
    for name, value in OFFLINE.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "scores.json"
    main(
        [
            "eval",
            "--model",
            "mini",
            "--methods",
            "none,prumerge_plus",
            "--lmms-eval-tasks",
            LMMS_TASK_NAME,
            "--lmms-eval-include-path",
            str(local_task),
            "--lmms-eval-python",
            sys.executable,
            "--lmms-eval-output",
            str(tmp_path / "lmms"),
            "--batch-size",
            "8",
            "--json",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert f"| {LMMS_TASK_NAME} | exact_match |" in printed
    scores = json.loads(out.read_text())["scores"]
    assert set(scores) == {"none", "prumerge_plus"}
    none = scores["none"][LMMS_TASK_NAME]
    assert none["metric"] == "exact_match"
    questions = (local_task / "test.jsonl").read_text().splitlines()
    samples = list((tmp_path / "lmms" / "none").rglob(f"*samples_{LMMS_TASK_NAME}.jsonl"))
    assert len(samples) == 1 and len(samples[0].read_text().splitlines()) == len(questions)
    # lmms-eval's score is the one `llava-prumerge eval` gives on the same questions (one answer of slack:
    # batches are padded differently)
    model, processor = load_mini()
    [ours], _ = evaluate_shapes_vqa(model, processor, ["none"], [], limit=len(questions), num_images=6)
    assert abs(none["value"] - 100 * ours.scores.accuracy) <= 100 / len(questions) + 1e-9
    assert os.environ["HF_HUB_OFFLINE"] == "1"
