"""Reading images and videos from real files: frame folders, animated GIFs, MP4 (with PyAV), bad inputs."""

import sys

import numpy as np
import pytest
from PIL import Image

from llava_prumerge.common.images import MAX_ASPECT_RATIO
from llava_prumerge.demo.media import (
    frame_files,
    load_image,
    load_video,
    natural_order,
    uniform_frame_indices,
)
from llava_prumerge.errors import MissingInputError, UsageError, VisualInputError


def numbered_frame(number: int) -> Image.Image:
    """A flat frame whose red channel is 10 x its number, so a read frame tells which one it was."""
    return Image.new("RGB", (40, 30), (10 * number, 90, 160))


def frame_number(frame: Image.Image) -> int:
    return round(int(np.asarray(frame)[..., 0].mean()) / 10)


def write_gif(path, count: int):
    first, *rest = [numbered_frame(number) for number in range(count)]
    first.save(path, save_all=True, append_images=rest, duration=100, loop=0)
    return path


def test_frames_are_spread_from_the_first_to_the_last_as_video_llava_picks_them():
    assert uniform_frame_indices(30) == [0, 4, 8, 12, 16, 20, 24, 29]
    assert uniform_frame_indices(8) == list(range(8))
    assert uniform_frame_indices(3) == [0, 0, 0, 0, 1, 1, 1, 2]  # a short video repeats frames
    assert uniform_frame_indices(100, count=4) == [0, 33, 66, 99]


def test_frame_names_sort_by_their_numbers():
    names = ["frame_10.png", "frame_2.png", "Frame_1.png", "frame_2b.png"]
    assert sorted(names, key=natural_order) == ["Frame_1.png", "frame_2.png", "frame_2b.png", "frame_10.png"]


def test_a_frame_folder_is_read_in_frame_order_without_other_files(tmp_path):
    for number in range(1, 13):
        numbered_frame(number).save(tmp_path / f"frame_{number}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    (tmp_path / ".hidden.png").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    assert [path.name for path in frame_files(tmp_path)] == [f"frame_{n}.png" for n in range(1, 13)]
    video = load_video(tmp_path)
    assert video.total_frames == 12 and video.frame_numbers == uniform_frame_indices(12)
    assert [frame_number(frame) for frame in video.frames] == [i + 1 for i in video.frame_numbers]
    assert all(frame.mode == "RGB" for frame in video.frames)


def test_an_animated_gif_gives_its_sampled_frames(tmp_path):
    video = load_video(write_gif(tmp_path / "clip.gif", 20))
    assert video.total_frames == 20 and video.frame_numbers == uniform_frame_indices(20)
    assert [frame_number(frame) for frame in video.frames] == video.frame_numbers


def test_a_short_gif_repeats_frames(tmp_path):
    video = load_video(write_gif(tmp_path / "clip.gif", 3))
    assert [frame_number(frame) for frame in video.frames] == [0, 0, 0, 0, 1, 1, 1, 2]


def test_an_mp4_is_decoded_with_pyav(tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 40, 30, "yuv420p"
        for number in range(16):
            container.mux(stream.encode(av.VideoFrame.from_image(numbered_frame(number))))
        container.mux(stream.encode())
    video = load_video(path)
    assert video.total_frames == 16 and video.frame_numbers == uniform_frame_indices(16)
    assert [frame_number(frame) for frame in video.frames] == video.frame_numbers  # lossy, but close


def test_an_mp4_without_pyav_asks_for_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # as if PyAV were not installed
    (tmp_path / "clip.mp4").write_bytes(b"\x00" * 64)
    with pytest.raises(UsageError, match=r"needs PyAV.*pip install av.*folder of frames or an animated GIF"):
        load_video(tmp_path / "clip.mp4")


def bad_video(folder, kind: str):
    """A path in `folder` that is no video in the way `kind` says."""
    if kind == "missing":
        return folder / "missing.gif"
    if kind == "no image files":
        (folder / "notes.txt").write_text("not a frame")
    if kind == "one frame":
        numbered_frame(1).save(folder / "1.png")
    if kind == "still png":
        numbered_frame(1).save(folder / "still.png")
        return folder / "still.png"
    if kind == "one-frame gif":
        return write_gif(folder / "one.gif", 1)
    if kind == "not a gif":
        (folder / "clip.gif").write_text("not a gif")
        return folder / "clip.gif"
    return folder


@pytest.mark.parametrize(
    ("kind", "error", "message"),
    [
        ("missing", MissingInputError, "No video at"),
        ("empty folder", MissingInputError, "No frames in"),
        ("no image files", MissingInputError, "No frames in"),
        ("one frame", UsageError, "holds one frame"),
        ("still png", UsageError, "is a still image"),
        ("one-frame gif", UsageError, "is a still image"),
        ("not a gif", UsageError, "Cannot read"),
    ],
)
def test_bad_videos_are_one_clear_error(tmp_path, kind, error, message):
    with pytest.raises(error, match=message):
        load_video(bad_video(tmp_path, kind))


def test_an_unreadable_frame_is_named(tmp_path):
    numbered_frame(1).save(tmp_path / "1.png")
    (tmp_path / "2.png").write_text("broken")
    with pytest.raises(UsageError, match=r"Cannot read .*2\.png"):
        load_video(tmp_path)


def noisy_frames(count: int) -> list[Image.Image]:
    """Frames of noise, which compress badly: cutting their file short leaves frames undecodable."""
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)) for _ in range(count)]


