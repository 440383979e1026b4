"""`llava-prumerge train`: the LoRA recipe on the real Trainer and PEFT, with a tiny model and toy data."""

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoProcessor, LlavaConfig

from llava_prumerge import LlavaPruMergeConfig, LlavaPruMergeForConditionalGeneration, cli
from llava_prumerge.common.loading import prumerge_config
from llava_prumerge.errors import PruMergeError
from llava_prumerge.modeling.compaction import IGNORE_INDEX
from llava_prumerge.testing.files import truncate_file
from llava_prumerge.testing.tiny import tiny_model, tiny_processor
from llava_prumerge.training import cli as train_command
from llava_prumerge.training import train as trainer_setup
from llava_prumerge.training.data import (
    ConversationCollator,
    ConversationDataset,
    LengthBudget,
    prepare_conversations,
)

COLORS = {"red": (220, 30, 30), "blue": (30, 30, 220)}
QUESTION = "<image>\nWhat color is this?"
FAST_RUN = [
    "--per-device-batch-size", "4", "--lora-r", "8", "--lora-alpha", "16", "--num-workers", "0",
    "--learning-rate", "1e-2", "--projector-lr", "1e-2", "--lr-scheduler", "constant", "--warmup-ratio", "0",
    "--logging-steps", "1", "--fp32",
]  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The tiny model's matrices are too small to share out: more threads only wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_images(folder, count):
    """Solid red and blue images, some wider than tall (padded to square by the pipeline)."""
    folder.mkdir(parents=True, exist_ok=True)
    answers = []
    for index in range(count):
        answer = list(COLORS)[index % 2]
        Image.new("RGB", (56 + 12 * (index % 3), 56), COLORS[answer]).save(folder / f"{index}.png")
        answers.append(answer)
    return answers


def color_sample(index, answer):
    return {
        "id": f"toy-{index}",
        "image": f"{index}.png",
        "conversations": [{"from": "human", "value": QUESTION}, {"from": "gpt", "value": answer}],
    }


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    """The tiny random model and its processor, saved as a checkpoint folder (stands in for a Hub id)."""
    folder = tmp_path_factory.mktemp("base")
    tiny_model().save_pretrained(folder)
    tiny_processor().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    answers = write_images(root / "images", 32)
    (root / "data.json").write_text(json.dumps([color_sample(i, a) for i, a in enumerate(answers)]))
    return root


def train_args(*argv, **overrides):
    """`llava-prumerge train` arguments as the command line parses them."""
    parser = argparse.ArgumentParser()
    train_command.add_train_arguments(parser)
    return argparse.Namespace(**{**vars(parser.parse_args([str(arg) for arg in argv])), **overrides})


def run_train(*argv):
    return train_command.run_train(train_args(*argv))


def log_by_step(output_dir):
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return {entry["step"]: entry for entry in history if "loss" in entry}


@pytest.fixture(scope="module")
def trained(base_model, toy_data, tmp_path_factory):
    """16 steps through the real command line, saving every 4 steps, exported at the end."""
    output_dir = tmp_path_factory.mktemp("run") / "out"
    cli.main(
        ["train", "--model", str(base_model), "--data", str(toy_data / "data.json"),
         "--image-folder", str(toy_data / "images"), "--output-dir", str(output_dir),
         "--max-steps", "16", "--save-steps", "4", *FAST_RUN]
    )  # fmt: skip
    return output_dir


def test_loss_decreases_on_toy_data(trained):
    losses = [entry["loss"] for _, entry in sorted(log_by_step(trained).items())]
    assert len(losses) == 16
    assert sum(losses[-4:]) / 4 < 0.85 * losses[0], losses  # the frozen random lm_head limits the floor


