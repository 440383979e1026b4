"""The mini model: the shipped weights, their accuracy on a fixed test subset, the Hub folder, retraining."""

import json

import pytest
import torch

from llava_prumerge.cli import main
from llava_prumerge.common.loading import load_prumerge_model
from llava_prumerge.errors import UsageError
from llava_prumerge.evaluation.evaluate import evaluate_shapes_vqa
from llava_prumerge.mini.model import (
    TOKENIZER_FILE,
    TRAINING_RECORD,
    WEIGHTS_DIR,
    WEIGHTS_FILE,
    load_mini,
)
from llava_prumerge.mini.train import MiniRecipe

# The shipped model on the first questions of the test split, every visual token ("none"). Answering
# each question type's most common test answer scores 38.5%; the shipped model scores 94.8% on the whole
# test split (training.json) and 95.0% on this subset. The floor sits under that by the subset's
# sampling noise (two standard errors, about 3.5 points at 160 questions) and a margin for float
# rounding on other CPUs, and far above the 38.5% that ignoring the image gets. It checks the shipped
# weights, not a retraining. The target, at least 90% on the whole test split, is checked on the
# recorded accuracy.
FIXED_SUBSET = 160
MIN_ACCURACY = 0.88
TARGET_ACCURACY = 0.90


@pytest.fixture(scope="module")
def mini():
    return load_mini()


def test_the_weights_ship_as_small_safetensors_with_their_record():
    weights = WEIGHTS_DIR / WEIGHTS_FILE
    assert weights.stat().st_size < 2_000_000
    assert weights.read_bytes()[8:9] == b"{"  # a safetensors header, no pickle
    assert (WEIGHTS_DIR / TOKENIZER_FILE).is_file()
    record = json.loads((WEIGHTS_DIR / TRAINING_RECORD).read_text())
    assert record["recipe"]["seed"] == 0 and record["seconds"]["total"] < 30 * 60
    assert record["test_accuracy"]["questions"] is None  # the whole test split
    assert record["test_accuracy"]["none"] >= TARGET_ACCURACY


def test_train_mini_defaults_are_the_shipped_weights_recipe(tmp_path, monkeypatch):
    """`llava-prumerge train-mini --out DIR` retrains what ships: its defaults are the recorded recipe."""
    import llava_prumerge.mini.train as train

    record = json.loads((WEIGHTS_DIR / TRAINING_RECORD).read_text())
    # The shipped record predates MiniRecipe.tower; its weights have the CLIP tower (load_mini reads it from
    # them: test_the_mini_model_is_llava_shaped). Stated, not left to the field's default, so that another
    # default would fail here.
    assert record["recipe"].get("tower", "clip") == "clip"
    assert MiniRecipe(**{"tower": "clip", **record["recipe"]}) == MiniRecipe()
    recipes = []
    monkeypatch.setattr(train, "train_mini", lambda out, recipe: recipes.append(recipe))
    main(["train-mini", "--out", str(tmp_path / "weights")])
    assert recipes == [MiniRecipe()]


def test_the_mini_model_is_llava_shaped(mini):
    model, processor = mini
    assert type(model).__name__ == "LlavaPruMergeForConditionalGeneration"
    assert model.config.vision_config.model_type == "clip_vision_model"
    assert model.config.image_seq_length == 144 and model.config.token_reduction == "prumerge"
    assert processor.tokenizer.chat_template and processor.image_processor.crop_size["height"] == 72


def test_accuracy_on_a_fixed_test_subset(mini):
    model, processor = mini
    with torch.inference_mode():
        [result], pairs = evaluate_shapes_vqa(model, processor, ["none"], [], limit=FIXED_SUBSET)
    assert len(pairs) == FIXED_SUBSET
    assert result.scores.accuracy >= MIN_ACCURACY, result.scores.to_dict()


