"""ReductionSettings: one frozen, validated object; defaults written once; configs build it; a call can
use other settings without touching the model's config."""

import dataclasses
import re
import warnings

import pytest
import torch

from llava_prumerge import REDUCTION_DEFAULTS, ReductionSettings, reduce_visual_tokens
from llava_prumerge.errors import PruMergeError, ReductionSettingsError
from llava_prumerge.modeling.reduction_settings import REDUCTION_FIELDS
from llava_prumerge.testing.model_tester import PROMPT, prepare_inputs
from llava_prumerge.testing.tiny import tiny_config


def test_defaults_are_the_published_reducer_everywhere():
    assert dataclasses.asdict(ReductionSettings()) == REDUCTION_DEFAULTS
    assert tiny_config().reduction_settings == ReductionSettings()
    assert ReductionSettings().to_dict() == {
        "token_reduction": "prumerge", "adaptive": True, "reduction_ratio": 1 / 8, "num_visual_tokens": None, "num_video_tokens": None,
        "iqr_scale": 1.5, "merge": True, "merge_k": 32, "merge_weighting": "reference", "summary_token": True,
        "class_attention": "reference", "importance": "auto", "reduction_layer": -1, "token_order": "attention",
    }  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    features, keys = torch.randn(2, 2, 64, 8, generator=generator)
    attention = torch.rand(2, 64, generator=generator).softmax(-1)
    implicit, explicit = (
        reduce_visual_tokens(features, attention, keys),
        reduce_visual_tokens(features, attention, keys, ReductionSettings()),
    )
    assert [c.tolist() for c in implicit.centers] == [c.tolist() for c in explicit.centers]


def test_settings_are_frozen_and_replace_returns_a_validated_copy():
    settings = ReductionSettings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.merge_k = 4
    plus = settings.replace(token_reduction="prumerge_plus")
    assert (plus.token_reduction, settings.token_reduction) == ("prumerge_plus", "prumerge")
    with pytest.raises(ReductionSettingsError, match=r"Unknown token-reduction field\(s\) \['merge_kk'\]"):
        settings.replace(merge_kk=4)
    with pytest.raises(ReductionSettingsError, match="merge_k must be an integer >= 0"):
        settings.replace(merge_k=-1)


@pytest.mark.parametrize(
    "field, value",
    [("token_reduction", "tome"), ("merge_weighting", "max"), ("class_attention", "cls"), ("token_order", "random"),
     ("reduction_ratio", 0.0), ("reduction_ratio", True), ("num_visual_tokens", 0), ("iqr_scale", float("inf")),
     ("merge_k", 2.5), ("adaptive", "yes"), ("summary_token", 1), ("reduction_layer", "last")],
)  # fmt: skip
def test_every_field_is_validated_by_name(field, value):
    with pytest.raises(ReductionSettingsError, match=field) as error:
        ReductionSettings(**{field: value})
    assert isinstance(error.value, PruMergeError) and isinstance(error.value, ValueError)


def test_configs_build_their_settings_from_their_fields(tmp_path):
    config = tiny_config(token_reduction="prumerge_plus", adaptive=False, num_visual_tokens=64, merge_k=8)
    expected = ReductionSettings(
        token_reduction="prumerge_plus", adaptive=False, num_visual_tokens=64, merge_k=8
    )
    assert config.reduction_settings == expected
    assert {name: getattr(config, name) for name in REDUCTION_FIELDS} == expected.to_dict()
    config.save_pretrained(tmp_path)
    assert type(config).from_pretrained(tmp_path).reduction_settings == expected


def test_the_reducer_refuses_the_fields_that_choose_its_inputs():
    features, attention, keys = torch.randn(1, 16, 4), torch.rand(1, 16).softmax(-1), torch.randn(1, 16, 4)
    with pytest.raises(ReductionSettingsError, match="choose the attention and keys"):
        reduce_visual_tokens(features, attention, keys, reduction_layer=-2)


