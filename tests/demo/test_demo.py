"""`llava-prumerge demo` end to end on the embedded default (the mini model on Shapes-VQA test images), on
your images, on a checkpoint, and on the tiny random-weight model."""

import pytest
from PIL import Image

from llava_prumerge.common.cli_args import COMPARED_METHODS as METHODS
from llava_prumerge.demo.demo import DEMO_QUESTION_KINDS, SAMPLES, one_line
from llava_prumerge.demo.visualize import DPI, FIGURE_INCHES
from llava_prumerge.evaluation.shapes_vqa import ANSWERS
from llava_prumerge.testing.cli_output import printed_by, table_rows
from llava_prumerge.testing.model_tester import make_image

SAMPLE_NAMES = sorted(path.name for path in SAMPLES.glob("*.png"))
DEMO_NAMES = [f"test-{index:06d}.png" for index in range(len(DEMO_QUESTION_KINDS))]  # Shapes-VQA test images
WORDS = {answer for answers in ANSWERS.values() for answer in answers}


def run_demo(*args: str) -> str:
    return printed_by("demo", *args)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    printed = run_demo("--out", str(out))  # exactly what a newcomer runs
    return out, printed, table_rows((out / "summary.md").read_text())


def test_samples_ship_with_the_package_and_are_small():
    assert len(SAMPLE_NAMES) >= 3
    for name in SAMPLE_NAMES:
        assert (SAMPLES / name).stat().st_size < 20_000
        with Image.open(SAMPLES / name) as image:
            assert max(image.size) <= 336


def test_summary_lists_every_image_and_method(demo_run):
    out, printed, rows = demo_run
    assert [(row["image"], row["method"]) for row in rows] == [
        (name, method) for name in DEMO_NAMES for method in METHODS
    ]
    assert all(row["answer"] for row in rows)
    assert (out / "summary.md").read_text() in printed
    for row in rows:  # each picture linked beside its row, relative to summary.md
        name = f"{row['image'][:-4]}-{row['method']}.png"
        assert row["picture"] == ("-" if row["method"] == "none" else f"[{name}]({name})")
        assert row["method"] == "none" or (out / name).is_file()
    assert sorted(path.name for path in (out / "images").glob("*.png")) == DEMO_NAMES


def test_the_mini_models_answers_are_task_words_beside_the_right_answer(demo_run):
    _, _, rows = demo_run
    for row in rows:
        answer, verdict = row["answer"].split(" (", 1)
        assert answer.strip() in WORDS, row
        assert verdict.startswith(("right: ", "wrong: ")) and verdict.rstrip(")").split(": ")[1] in WORDS


def test_the_mini_model_answers_most_demo_questions_right_with_every_token(demo_run):
    _, _, rows = demo_run
    verdicts = [row["answer"].split(" (", 1)[1] for row in rows if row["method"] == "none"]
    assert sum(verdict.startswith("right: ") for verdict in verdicts) > len(verdicts) / 2, verdicts


def test_a_count_question_is_asked_and_the_summary_says_what_each_method_got_wrong(demo_run):
    out, printed, rows = demo_run
    summary = (out / "summary.md").read_text()
    assert "(count): How many shapes are there?" in summary
    assert "(color): " in summary
    right = {(row["image"], row["method"]): "(right: " in row["answer"] for row in rows}
    tally = ", ".join(
        f"{method} {sum(right[name, method] for name in DEMO_NAMES)}/{len(DEMO_NAMES)}" for method in METHODS
    )
    assert f"Right answers: {tally}." in summary
    for name in DEMO_NAMES:
        for method in METHODS[1:]:
            lost = right[name, "none"] and not right[name, method]
            assert (f"- {method} got the " in summary and name in summary) or not lost


def test_noisy_times_are_flagged_and_the_note_says_why(demo_run):
    out, _, rows = demo_run
    summary = (out / "summary.md").read_text()
    assert "(noisy): the runs spread over more than 50% of the median" in summary
    for row in rows:
        for column in ("vision tower ms", "reducer ms", "LLM prefill ms"):
            value, *flag = row[column].split(" ", 1)
            float(value)
            assert flag in ([], ["(noisy)"]), row[column]


