"""`llava-prumerge eval` on Shapes-VQA: its configurations, its measurements, its table, JSON and plot."""

import json

import pytest
from PIL import Image

from llava_prumerge.cli import main
from llava_prumerge.evaluation.evaluate import configurations, evaluate_shapes_vqa, shapes_vqa_questions
from llava_prumerge.evaluation.report import results_table
from llava_prumerge.modeling.reduction_settings import ReductionSettings


def test_configurations_cover_every_method_and_budget():
    rows = configurations(ReductionSettings(), ["none", "prumerge", "prumerge_plus", "spatial"], [16, 32])
    assert [row.label for row in rows] == [
        "none",
        "prumerge",
        "prumerge@16",
        "prumerge@32",
        "prumerge_plus",
        "prumerge_plus@16",
        "prumerge_plus@32",
        "spatial@16",
        "spatial@32",
    ]
    fixed = rows[3].settings
    assert (fixed.token_reduction, fixed.adaptive, fixed.num_visual_tokens) == ("prumerge", False, 32)
    assert rows[1].settings.adaptive and rows[0].settings.token_reduction == "none"


def test_questions_are_rendered_at_the_models_size_and_cut_at_the_limit():
    pairs = shapes_vqa_questions("test", 56, limit=7, num_images=5)
    assert len(pairs) == 7
    assert all(image.size == (56, 56) for _, image in pairs)
    assert pairs[0][0].id == "test-000000-color" or pairs[0][0].id == "test-000000-count"


def test_every_configuration_answers_the_same_questions(model, processor):
    results, pairs = evaluate_shapes_vqa(
        model, processor, ["none", "prumerge_plus"], [16], limit=6, num_images=3, batch_size=4
    )
    assert [r.configuration.label for r in results] == ["none", "prumerge_plus", "prumerge_plus@16"]
    assert len(pairs) == 6
    for result in results:
        assert result.scores.total == 6 and len(result.predictions) == 6
        assert result.prefill_ms_per_question > 0
    none, adaptive, fixed = results
    assert none.mean_visual_tokens == model.config.image_seq_length
    assert fixed.mean_visual_tokens == 16
    assert adaptive.mean_visual_tokens < none.mean_visual_tokens
    table = results_table(results)
    assert "| none | all | 196.0 |" in table and "| prumerge_plus | 16 | 16.0 |" in table


def test_the_command_writes_table_json_and_plot(tmp_path, capsys):
    folder = tmp_path / "tiny"
    main(["export", "--tiny", "--out", str(folder)])
    out_json, out_png = tmp_path / "eval.json", tmp_path / "eval.png"
    main(
        [
            "eval",
            "--model",
            str(folder),
            "--methods",
            "none,prumerge",
            "--budgets",
            "8",
            "--limit",
            "4",
            "--json",
            str(out_json),
            "--plot",
            str(out_png),
        ]
    )
    printed = capsys.readouterr().out
    assert "Shapes-VQA test split, 4 questions" in printed and "| prumerge | 8 | 8.0 |" in printed
    data = json.loads(out_json.read_text())
    assert [row["label"] for row in data["results"]] == ["none", "prumerge", "prumerge@8"]
    assert len(data["answers"]["prumerge@8"]) == 4 and set(data["answers"]["none"][0]) == {
        "id",
        "answer",
        "prediction",
    }
    with Image.open(out_png) as picture:
        assert picture.format == "PNG" and picture.size == (750, 480)


def test_unknown_methods_are_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--methods", "none,fast"])
    assert exit_info.value.code == 2 and "unknown method(s) ['fast']" in capsys.readouterr().err


def test_a_video_llava_folder_whose_processor_needs_torchvision_is_one_line_before_loading(tmp_path, capsys):
    """Its processor builds a video processor, which needs torchvision; eval builds it before the weights."""
    try:
        import torchvision  # noqa: F401

        pytest.skip("torchvision loads here: the processor builds")
    except (ImportError, RuntimeError):  # the registry's CUDA build does not load beside CPU torch
        pass
    main(["export", "--tiny", "--arch", "video-llava", "--out", str(tmp_path / "video")])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--model", str(tmp_path / "video"), "--limit", "1"])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert (
        "requires the Torchvision library" in captured.err and "Install torchvision built for" in captured.err
    )
    assert "Loading weights" not in captured.err + captured.out