def test_checkpoints_and_outputs(trained):
    assert sorted(path.name for path in trained.glob("checkpoint-*")) == [
        "checkpoint-12", "checkpoint-16", "checkpoint-4", "checkpoint-8"
    ]  # fmt: skip
    checkpoint = trained / "checkpoint-4"
    for name in (
        "adapter_model.safetensors",
        "optimizer.pt",
        "processor_config.json",
        "prumerge_training.json",
    ):
        assert (checkpoint / name).is_file(), name
    adapter_config = json.loads((checkpoint / "adapter_config.json").read_text())
    assert adapter_config["modules_to_save"] == ["multi_modal_projector"]
    report = json.loads((trained / "data_report.json").read_text())
    assert (report["samples"], report["used"], report["bad"], report["truncated"]) == (32, 32, [], [])


def test_projector_has_its_own_learning_rate_and_the_vision_tower_stays_frozen(base_model, trained, tmp_path):
    args = train_args(output_dir=str(tmp_path / "groups"), lora_r=4, lora_alpha=8, projector_lr=7e-4)
    trainer = trainer_setup.PruMergeTrainer(
        model=trainer_setup.add_lora(tiny_model(), args),
        args=trainer_setup.training_arguments(args, "fp32"),
        projector_lr=args.projector_lr,
    )
    names = {id(param): name for name, param in trainer.model.named_parameters()}
    groups = trainer.create_optimizer().param_groups
    assert [group["lr"] for group in groups] == [2e-4, 7e-4]  # LoRA first: the Trainer logs groups[0]
    assert all("lora_" in names[id(param)] for param in groups[0]["params"])
    assert all("multi_modal_projector" in names[id(param)] for param in groups[1]["params"])
    assert not any("vision_tower" in name for name, p in trainer.model.named_parameters() if p.requires_grad)

    # What the run saved: the LoRA and the trained projector, nothing of the vision tower.
    adapter = load_file(trained / "adapter_model.safetensors")
    assert not [key for key in adapter if "vision_tower" in key]
    base_projector = load_file(base_model / "model.safetensors")["multi_modal_projector.linear_1.weight"]
    (projector_key,) = [key for key in adapter if "multi_modal_projector.linear_1.weight" in key]
    assert not torch.equal(adapter[projector_key], base_projector)


