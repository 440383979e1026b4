"""`llava-prumerge demo --video` end to end: the tiny Video-LLaVA on the shipped clip, on a GIF and a frame
folder written here, on a checkpoint folder; and every bad input as one line with exit status 2."""

import contextlib
import io
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from llava_prumerge.cli import main
from llava_prumerge.common.cli_args import COMPARED_METHODS as METHODS
from llava_prumerge.demo.cli import SAMPLE_CLIP
from llava_prumerge.demo.visualize import DPI
from llava_prumerge.demo.visualize_video import video_figure_inches
from llava_prumerge.testing.model_tester import make_image
from llava_prumerge.testing.tiny_video import make_clip

STOCK_TOKENS = 8 * (14 * 14 + 1)  # 8 frames x (196 patches + [CLS]) of the tiny model


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


def tokens(row: dict) -> tuple[int, int]:
    """(video tokens, stock tokens) of a row."""
    kept, stock = row["video tokens / stock"].split(" / ")
    return int(kept), int(stock)


QUICK = ("--repeats", "1", "--max-new-tokens", "2")


@pytest.fixture(scope="module")
def video_demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("video-demo")
    printed = run_demo("--video", "--out", str(out))  # the shipped clip, as the README runs it
    return out, printed, table_rows((out / "summary.md").read_text())


def test_the_sample_clip_ships_small_with_video_llavas_8_frames():
    assert SAMPLE_CLIP.stat().st_size < 20_000
    with Image.open(SAMPLE_CLIP) as clip:
        assert clip.format == "GIF" and clip.n_frames == 8 and max(clip.size) <= 336


def test_summary_lists_every_method_with_video_tokens_against_stock(video_demo_run):
    out, printed, rows = video_demo_run
    assert [(row["video"], row["method"]) for row in rows] == [(SAMPLE_CLIP.name, m) for m in METHODS]
    assert all(row["answer"] for row in rows)
    assert (out / "summary.md").read_text() in printed
    links = {row["method"]: row["picture"] for row in rows}
    stem = SAMPLE_CLIP.stem
    assert links == {"none": "-", **{m: f"[{stem}-{m}.png]({stem}-{m}.png)" for m in METHODS if m != "none"}}
    kept = {row["method"]: tokens(row) for row in rows}
    assert kept["none"] == (STOCK_TOKENS, STOCK_TOKENS)
    assert kept["prumerge"][0] < kept["prumerge_plus"][0] < STOCK_TOKENS
    for row in rows:
        per_frame = [int(count) for count in row["tokens per frame"].split()]
        assert len(per_frame) == 8 and sum(per_frame) == tokens(row)[0]


def test_pictures_show_the_frames_of_each_drawn_method(video_demo_run):
    out, printed, _ = video_demo_run
    pictures = sorted(out.glob("*.png"))
    assert [p.name for p in pictures] == [f"4_moving_shapes-{m}.png" for m in ("prumerge", "prumerge_plus")]
    width, height = video_figure_inches(8)
    for picture in pictures:
        assert str(picture) in printed
        with Image.open(picture) as image:
            assert image.format == "PNG" and image.size == (round(width * DPI), round(height * DPI))


def test_output_says_the_weights_are_random(video_demo_run):
    _, printed, _ = video_demo_run
    assert "RANDOM weights" in printed and "random-weight Video-LLaVA" in printed


def test_your_own_gif_and_frame_folder(tmp_path):
    first, *rest = make_clip(3, frames=12, width=80, height=60)
    first.save(tmp_path / "walk.gif", save_all=True, append_images=rest, duration=100, loop=0)
    (tmp_path / "frames").mkdir()
    for number, frame in enumerate(make_clip(4, frames=10), 1):
        frame.save(tmp_path / "frames" / f"{number}.png")
    out = tmp_path / "out"
    run_demo(
        "--video", str(tmp_path / "walk.gif"), "--video", str(tmp_path / "frames"), "--out", str(out), *QUICK
    )
    rows = table_rows((out / "summary.md").read_text())
    assert [(row["video"], row["method"]) for row in rows] == [
        (name, method) for name in ("walk.gif", "frames") for method in METHODS
    ]
    assert {p.name for p in out.glob("*.png")} == {
        f"{stem}-{method}.png" for stem in ("walk", "frames") for method in ("prumerge", "prumerge_plus")
    }


def test_a_stock_video_llava_checkpoint_runs_like_the_default(tmp_path, video_checkpoints):
    out = tmp_path / "out"
    printed = run_demo("--video", "--model", str(video_checkpoints["stock"]), "--out", str(out), *QUICK)
    assert "RANDOM" not in printed
    rows = table_rows((out / "summary.md").read_text())
    assert [row["method"] for row in rows] == list(METHODS)
    assert tokens(rows[0]) == (STOCK_TOKENS, STOCK_TOKENS)


def bad_input(folder: Path, kind: str) -> list[str]:
    """demo arguments that cannot work, of one kind, with their files made in `folder`."""
    still, text = folder / "still.png", folder / "notes.gif"
    make_image(1).save(still)
    text.write_text("not a video")
    (folder / "empty").mkdir()
    return {
        "missing video": ["--video", str(folder / "missing.mp4")],
        "empty frame folder": ["--video", str(folder / "empty")],
        "unreadable video": ["--video", str(text)],
        "still image as video": ["--video", str(still)],
        "video as image": ["--image", str(SAMPLE_CLIP)],
        "image and video": ["--image", str(still), "--video"],
        "shared video names": ["--video", str(SAMPLE_CLIP), "--video", str(SAMPLE_CLIP)],
    }[kind]


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing video", "No video at"),
        ("empty frame folder", "No frames in"),
        ("unreadable video", "Cannot read"),
        ("still image as video", "is a still image"),
        ("video as image", "is a video (8 frames), not an image; pass it as --video"),
        ("image and video", "Pass --image or --video, not both"),
        ("shared video names", "share a file name"),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(tmp_path, capsys, kind, message):
    with pytest.raises(SystemExit) as exit_info:
        run_demo(*bad_input(tmp_path, kind), "--out", str(tmp_path / "out"))
    error = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert error.startswith("llava-prumerge demo: error: ") and message in error
    assert error.count("\n") == 1 and "Traceback" not in error


def test_the_console_script_reports_a_still_image_passed_as_a_video_in_one_line(tmp_path):
    make_image(2).save(tmp_path / "photo.png")
    script = Path(sys.executable).parent / "llava-prumerge"
    result = subprocess.run(
        [str(script), "visualize", "--video", str(tmp_path / "photo.png")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "is a still image" in result.stderr
    assert [path.name for path in tmp_path.iterdir()] == ["photo.png"]  # no picture written