def test_a_call_can_use_other_settings_without_changing_the_config(tester, model, images):
    inputs = prepare_inputs(tester.processor, images[:2], [PROMPT, PROMPT])
    plus = model.config.reduction_settings.replace(token_reduction="prumerge_plus")
    with torch.no_grad():
        per_call = model(**inputs, reduction=plus)
        configured = tester.get_model(token_reduction="prumerge_plus")(**inputs)
        default = model(**inputs)
    assert model.config.token_reduction == "prumerge"
    assert per_call.visual_token_counts == configured.visual_token_counts != default.visual_token_counts
    torch.testing.assert_close(per_call.logits, configured.logits)
    generated = model.generate(**inputs, max_new_tokens=3, do_sample=False, reduction=plus)
    expected = tester.get_model(token_reduction="prumerge_plus").generate(
        **inputs, max_new_tokens=3, do_sample=False
    )
    assert torch.equal(generated, expected)


@pytest.mark.parametrize(
    "fields, named",
    [
        ({"token_reduction": "prumerge", "num_video_tokens": 64}, "num_video_tokens=64"),
        ({"token_reduction": "prumerge_plus", "num_visual_tokens": 32}, "num_visual_tokens=32"),
        ({"token_reduction": "prumerge", "reduction_ratio": 0.25}, "reduction_ratio=0.25"),
    ],
)
def test_a_budget_the_adaptive_count_overrides_is_warned_about_naming_the_field(fields, named):
    """Video-LLaVA with num_video_tokens=64 and adaptive left on once gave 122 tokens without a word."""
    with pytest.warns(UserWarning, match=f"{re.escape(named)} takes no effect .*the adaptive count wins"):
        ReductionSettings(**fields)


@pytest.mark.parametrize(
    "fields",
    [
        {"token_reduction": "prumerge", "adaptive": False, "num_visual_tokens": 32, "num_video_tokens": 64},
        {"token_reduction": "spatial", "num_visual_tokens": 32},  # the baselines always count
        {"token_reduction": "none", "num_visual_tokens": 32},
        {"token_reduction": "prumerge_plus"},
    ],
)
def test_settings_whose_fields_all_take_effect_are_quiet(fields, recwarn):
    ReductionSettings(**fields)
    assert not [warning for warning in recwarn if issubclass(warning.category, UserWarning)]


def test_settings_a_model_could_never_run_are_refused_at_load(tmp_path, capsys):
    """Once accepted and refused only at the first forward (or, for a budget above the patches, never: every
    patch was kept, the budget silently unmet)."""
    from llava_prumerge import LlavaPruMergeForConditionalGeneration
    from llava_prumerge.cli import main
    from llava_prumerge.testing.tiny import tiny_config, tiny_model
    from llava_prumerge.testing.tiny_onevision import tiny_onevision_config
    from llava_prumerge.testing.tiny_video import tiny_video_config

    with pytest.raises(ReductionSettingsError, match="num_visual_tokens=197 is more than the 196 tokens"):
        tiny_config(adaptive=False, num_visual_tokens=197)
    with pytest.raises(ReductionSettingsError, match="num_visual_tokens=1 leaves no room for a kept patch"):
        tiny_config(token_reduction="prumerge_plus", adaptive=False, num_visual_tokens=1)
    assert tiny_config(adaptive=False, num_visual_tokens=196).num_visual_tokens == 196  # every patch: allowed
    tiny_model().save_pretrained(tmp_path / "tiny")
    with pytest.raises(ReductionSettingsError, match="num_visual_tokens=100000 is more than"):
        LlavaPruMergeForConditionalGeneration.from_pretrained(
            tmp_path / "tiny", adaptive=False, num_visual_tokens=100000
        )
    with pytest.raises(ReductionSettingsError, match=r"importance='cls' .* \(siglip_vision_model\) has none"):
        tiny_onevision_config(importance="cls")
    with pytest.raises(
        ReductionSettingsError, match="more than the 1576 tokens of an unreduced 8-frame video"
    ):
        tiny_video_config(adaptive=False, num_video_tokens=2000)
    with pytest.raises(SystemExit):
        main(["export", "--tiny", "--arch", "qwen2-vl", "--importance", "cls", "--out", str(tmp_path / "q")])
    assert "importance='cls' reads the [CLS] token's attention" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()


def test_a_video_budget_on_a_model_without_videos_is_warned_about():
    from llava_prumerge.testing.tiny import tiny_config
    from llava_prumerge.testing.tiny_video import tiny_video_config

    with pytest.warns(
        UserWarning, match="num_video_tokens=64 takes no effect: llava_prumerge models take no videos"
    ):
        tiny_config(adaptive=False, num_video_tokens=64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny_video_config(adaptive=False, num_video_tokens=64)
