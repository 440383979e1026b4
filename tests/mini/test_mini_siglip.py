"""The mini model with a SigLIP tower (no [CLS] token): `train-mini --tower siglip` trains it, `load_mini`
reads the tower back from the weights, and PruMerge reduces it with the stand-in importance."""

import json

import pytest
import torch
from transformers import LlavaForConditionalGeneration

from llava_prumerge.cli import main
from llava_prumerge.errors import ReductionSettingsError, UsageError
from llava_prumerge.mini.model import (
    PATCHES,
    TOWERS,
    TRAINING_RECORD,
    build_tokenizer,
    load_mini,
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
