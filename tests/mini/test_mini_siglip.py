"""The mini model with a SigLIP tower (no [CLS] token): `train-mini --tower siglip` trains it, `load_mini`
reads the tower back from the weights, and PruMerge reduces it with the stand-in importance."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlavaForConditionalGeneration

import llava_prumerge.mini
from llava_prumerge.cli import main
from llava_prumerge.demo.visualize import importance_label
from llava_prumerge.errors import ReductionSettingsError, UsageError
from llava_prumerge.evaluation.evaluate import evaluate_shapes_vqa
from llava_prumerge.evaluation.shapes_vqa import examples, object_map
from llava_prumerge.mini import SHIPPED_MINI_MODELS
from llava_prumerge.mini.model import (
    PATCHES,
    TOWERS,
    TRAINING_RECORD,
    build_tokenizer,
    load_mini,
    load_shipped_mini,
    mini_processor,
    new_mini_model,
)
from llava_prumerge.mini.train import MiniRecipe, VisionObjective, vision_targets
from llava_prumerge.modeling.reduction_settings import STAND_IN_IMPORTANCE
from llava_prumerge.testing.model_tester import stock_twin
from llava_prumerge.testing.tiny import llava_fast_tokenizer


@pytest.fixture(scope="module")
def quick_siglip(tmp_path_factory):
    """A few steps of both stages with the SigLIP tower, one process, through the command line."""
    out = tmp_path_factory.mktemp("quick") / "siglip"
    main(["train-mini", "--quick", "--out", str(out), "--processes", "1", "--tower", "siglip"])
    return out


@pytest.fixture(scope="module")
def test_images():
    from llava_prumerge.evaluation.shapes_vqa import examples

    return [example.image for example in examples("test", 4, image_size=72)]


@pytest.fixture(scope="module")
def test_pixels(test_images):
    processor = mini_processor(llava_fast_tokenizer(build_tokenizer()), "siglip")
    return processor.image_processor(images=test_images, return_tensors="pt")["pixel_values"]


def test_the_quick_siglip_recipe_trains_and_loads_back_as_a_siglip_towered_llava(quick_siglip):
    record = json.loads((quick_siglip / TRAINING_RECORD).read_text())
    assert record["recipe"]["tower"] == "siglip" and record["recipe"]["vision_steps"] == 3
    model, processor = load_mini(quick_siglip)
    assert model.config.vision_config.model_type == "siglip_vision_model"
    assert model.config.vision_feature_select_strategy == "full"
    assert model.config.image_seq_length == PATCHES == model.model.image_placeholder_count() == 144
    inputs = processor(
        images=[torch.zeros(3, 72, 72)],
        text=["USER: <image>\nHow many shapes are there? ASSISTANT:"],
        return_tensors="pt",
        do_rescale=False,
    )
    assert (inputs["input_ids"] == model.config.image_token_id).sum() == PATCHES  # every row a patch
    with torch.no_grad():
        assert model(**inputs).logits.shape[0] == 1


def test_prumerge_reduces_the_trained_siglip_tower_with_the_stand_in(quick_siglip, test_pixels):
    """importance "auto" is the stand-in on a tower without [CLS]; the counts adapt per image, and each
    image's count is what it gets alone."""
    model, _ = load_mini(quick_siglip)
    settings = model.config.reduction_settings
    assert settings.token_reduction == "prumerge" and settings.importance == "auto"
    with torch.no_grad():
        auto = model.model.reduce_image_tokens(test_pixels)
        stand_in = model.model.reduce_image_tokens(
            test_pixels, reduction=settings.replace(importance=STAND_IN_IMPORTANCE)
        )
        alone = [model.model.reduce_image_tokens(test_pixels[i : i + 1]).num_tokens[0] for i in range(4)]
    assert all(1 <= count < PATCHES / 2 for count in auto.num_tokens), auto.num_tokens
    assert auto.num_tokens == stand_in.num_tokens == alone
    for ours, theirs in zip(auto.features, stand_in.features, strict=True):
        assert torch.equal(ours, theirs)
    with pytest.raises(ReductionSettingsError, match="this vision tower has none"), torch.no_grad():
        model.model.reduce_image_tokens(test_pixels, reduction=settings.replace(importance="cls"))


def test_the_trained_siglip_model_without_reduction_equals_stock_llava(quick_siglip, test_images):
    model, processor = load_mini(quick_siglip, token_reduction="none")
    stock = stock_twin(model.config)
    assert isinstance(stock, LlavaForConditionalGeneration)
    stock.load_state_dict(model.state_dict())
    inputs = processor(
        images=test_images[:2],
        text=["USER: <image>\nIs there a red circle? ASSISTANT:", "USER: <image>\nHow many? ASSISTANT:"],
        return_tensors="pt",
        padding=True,
    )
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, stock(**inputs).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tower", TOWERS)
def test_the_vision_objective_reads_the_pooled_output_and_the_patch_rows(tower, monkeypatch, test_pixels):
    """CLIP: the [CLS] row's pooled output and rows 1 on; SigLIP: the attention-pooling head's output and
    every row."""
    from llava_prumerge.evaluation.shapes_vqa import examples

    tower_model = new_mini_model(
        llava_fast_tokenizer(build_tokenizer()), seed=0, tower=tower
    ).model.vision_tower
    objective = VisionObjective(tower_model.config.hidden_size)
    seen = {}
    monkeypatch.setattr(
        objective, "loss", lambda pooled, patches, targets: seen.update(pooled=pooled, patches=patches)
    )
    targets = vision_targets(examples("test", 4, image_size=72), 6)
    with torch.no_grad():
        objective(tower_model, test_pixels, targets)
        output = tower_model(pixel_values=test_pixels, output_hidden_states=True)
    assert seen["patches"].shape[1] == targets.patches.shape[1] == PATCHES
    assert torch.equal(seen["patches"], output.hidden_states[-2][:, -PATCHES:])
    transformer = getattr(tower_model, "vision_model", tower_model)
    if tower == "siglip":
        pooled = transformer.head(transformer.post_layernorm(output.last_hidden_state))
    else:
        pooled = transformer.post_layernorm(output.last_hidden_state[:, 0])
    torch.testing.assert_close(seen["pooled"], pooled)


