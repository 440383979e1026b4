"""`llava-prumerge demo` end to end on the embedded default: the tiny model and the shipped samples."""

import contextlib
import io

import pytest
from PIL import Image

from llava_prumerge.cli import main
from llava_prumerge.common.cli_args import COMPARED_METHODS as METHODS
from llava_prumerge.demo.demo import SAMPLES, one_line
from llava_prumerge.demo.visualize import DPI, FIGURE_INCHES
from llava_prumerge.testing.model_tester import make_image

SAMPLE_NAMES = sorted(path.name for path in SAMPLES.glob("*.png"))


def run_demo(*args: str) -> str:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        main(["demo", *args])
    return printed.getvalue()


def table_rows(summary: str) -> list[dict]:
    """The summary's markdown table as one dict per row, keyed by the header."""
    lines = [line for line in summary.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [
        dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")), strict=True))
        for line in lines[2:]
    ]


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
        (name, method) for name in SAMPLE_NAMES for method in METHODS
    ]
    assert all(row["answer"] for row in rows)
    assert (out / "summary.md").read_text() in printed
    for row in rows:  # each picture linked beside its row, relative to summary.md
        name = f"{row['image'][:-4]}-{row['method']}.png"
        assert row["picture"] == ("-" if row["method"] == "none" else f"[{name}]({name})")
        assert row["method"] == "none" or (out / name).is_file()


def test_prumerge_keeps_fewer_tokens_than_none(demo_run):
    _, _, rows = demo_run
    kept = {(row["image"], row["method"]): int(row["visual tokens"].split(" / ")[0]) for row in rows}
    for name in SAMPLE_NAMES:
        assert kept[name, "none"] == 196
        assert kept[name, "prumerge"] < kept[name, "none"]


def test_pictures_are_pngs_of_the_expected_size(demo_run):
    out, printed, _ = demo_run
    pictures = sorted(out.glob("*.png"))
    assert [p.name for p in pictures] == sorted(
        f"{name[:-4]}-{method}.png" for name in SAMPLE_NAMES for method in METHODS if method != "none"
    )
    for picture in pictures:
        assert str(picture) in printed
        with Image.open(picture) as image:
            assert image.format == "PNG" and image.size == (FIGURE_INCHES[0] * DPI, FIGURE_INCHES[1] * DPI)


def test_output_says_the_weights_are_random(demo_run):
    _, printed, _ = demo_run
    assert "RANDOM weights" in printed and "random-weight" in printed


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
