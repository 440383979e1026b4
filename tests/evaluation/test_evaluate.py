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


def cli_error(argv, capsys) -> str:
    """The error line of `llava-prumerge ARGV` ending with exit status 2 (argparse's comes after the usage)."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(arg) for arg in argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith(("usage:", f"llava-prumerge {argv[0]}: error:")), err
    return err.splitlines()[-1]


def test_every_configuration_is_checked_before_the_first_question(capsys):
    """--budgets 1 once failed after whole configurations ran; 100000 labeled a row with a budget never used."""
    err = cli_error(["eval", "--budgets", "16,100000", "--limit", "1"], capsys)
    assert "error: --budgets 100000: this model has 144 patches per image; use budgets of at most 144" in err
    with pytest.raises(SystemExit):
        main(["eval", "--budgets", "1", "--limit", "1"])
    captured = capsys.readouterr()
    assert "error: --budgets 1 (prumerge@1): num_visual_tokens=1 leaves no room" in captured.err
    assert "[1/" not in captured.out  # no configuration ran


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--budgets", "16", "--no-budgets"], "argument --no-budgets: not allowed with argument --budgets"),
        (["--methods", "none", "--budgets", "16"], "--budgets apply to prumerge, prumerge_plus, spatial"),
        (
            ["--methods", "none", "--importance", "mean_query"],
            "--importance does nothing with --methods none",
        ),
        (["--lmms-eval-python", "python"], "--lmms-eval-python needs --lmms-eval-tasks (e.g. pope,mme)"),
        (["--lmms-eval-output", "out"], "--lmms-eval-output needs --lmms-eval-tasks"),
        (
            ["--lmms-eval-tasks", "pope", "--budgets", "8"],
            "--budgets applies to Shapes-VQA, not to --lmms-eval",
        ),
        (["--lmms-eval-tasks", "pope", "--lmms-eval-python", "/nonexistent"], "/nonexistent does not exist"),
        (
            ["--lmms-eval-tasks", "pope", "--lmms-eval-python", "no-such-python"],
            "no-such-python is not on PATH",
        ),
        (["--model", "tiny"], "--model tiny: eval takes the shipped mini models (mini, mini-siglip) or a"),
        (
            ["--model", "./no-such-folder"],
            "--model ./no-such-folder: No checkpoint folder at ./no-such-folder",
        ),
    ],
)
def test_options_that_cannot_work_are_refused_before_loading(argv, message, capsys):
    assert message in cli_error(["eval", *argv], capsys)


def test_files_passed_as_folders_are_named(tmp_path, capsys):
    afile = tmp_path / "afile.txt"
    afile.write_text("not a checkpoint")
    assert f"--model {afile}: {afile} is a file" in cli_error(["eval", "--model", afile], capsys)
    err = cli_error(["eval", "--lmms-eval-tasks", "pope", "--lmms-eval-python", afile], capsys)
    assert f"--lmms-eval-python {afile} is not executable" in err
    assert f"--out {afile} is a file; pass a folder" in cli_error(["shapes-vqa", "--out", afile], capsys)


def test_repeated_methods_and_budgets_run_once(capsys):
    main(["eval", "--methods", "prumerge,prumerge", "--budgets", "16,16", "--limit", "1"])
    assert [line.split("]")[0] for line in capsys.readouterr().out.splitlines() if line.startswith("[")] == [
        "[1/2",
        "[2/2",
    ]