def test_prumerge_keeps_fewer_tokens_than_none(demo_run):
    _, _, rows = demo_run
    kept = {(row["image"], row["method"]): int(row["visual tokens"].split(" / ")[0]) for row in rows}
    for name in DEMO_NAMES:
        assert kept[name, "none"] == 144
        # PruMerge+ may keep every patch: with more than 144 / 6 attention centers the published
        # sampling stride is 1
        assert kept[name, "prumerge"] < kept[name, "none"]
        assert kept[name, "prumerge"] <= kept[name, "prumerge_plus"] <= kept[name, "none"]


def test_pictures_are_pngs_of_the_expected_size(demo_run):
    out, printed, _ = demo_run
    pictures = sorted(out.glob("*.png"))
    assert [p.name for p in pictures] == sorted(
        f"{name[:-4]}-{method}.png" for name in DEMO_NAMES for method in METHODS if method != "none"
    )
    for picture in pictures:
        assert str(picture) in printed
        with Image.open(picture) as image:
            assert image.format == "PNG" and image.size == (FIGURE_INCHES[0] * DPI, FIGURE_INCHES[1] * DPI)


def test_output_says_what_the_mini_model_is(demo_run):
    _, printed, _ = demo_run
    assert "Shapes-VQA, a synthetic task" in printed and "not the paper's weights" in printed
    assert "RANDOM" not in printed


def test_the_tiny_random_model_says_its_weights_are_random(tmp_path):
    image = str(SAMPLES / SAMPLE_NAMES[0])
    args = ["--image", image, "--out", str(tmp_path / "out"), "--repeats", "1", "--max-new-tokens", "2"]
    printed = run_demo("--model", "tiny", *args)
    assert "RANDOM weights" in printed and "random-weight" in printed
    rows = table_rows((tmp_path / "out" / "summary.md").read_text())
    assert [int(row["visual tokens"].split(" / ")[1]) for row in rows] == [196] * len(METHODS)


def test_your_own_image(tmp_path):
    image = tmp_path / "mine.png"
    make_image(7, 80, 60).save(image)
    run_demo("--image", str(image), "--out", str(tmp_path / "out"), "--repeats", "1", "--max-new-tokens", "2")
    rows = table_rows((tmp_path / "out" / "summary.md").read_text())
    assert [(row["image"], row["method"]) for row in rows] == [("mine.png", method) for method in METHODS]


def test_images_sharing_a_name_are_a_clear_error(tmp_path, capsys):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        make_image(1).save(tmp_path / folder / "x.png")
    with pytest.raises(SystemExit) as exit_info:
        run_demo("--image", str(tmp_path / "a" / "x.png"), "--image", str(tmp_path / "b" / "x.png"))
    assert exit_info.value.code == 2 and "share a file name" in capsys.readouterr().err


def test_answers_become_one_clean_table_cell():
    assert one_line("a|b\n\x1d c") == "a\\|b c"
    assert one_line("\x0e\x1d") == "(nothing printable)"
    assert len(one_line("x" * 100, width=10)) == 10


def test_a_saved_checkpoint_runs_like_the_default(tmp_path, model, processor):
    model.save_pretrained(tmp_path / "checkpoint")
    processor.save_pretrained(tmp_path / "checkpoint")
    image = str(SAMPLES / SAMPLE_NAMES[0])
    args = ["--image", image, "--out", str(tmp_path / "out"), "--repeats", "1", "--max-new-tokens", "2"]
    printed = run_demo("--model", str(tmp_path / "checkpoint"), *args)
    assert "RANDOM" not in printed
    rows = table_rows((tmp_path / "out" / "summary.md").read_text())
    assert [row["method"] for row in rows] == list(METHODS)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--prompt", "<image> What is it?"], "--prompt holds <image>: the demo puts the image"),
        (["--arch-folder", "qwen2-vl"], "demo runs LLaVA-1.5 checkpoints, and "),
        (["--arch-folder", "video-llava"], "is a Video-LLaVA checkpoint: run the video demo"),
    ],
)
def test_what_the_image_demo_cannot_run_is_refused_before_loading(tmp_path, arguments, message, capsys):
    from llava_prumerge.cli import main

    if arguments[0] == "--arch-folder":
        main(["export", "--tiny", "--arch", arguments[1], "--out", str(tmp_path / "model")])
        arguments = ["--model", str(tmp_path / "model")]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", *arguments, "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert exit_info.value.code == 2 and message in captured.err
    assert "Loading" not in captured.out