def cut_short(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    return path


def truncated_media(folder, kind: str):
    """A video (or image) file in `folder` cut short as a half-finished download leaves it, and the file
    the error must name."""
    frames = noisy_frames(8)
    if kind == "gif":
        frames[0].save(folder / "clip.gif", save_all=True, append_images=frames[1:])
        return cut_short(folder / "clip.gif"), folder / "clip.gif"
    if kind == "frame":
        for number, frame in enumerate(frames):
            frame.save(folder / f"{number}.png")
        return folder, cut_short(folder / "3.png")
    if kind == "mp4":
        av = pytest.importorskip("av")
        with av.open(str(folder / "clip.mp4"), "w") as container:
            stream = container.add_stream("mpeg4", rate=10)
            stream.width, stream.height, stream.pix_fmt = 40, 30, "yuv420p"
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_image(frame)))
            container.mux(stream.encode())
        return cut_short(folder / "clip.mp4"), folder / "clip.mp4"
    frames[0].save(folder / f"still.{kind}")
    return cut_short(folder / f"still.{kind}"), folder / f"still.{kind}"


@pytest.mark.parametrize("kind", ["gif", "frame", "mp4", "png", "jpg"])
def test_a_truncated_file_is_named(tmp_path, kind):
    path, damaged = truncated_media(tmp_path, kind)
    with pytest.raises(UsageError, match=f"Cannot read {damaged}"):
        load_image(path) if kind in ("png", "jpg") else load_video(path)


@pytest.mark.parametrize("name", ["clip.gif", "frames", "clip.mp4"])
def test_a_video_passed_as_an_image_points_to_video(tmp_path, name):
    path = tmp_path / name
    if name == "clip.gif":
        write_gif(path, 4)
    elif name == "frames":
        path.mkdir()
    else:
        path.write_bytes(b"\x00" * 64)
    with pytest.raises(UsageError, match=f"--video {path}"):
        load_image(path)


def test_images_still_load_and_a_missing_one_is_named(tmp_path):
    numbered_frame(3).save(tmp_path / "image.png")
    assert frame_number(load_image(tmp_path / "image.png")) == 3
    with pytest.raises(MissingInputError, match="No file at"):
        load_image(tmp_path / "missing.png")


def test_demo_images_get_the_size_checks_of_every_tool(tmp_path):
    Image.new("L", (MAX_ASPECT_RATIO * 10 + 1, 10)).save(tmp_path / "strip.png")
    with pytest.raises(VisualInputError, match="more elongated than"):
        load_image(tmp_path / "strip.png")