def test_resume_continues_the_step_count_and_the_log(trained, base_model, toy_data, tmp_path, capsys):
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    shutil.copytree(trained / "checkpoint-12", output_dir / "checkpoint-12")
    # Newer checkpoints a crash left incomplete: latest skips them, naming why.
    truncated = shutil.copytree(trained / "checkpoint-12", output_dir / "checkpoint-13")
    truncate_file(truncated / "adapter_model.safetensors")
    unsaved = shutil.copytree(trained / "checkpoint-12", output_dir / "checkpoint-14")
    (unsaved / "trainer_state.json").unlink()
    cut_optimizer = shutil.copytree(trained / "checkpoint-12", output_dir / "checkpoint-15")
    truncate_file(cut_optimizer / "optimizer.pt")
    flipped = shutil.copytree(trained / "checkpoint-12", output_dir / "checkpoint-16")
    scheduler = bytearray((flipped / "scheduler.pt").read_bytes())
    scheduler[len(scheduler) // 3] ^= 0xFF  # torch.load would read it without a word
    (flipped / "scheduler.pt").write_bytes(scheduler)
    summary = run_train(
        "--model", base_model, "--data", toy_data / "data.json", "--image-folder", toy_data / "images",
        "--output-dir", output_dir, "--max-steps", "16", "--save-steps", "4", "--no-export", *FAST_RUN,
        "--resume-from-checkpoint", "latest",
    )  # fmt: skip
    assert summary["global_step"] == 16
    out = capsys.readouterr().out
    assert (
        f"Skipping {output_dir / 'checkpoint-16'}: {flipped / 'scheduler.pt'} is unreadable: its member"
        in out
    )
    assert f"Skipping {output_dir / 'checkpoint-15'}: {cut_optimizer / 'optimizer.pt'} is unreadable" in out
    assert f"Skipping {output_dir / 'checkpoint-14'}: it has no trainer_state.json" in out
    assert (
        f"Skipping {output_dir / 'checkpoint-13'}: {truncated / 'adapter_model.safetensors'} is unreadable"
        in out
    )
    reference, resumed = log_by_step(trained), log_by_step(output_dir)
    assert sorted(resumed) == list(range(1, 17))
    for step in range(1, 17):
        assert resumed[step]["epoch"] == reference[step]["epoch"]
        assert resumed[step]["learning_rate"] == reference[step]["learning_rate"]
    for step in range(13, 17):  # same data order, weights, optimizer and RNG: the same losses
        assert resumed[step]["loss"] == pytest.approx(reference[step]["loss"], rel=1e-4)


def batch_of(toy_data, processor, model_config, count=4):
    budget = LengthBudget(2048, model_config.image_token_id, model_config.image_seq_length)
    conversations, _ = prepare_conversations(
        toy_data / "data.json", toy_data / "images", processor.tokenizer, budget
    )
    dataset = ConversationDataset(
        conversations[:count], processor.tokenizer, processor.image_processor, budget
    )
    batch = ConversationCollator(processor.tokenizer.pad_token_id)([dataset[i] for i in range(count)])
    batch.pop("labels")
    return batch


def adapter_logits(base_model, checkpoint, batch):
    from peft import PeftModel

    model = PeftModel.from_pretrained(
        LlavaPruMergeForConditionalGeneration.from_pretrained(base_model), checkpoint
    )
    with torch.no_grad():
        return model.eval()(**batch).logits


def test_exported_merged_model_matches_the_adapter(trained, base_model, toy_data, tmp_path):
    processor = AutoProcessor.from_pretrained(trained / "merged")
    merged = LlavaPruMergeForConditionalGeneration.from_pretrained(trained / "merged").eval()
    batch = batch_of(toy_data, processor, merged.config)
    with torch.no_grad():
        merged_logits = merged(**batch).logits
        base_logits = LlavaPruMergeForConditionalGeneration.from_pretrained(base_model).eval()(**batch).logits
    torch.testing.assert_close(
        merged_logits, adapter_logits(base_model, trained, batch), rtol=1e-4, atol=1e-4
    )
    assert not torch.allclose(merged_logits, base_logits, atol=1e-3), "training changed nothing"

    # Any checkpoint exports alone: its folder names the base model and reducer.
    summary = run_train("--export-from", trained / "checkpoint-8", "--export", tmp_path / "export8")
    exported = LlavaPruMergeForConditionalGeneration.from_pretrained(summary["export"]).eval()
    assert exported.config.token_reduction == "prumerge"
    with torch.no_grad():
        torch.testing.assert_close(
            exported(**batch).logits,
            adapter_logits(base_model, trained / "checkpoint-8", batch),
            rtol=1e-4,
            atol=1e-4,
        )


# ---------------------------------------------------------------- data: masks, images, bad samples


def test_labels_keep_only_the_assistant_answers(processor, tmp_path):
    images = tmp_path / "images"
    write_images(images, 1)
    Image.new("RGB", (90, 40), COLORS["red"]).save(images / "wide.png")
    samples = [
        {"id": "two-turns", "image": "wide.png", "conversations": [
            {"from": "human", "value": "What color is this?\n<image>"}, {"from": "gpt", "value": "red"},
            {"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "Yes, red."}]},
        {"id": "text-only", "conversations": [
            {"from": "human", "value": "Say blue."}, {"from": "gpt", "value": "blue"}]},
    ]  # fmt: skip
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(sample) for sample in samples) + "\n")
    config = tiny_model().config
    budget = LengthBudget(2048, config.image_token_id, config.image_seq_length)
    conversations, report = prepare_conversations(
        tmp_path / "data.jsonl", images, processor.tokenizer, budget
    )
    assert (report.used, report.bad) == (2, [])
    assert conversations[0].text.endswith(
        "USER: <image>\nWhat color is this? ASSISTANT: red</s>USER: Sure? ASSISTANT: Yes, red.</s>"
    )
    dataset = ConversationDataset(conversations, processor.tokenizer, processor.image_processor, budget)
    batch = ConversationCollator(processor.tokenizer.pad_token_id)([dataset[0], dataset[1]])
    assert batch["pixel_values"].shape == (1, 3, 56, 56)
    assert (batch["input_ids"] == config.image_token_id).sum().item() == 1  # one placeholder per image
    expected = [["red</s>", "Yes, red.</s>"], ["blue</s>"]]
    for row, answers in enumerate(expected):
        labels, input_ids = batch["labels"][row], batch["input_ids"][row]
        assert torch.equal(labels[labels != IGNORE_INDEX], input_ids[labels != IGNORE_INDEX])
        runs = [
            list(run)
            for in_loss, run in itertools.groupby(labels.tolist(), key=lambda token: token != IGNORE_INDEX)
            if in_loss
        ]
        assert [processor.tokenizer.decode(run).strip() for run in runs] == answers
    # Padded to a square with the mean color, as LLaVA-1.5: the top rows normalize to about 0.
    assert batch["pixel_values"][0, :, :4].abs().max() < 0.02
    assert batch["pixel_values"][0, 0, 28, 28] > 1.0  # the red image in the middle


def test_bad_samples_fail_by_default_and_are_skipped_on_request(base_model, tmp_path):
    images = tmp_path / "images"
    answers = write_images(images, 8)
    samples = [color_sample(i, a) for i, a in enumerate(answers)]
    samples[1]["image"] = "missing.png"
    samples[2]["conversations"][0]["value"] = "What color is this?"  # an image but no <image>
    del samples[3]["image"]  # <image> but no image
    samples[4]["conversations"] = samples[4]["conversations"][::-1]  # gpt first
    samples[5]["conversations"][1]["value"] = "red " * 300  # answer past --max-length: truncated
    samples[6]["image"] = ["6.png", "0.png"]  # its second image lies past the limit
    samples[6]["conversations"][0]["value"] += " a b c" * 300
    samples[6]["conversations"] += [
        {"from": "human", "value": "<image>\nAnd this?"},
        {"from": "gpt", "value": "red"},
    ]
    lines = [json.dumps(sample) for sample in samples]
    lines.insert(7, '{"id": "broken", "image": ')
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    common = [
        "--model", base_model, "--data", tmp_path / "data.jsonl", "--image-folder", images,
        "--output-dir", tmp_path / "out", "--max-steps", "1", "--no-export", "--max-length", "400", *FAST_RUN,
    ]  # fmt: skip

    with pytest.raises(
        PruMergeError, match=r"(?s)6 bad sample\(s\).*--skip-bad-samples to train on the 3 others"
    ) as error:
        run_train(*common)
    assert "sample 'toy-1' (#1): image not found" in str(error.value)
    report = json.loads((tmp_path / "out" / "data_report.json").read_text())
    problems = {entry["id"]: entry["problem"] for entry in report["bad"]}
    assert sorted(problems) == ["#7", "toy-1", "toy-2", "toy-3", "toy-4", "toy-6"]
    assert "line 8 is not valid JSON" in problems["#7"]
    assert "has 0 <image> placeholder(s) in its human turns but 1 image(s)" in problems["toy-2"]
    assert "1 <image> placeholder(s) in its human turns but 0 image(s)" in problems["toy-3"]
    assert "turn 0 must be {'from': 'human'" in problems["toy-4"]
    assert "past --max-length 400" in problems["toy-6"]
    assert [entry["id"] for entry in report["truncated"]] == ["toy-5"]
    assert (report["samples"], report["used"]) == (9, 3)

    summary = run_train(*common, "--skip-bad-samples")
    assert summary["global_step"] == 1


def test_truncation_keeps_the_image_and_the_budget(processor, tmp_path):
    images = tmp_path / "images"
    write_images(images, 1)
    sample = color_sample(0, "red " * 300)
    (tmp_path / "data.json").write_text(json.dumps([sample]))
    config = tiny_model().config
    budget = LengthBudget(300, config.image_token_id, config.image_seq_length)
    conversations, report = prepare_conversations(tmp_path / "data.json", images, processor.tokenizer, budget)
    assert [entry["id"] for entry in report.truncated] == ["toy-0"]
    item = ConversationDataset(conversations, processor.tokenizer, processor.image_processor, budget)[0]
    assert len(item["input_ids"]) + config.image_seq_length - 1 == 300 == conversations[0].length
    assert (item["input_ids"] == config.image_token_id).sum() == 1
    assert (item["labels"] != IGNORE_INDEX).any()


def test_clear_errors_for_unusable_input(base_model, trained, tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "data.json").write_text('[{"id": "a", "conversations": []},\n {"id": "b" "x"}]')
    common = ["--model", base_model, "--image-folder", tmp_path / "images", "--output-dir", tmp_path / "out"]
    with pytest.raises(PruMergeError, match=r"not valid JSON \(line 2, column 13: Expecting"):
        run_train(*common, "--data", tmp_path / "data.json")
    with pytest.raises(PruMergeError, match="--data required to train"):
        run_train(*common)
    with pytest.raises(
        PruMergeError, match="--resume-from-checkpoint latest: no complete checkpoint-N folder"
    ):
        run_train(*common, "--data", tmp_path / "data.json", "--resume-from-checkpoint", "latest")
    cut = shutil.copytree(trained / "checkpoint-4", tmp_path / "cut")
    truncate_file(cut / "adapter_model.safetensors")
    with pytest.raises(
        PruMergeError,
        match=r"--resume-from-checkpoint .*cut: .*adapter_model.safetensors is unreadable: .*truncated",
    ):
        run_train(*common, "--data", tmp_path / "data.json", "--resume-from-checkpoint", cut)
    with pytest.raises(PruMergeError, match="not a checkpoint of `llava-prumerge train`"):
        run_train("--export-from", base_model, "--export", tmp_path / "export")
    with pytest.raises(
        PruMergeError, match="already holds checkpoints of a run; pass --resume-from-checkpoint"
    ):
        run_train(*common[:-1], trained, "--data", tmp_path / "data.json")
    with pytest.raises(PruMergeError, match="--export-from needs --export OUT"):
        run_train("--export-from", base_model)
    with pytest.raises(PruMergeError, match="export folder .* already exists"):  # refused before training
        run_train(*common, "--data", tmp_path / "data.json", "--export", tmp_path / "images")
    if not torch.cuda.is_available():
        with pytest.raises(PruMergeError, match="--fp16 needs a CUDA GPU"):
            run_train(*common, "--data", tmp_path / "data.json", "--fp16")


def test_stock_llava_checkpoints_are_converted(tmp_path):
    stock = LlavaConfig(**{k: v for k, v in tiny_model().config.to_dict().items() if k != "model_type"})
    stock.save_pretrained(tmp_path)
    assert prumerge_config(str(tmp_path)).token_reduction == "prumerge"
    chosen = prumerge_config(str(tmp_path), token_reduction="prumerge_plus")
    assert (type(chosen), chosen.token_reduction) == (LlavaPruMergeConfig, "prumerge_plus")


def test_an_image_that_fails_to_decode_names_its_sample(processor, tmp_path):
    images = tmp_path / "images"
    write_images(images, 1)
    (tmp_path / "data.json").write_text(json.dumps([color_sample(0, "red")]))
    config = tiny_model().config
    budget = LengthBudget(2048, config.image_token_id, config.image_seq_length)
    conversations, report = prepare_conversations(tmp_path / "data.json", images, processor.tokenizer, budget)
    data = (images / "0.png").read_bytes()
    (images / "0.png").write_bytes(data[: len(data) // 2])  # damaged after the check: the header reads
    dataset = ConversationDataset(conversations, processor.tokenizer, processor.image_processor, budget)
    with pytest.raises(ValueError, match=r"sample 'toy-0' \(#0\): cannot decode image .*0\.png"):
        dataset[0]


def cli_error(argv, capsys) -> str:
    """The one stderr line of `llava-prumerge ARGV` ending with exit status 2."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main([str(arg) for arg in argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_a_damaged_checkpoint_is_named_before_exporting(trained, tmp_path, capsys):
    """Each once ended in a parser's traceback (JSONDecodeError, TypeError, SafetensorError, ...)."""
    damages = {
        "empty adapter config": ("adapter_config.json", "", "adapter_config.json is not valid JSON"),
        "adapter config a list": (
            "adapter_config.json",
            "[]",
            "adapter_config.json holds a JSON list, not an",
        ),
        "empty record": ("prumerge_training.json", "", "prumerge_training.json is not valid JSON"),
        "record a list": ("prumerge_training.json", "[]", "prumerge_training.json holds a JSON list, not"),
        "record of wrong types": ("prumerge_training.json", '{"model": 5}', "needs 'model' a string"),
        "weights missing": ("adapter_model.safetensors", None, "it has no adapter_model.safetensors"),
        "weights cut short": ("adapter_model.safetensors", "cut", "adapter_model.safetensors is unreadable"),
    }
    for number, (name, content, message) in enumerate(damages.values()):
        checkpoint = shutil.copytree(trained / "checkpoint-4", tmp_path / f"checkpoint-{number}")
        if content is None:
            (checkpoint / name).unlink()
        elif content == "cut":
            truncate_file(checkpoint / name)
        else:
            (checkpoint / name).write_text(content)
        err = cli_error(["train", "--export-from", checkpoint, "--export", tmp_path / "out"], capsys)
        assert err.startswith(f"llava-prumerge train: error: cannot export {checkpoint}: ") and message in err
    assert not (tmp_path / "out").exists()


def test_loggers_and_deepspeed_are_checked_before_loading(
    base_model, toy_data, tmp_path, capsys, monkeypatch
):
    common = [
        "train", "--model", base_model, "--data", toy_data / "data.json", "--image-folder", toy_data / "images",
        "--output-dir", tmp_path / "out", "--no-export",
    ]  # fmt: skip
    monkeypatch.setattr(trainer_setup, "load_processor", lambda _: pytest.fail("loaded before checking"))
    assert "--report-to: unknown logger(s) ['bogus']; use none, all" in cli_error(
        [*common, "--report-to", "bogus"], capsys
    )
    assert "'all' and 'none' stand alone" in cli_error([*common, "--report-to", "none,tensorboard"], capsys)
    monkeypatch.setattr(
        "transformers.integrations.integration_utils.get_available_reporting_integrations", lambda: []
    )
    assert "--report-to: wandb not installed" in cli_error([*common, "--report-to", "wandb"], capsys)
    missing = tmp_path / "ds.json"
    assert f"--deepspeed {missing} is not a file" in cli_error([*common, "--deepspeed", missing], capsys)
    missing.write_text("{}")
    monkeypatch.setattr(trainer_setup.importlib.util, "find_spec", lambda name: None)
    assert "DeepSpeed is not installed" in cli_error([*common, "--deepspeed", missing], capsys)


def test_options_that_cannot_take_effect_are_refused(base_model, tmp_path, capsys):
    train = ["train", "--model", base_model, "--data", "d.json", "--image-folder", tmp_path]
    err = cli_error(
        [*train, "--output-dir", tmp_path / "out", "--no-export", "--export", tmp_path / "x"], capsys
    )
    assert f"--no-export and --export {tmp_path / 'x'} contradict each other" in err
    export = ["train", "--export-from", tmp_path / "checkpoint-4", "--export", tmp_path / "x"]
    err = cli_error(
        [*export, "--data", "d.json", "--lora-r", "4", "--fp32", "--no-gradient-checkpointing"], capsys
    )
    assert "--data, --lora-r, --fp32, --no-gradient-checkpointing apply to training: drop them" in err
    afile = tmp_path / "afile.txt"
    afile.write_text("not a folder")
    err = cli_error([*train, "--output-dir", afile], capsys)
    assert f"error: --output-dir {afile} is a file; pass a folder" in err
    err = cli_error([*train, "--output-dir", afile / "sub"], capsys)
    assert f"error: --output-dir {afile / 'sub'}: {afile} is a file" in err
    err = cli_error(["train", *train[3:], "--model", afile, "--output-dir", tmp_path / "out"], capsys)
    assert f"error: --model {afile}: {afile} is a file" in err
    err = cli_error(
        ["train", *train[3:], "--model", tmp_path / "none", "--output-dir", tmp_path / "out"], capsys
    )
    assert f"error: --model {tmp_path / 'none'}: No checkpoint folder at" in err


def test_the_data_check_names_what_training_would_trip_on(processor, tmp_path):
    images = tmp_path / "images"
    write_images(images, 1)
    (images / "cut.png").write_bytes((images / "0.png").read_bytes()[:100])  # the header reads
    (images / "folder").mkdir()
    turns = [{"from": "human", "value": 5}, {"from": "gpt", "value": "red"}]
    samples = [
        {**color_sample(0, "red"), "image": "cut.png"},
        {**color_sample(1, "red"), "image": "0.png", "video": "clip.mp4"},
        {**color_sample(2, "red"), "image": "0.png", "id": {"a": 1}},
        {**color_sample(3, "red"), "image": "0.png", "conversations": turns},
        {**color_sample(4, "red"), "image": "."},
        {**color_sample(5, "red"), "image": ""},
        {**color_sample(6, "red"), "image": "folder"},
    ]
    (tmp_path / "data.json").write_text(json.dumps(samples))
    config = tiny_model().config
    budget = LengthBudget(2048, config.image_token_id, config.image_seq_length)
    _, report = prepare_conversations(tmp_path / "data.json", images, processor.tokenizer, budget)
    problems = [entry["problem"] for entry in report.bad]
    assert problems == [
        f"image {images / 'cut.png'} is not readable as an image (Truncated File Read)",
        "has a 'video' ('clip.mp4'): train takes images only; remove the sample from the data",
        "'id' must be a string or a number, got a JSON object",
        "turn 0's 'value' must be a string, got a JSON number",
        f"image {images} is a folder, not an image file",
        "has an empty file name in 'image'",
        f"image {images / 'folder'} is a folder, not an image file",
    ]
    assert report.bad[2]["id"] == "#2"
    (tmp_path / "object.json").write_text(json.dumps({"data": samples}, indent=1))
    with pytest.raises(PruMergeError, match="object.json holds one JSON object, not a list of samples"):
        prepare_conversations(tmp_path / "object.json", images, processor.tokenizer, budget)


def test_torchrun_runs_data_parallel(base_model, toy_data, tmp_path):
    output_dir = tmp_path / "out"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "llava_prumerge", "train", "--model", str(base_model), "--data", str(toy_data / "data.json"),
        "--image-folder", str(toy_data / "images"), "--output-dir", str(output_dir), "--max-steps", "2",
        "--per-device-batch-size", "2", "--lora-r", "4", "--num-workers", "0", "--no-export",
    ]  # fmt: skip
    cpus_only = {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}  # DDP over gloo, also where one GPU is
    result = subprocess.run(
        command,
        env={**os.environ, **cpus_only},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("effective batch 2 x 1 x 2 process(es) = 4") == 1  # printed by rank 0 only
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and (output_dir / "adapter_model.safetensors").is_file()