def test_pruMerge_keeps_few_tokens_on_learned_attention(mini):
    """The trained [CLS] attention is sparse: PruMerge keeps a few of the 144 patches, more for busier images."""
    model, processor = mini
    from llava_prumerge.evaluation.shapes_vqa import examples

    scenes = examples("test", 12, image_size=72)
    pixels = processor.image_processor(images=[e.image for e in scenes], return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        reduced = model.model.reduce_image_tokens(pixels)
    counts = reduced.num_tokens
    assert all(2 <= count <= 40 for count in counts), counts


def test_export_mini_writes_a_hub_folder_with_the_same_model(tmp_path, mini, capsys):
    main(["export", "--mini", "--out", str(tmp_path / "mini")])
    card = (tmp_path / "mini" / "README.md").read_text()
    assert "not LLaVA-1.5" in card and "synthetic" in card
    loaded = load_prumerge_model(str(tmp_path / "mini"), dtype=torch.float32)
    model, _ = mini
    for (name, ours), theirs in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(ours, theirs), name


def test_training_redraws_the_language_side_only_at_the_recipe_std():
    """The projector and language model start at MiniRecipe.language_init_std; the tower, trained first
    by its own stage, keeps its initialization."""
    from llava_prumerge.mini.model import build_tokenizer, new_mini_model
    from llava_prumerge.mini.train import initialize_language_side
    from llava_prumerge.testing.tiny import llava_fast_tokenizer

    tokenizer = llava_fast_tokenizer(build_tokenizer())
    model = new_mini_model(tokenizer, seed=0)
    tower = {name: tensor.clone() for name, tensor in model.model.vision_tower.state_dict().items()}
    std = MiniRecipe().language_init_std
    initialize_language_side(model, std)
    for name, tensor in model.model.vision_tower.state_dict().items():
        assert torch.equal(tensor, tower[name]), name
    language = model.model.language_model
    for weight in (
        language.layers[0].self_attn.q_proj.weight,
        language.layers[-1].mlp.down_proj.weight,
        model.model.multi_modal_projector.linear_1.weight,
        model.get_output_embeddings().weight,
    ):
        assert abs(weight.std().item() - std) < 0.1 * std
    assert not model.model.multi_modal_projector.linear_1.bias.any()
    assert not language.embed_tokens.weight[tokenizer.pad_token_id].any()


@pytest.fixture(scope="module")
def quick_two_processes(tmp_path_factory):
    """A few steps of both stages in two data-parallel processes (CI does not retrain the shipped model)."""
    out = tmp_path_factory.mktemp("quick") / "two-processes"
    main(["train-mini", "--quick", "--out", str(out), "--processes", "2"])
    return out


def test_train_mini_runs_end_to_end_quickly(quick_two_processes):
    """The script runs in two processes, records its recipe, and the folder it writes loads."""
    record = json.loads((quick_two_processes / TRAINING_RECORD).read_text())
    assert record["recipe"]["vision_steps"] == 3 and record["recipe"]["llm_steps"] == 3
    assert record["recipe"]["processes"] == 2
    model, processor = load_mini(quick_two_processes)
    inputs = processor(
        images=[torch.zeros(3, 72, 72)],
        text=["USER: <image>\nHow many shapes are there? ASSISTANT:"],
        return_tensors="pt",
    )
    assert model(**inputs).logits.shape[0] == 1


def test_two_processes_take_the_steps_one_process_takes(tmp_path, quick_two_processes):
    """Data parallelism averages the halves' gradients: the vision stage, whose loss is a mean over
    images, ends where one process taking the whole batch ends (up to float rounding)."""
    main(["train-mini", "--quick", "--out", str(tmp_path / "one-process"), "--processes", "1"])
    one, two = (
        load_mini(folder)[0].model.vision_tower for folder in (tmp_path / "one-process", quick_two_processes)
    )
    for (name, ours), theirs in zip(one.state_dict().items(), two.state_dict().values(), strict=True):
        # atol: float16 as stored, and the key biases (their gradient is rounding noise: softmax ignores a
        # shift shared by all of a query's scores, so Adam moves them ~1e-5 either way); a step taken
        # on half the batch alone moves weights by ~the learning rate, 3e-3
        torch.testing.assert_close(ours, theirs, rtol=2e-3, atol=1e-4, msg=name)


def test_train_mini_refuses_processes_that_cannot_share_a_batch(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train-mini", "--quick", "--out", str(tmp_path / "weights"), "--processes", "3"])
    assert exit_info.value.code == 2
    assert "--processes" in capsys.readouterr().err


@pytest.mark.parametrize("steps", [{"llm_steps": 0}, {"binding_steps": -1}])
def test_a_recipe_without_a_last_phase_or_with_negative_steps_is_refused(steps):
    with pytest.raises(UsageError, match="llm_steps=.*binding_steps="):
        MiniRecipe(**steps)


@pytest.mark.parametrize(
    ("field", "match"), [({"grounding_weight": -1.0}, "grounding_weight"), ({"grounding_layer": 4}, "0 to 3")]
)
def test_a_recipe_with_a_negative_grounding_weight_or_a_missing_layer_is_refused(field, match):
    with pytest.raises(UsageError, match=match):
        MiniRecipe(**field)


def test_grounding_loss_is_minus_log_of_the_heads_attention_on_the_named_patches():
    from llava_prumerge.mini.train import GROUNDING_HEAD, grounding_loss

    attention = torch.zeros(2, 2, 8, 8)  # [batch, heads, sequence, sequence]; visual tokens at 2-5
    attention[0, GROUNDING_HEAD, 6, [2, 3, 6]] = torch.tensor([0.5, 0.25, 0.25])
    attention[1, GROUNDING_HEAD, 7, [1, 4]] = torch.tensor([0.9, 0.1])
    attention[:, 1 - GROUNDING_HEAD, :, 2:6] = 0.25  # another head's attention counts for nothing
    named_patches = torch.tensor([[True, True, False, False], [False, False, True, True]])
    loss = grounding_loss(
        attention, torch.tensor([0, 1]), torch.tensor([6, 7]), torch.tensor([2, 2]), named_patches
    )
    expected = -(torch.log(torch.tensor(0.75 + 1e-6)) + torch.log(torch.tensor(0.1 + 1e-6))) / 2
    torch.testing.assert_close(loss, expected)


def _mini_conversation_batch():
    """The untrained mini model, its tokenizer, and an 8-image pool's pixels, patch labels and language
    phase (every question type)."""
    from llava_prumerge.evaluation.shapes_vqa import examples
    from llava_prumerge.mini.model import PATCH_SIZE, build_tokenizer, mini_processor, new_mini_model
    from llava_prumerge.mini.train import language_phases, pixel_tensor, vision_targets
    from llava_prumerge.testing.tiny import llava_fast_tokenizer

    tokenizer = llava_fast_tokenizer(build_tokenizer())
    model = new_mini_model(tokenizer, seed=0)
    pool = examples("train", 8, image_size=72)
    pixels = pixel_tensor([example.image for example in pool], mini_processor(tokenizer))
    [phase] = language_phases(pool, tokenizer, MiniRecipe(binding_steps=0))
    return model, tokenizer, pixels, vision_targets(pool, PATCH_SIZE).patches, phase


def test_recorded_attention_is_the_layers_attention_and_leaves_sdpa_after():
    """The recorder switches the language model to eager attention (the same model: same logits) and
    back; what it keeps is a causal softmax over the sequence with every visual token in it."""
    from llava_prumerge.mini.train import recorded_attention
    from llava_prumerge.modeling.reduction_settings import ReductionSettings
    from llava_prumerge.training.data import ConversationCollator

    model, tokenizer, pixels, _, phase = _mini_conversation_batch()
    items = [
        {"input_ids": torch.from_numpy(ids), "labels": torch.from_numpy(labels)}
        for ids, labels in phase.encoded[:2]
    ]
    inputs = dict(
        ConversationCollator(pad_token_id=tokenizer.pad_token_id)(items),
        pixel_values=pixels[phase.images[:2]],
    )
    everything = ReductionSettings(token_reduction="none")
    attention_implementation = model.model.language_model.config._attn_implementation
    with torch.no_grad():
        expected = model(**inputs, reduction=everything).logits
        with recorded_attention(model, layer=1) as recorded:
            logits = model(**inputs, reduction=everything).logits
    assert model.model.language_model.config._attn_implementation == attention_implementation
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    weights = recorded["weights"]
    sequence = inputs["input_ids"].shape[1] + 143
    assert weights.shape == (2, model.config.text_config.num_attention_heads, sequence, sequence)
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
    assert not weights.triu(diagonal=1).any()


def test_grounding_teaches_the_head_to_look_at_the_named_object():
    """A few dozen steps of the language phase lower the grounding loss (the head's attention moves to the
    named objects' patches) and log it beside the answer loss."""
    from llava_prumerge.mini.train import initialize_language_side, train_language_model

    model, tokenizer, pixels, patch_labels, phase = _mini_conversation_batch()
    initialize_language_side(model, MiniRecipe().language_init_std)
    phase.steps = 40
    recipe = MiniRecipe(llm_batch_size=4, log_every=10, processes=1)
    lines = []
    losses = train_language_model(
        model, pixels, patch_labels, phase, recipe, tokenizer.pad_token_id, lines.append
    )
    grounding = [value for _, value in losses]
    assert sum(grounding[-10:]) < 0.7 * sum(grounding[:10]), grounding
    assert "grounding loss" in lines[-1] and model.model.language_model.config._attn_implementation != "eager"