def test_an_unknown_tower_is_refused(tmp_path, capsys):
    with pytest.raises(UsageError, match="MiniRecipe.tower is 'vit'"):
        MiniRecipe(tower="vit")
    with pytest.raises(UsageError, match="tower is 'vit'"):
        new_mini_model(llava_fast_tokenizer(build_tokenizer()), seed=0, tower="vit")
    with pytest.raises(SystemExit) as exit_info:
        main(["train-mini", "--quick", "--out", str(tmp_path / "weights"), "--tower", "vit"])
    assert exit_info.value.code == 2 and "--tower" in capsys.readouterr().err


def test_the_tower_flag_reaches_the_recipe(tmp_path, monkeypatch):
    import llava_prumerge.mini.train as train

    recipes = []
    monkeypatch.setattr(train, "train_mini", lambda out, recipe: recipes.append(recipe))
    main(["train-mini", "--out", str(tmp_path / "siglip"), "--tower", "siglip"])
    main(["train-mini", "--out", str(tmp_path / "clip"), "--tower", "clip"])
    assert recipes == [MiniRecipe(tower="siglip"), MiniRecipe()]


# ---------------------------------------------------------------- the shipped SigLIP mini model

SHIPPED_SUBSET = 160  # eval's first questions of the test split, as the [CLS] mini model's test
SHIPPED_MIN_ACCURACY = 0.87  # measured 90.6% on the subset, 91.0% on the whole test split (training.json)
SHIPPED_MIN_KEPT_ON_OBJECTS = 0.70  # the target; measured 76.5% on these 100 images (the README)


@pytest.fixture(scope="module")
def shipped():
    return load_shipped_mini("mini-siglip")


def test_the_shipped_siglip_weights_are_the_recorded_recipe_with_the_siglip_tower(shipped):
    model, _ = shipped
    folder = Path(llava_prumerge.mini.__file__).parent / SHIPPED_MINI_MODELS["mini-siglip"]
    record = json.loads((folder / TRAINING_RECORD).read_text())
    assert MiniRecipe(**record["recipe"]) == MiniRecipe(
        tower="siglip"
    )  # `train-mini --tower siglip` retrains it
    assert (
        record["test_accuracy"]["questions"] is None
        and record["test_accuracy"]["none"] >= SHIPPED_MIN_ACCURACY
    )
    assert model.config.vision_config.model_type == "siglip_vision_model"
    assert (
        model.config.vision_feature_select_strategy == "full"
        and model.model.image_placeholder_count() == PATCHES
    )


def test_the_shipped_siglip_model_answers_a_fixed_test_subset(shipped):
    model, processor = shipped
    with torch.inference_mode():
        [result], pairs = evaluate_shapes_vqa(model, processor, ["none"], [], limit=SHIPPED_SUBSET)
    assert len(pairs) == SHIPPED_SUBSET and result.scores.accuracy >= SHIPPED_MIN_ACCURACY, (
        result.scores.to_dict()
    )


def test_the_stand_in_keeps_patches_on_the_objects_of_the_shipped_siglip_model(shipped):
    """The proof random weights cannot give: on a tower trained without [CLS], the default stand-in's kept
    patches touch an object far more often than patches do (17%)."""
    model, processor = shipped
    scenes = examples("test", 100, image_size=72)
    pixels = processor.image_processor(images=[e.image for e in scenes], return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        centers = model.model.reduce_image_tokens(pixels).centers
    covered = [object_map(e.scene).reshape(12, 6, 12, 6).max(axis=(1, 3)).reshape(-1) > 0 for e in scenes]
    kept_on_objects = np.mean(
        [mask[kept.numpy()].mean() for mask, kept in zip(covered, centers, strict=True)]
    )
    assert kept_on_objects >= SHIPPED_MIN_KEPT_ON_OBJECTS
    assert np.mean([mask.mean() for mask in covered]) < 0.25


def test_eval_and_visualize_take_the_siglip_mini_model(tmp_path, shipped):
    main(["eval", "--model", "mini-siglip", "--methods", "none,prumerge", "--no-budgets", "--limit", "8",
          "--json", str(tmp_path / "eval.json")])  # fmt: skip
    summary = json.loads((tmp_path / "eval.json").read_text())
    assert (summary["patches_per_image"], summary["importance"], summary["questions"]) == (144, "auto", 8)
    image = tmp_path / "scene.png"
    examples("test", 1, image_size=72)[0].image.save(image)
    main(["visualize", str(image), "--model", "mini-siglip", "--out", str(tmp_path / "picture.png")])
    assert (tmp_path / "picture.png").stat().st_size > 10_000
    model, _ = shipped
    assert importance_label(model, model.config.reduction_settings) == f"importance ({STAND_IN_IMPORTANCE})"
