"""The distribution installs one namespace, `llava_prumerge`, and the console script."""

import subprocess
import sys
import zipfile
from pathlib import Path

from llava_prumerge import __version__

REPO = Path(__file__).resolve().parents[1]


def test_wheel_holds_only_the_llava_prumerge_package(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--quiet",
            "--wheel-dir",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("llava_prumerge-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert top_level == {
        "llava_prumerge",
        wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info",
    }
    for module in ("modeling/token_reduction.py", "modeling/modeling_llava_prumerge.py",
                   "configuration/configuration_llava_prumerge.py", "hub_upload/__init__.py"):  # fmt: skip
        assert f"llava_prumerge/{module}" in names
    for wing in ("benchmarks", "common", "demo", "testing", "training"):  # the tools' sub-packages
        assert (
            f"llava_prumerge/{wing}/__init__.py" in names
            and f"llava_prumerge/{wing}/cli.py" in names
            or wing == "common"
        )
    for weights in ("weights", "weights-siglip"):  # the two shipped mini models
        for file in ("model.safetensors", "tokenizer.json", "training.json"):
            assert f"llava_prumerge/mini/{weights}/{file}" in names
    samples = [name for name in names if name.startswith("llava_prumerge/demo/samples/")]
    assert sorted(samples) == [
        f"llava_prumerge/demo/samples/{n}"
        for n in ("1_sky_sign.png", "2_text_page.png", "3_cluttered.png", "4_moving_shapes.gif")
    ]
    metadata = (
        zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    )
    assert f"Version: {__version__}\n" in metadata and "License-Expression: Apache-2.0" in metadata
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "llava-prumerge = llava_prumerge.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_console_script_and_module_entry_point():
    script = Path(sys.executable).parent / "llava-prumerge"
    for command in ([str(script), "--help"], [sys.executable, "-m", "llava_prumerge", "--help"]):
        out = subprocess.run(command, check=True, capture_output=True, text=True)
        assert "demo" in out.stdout


def test_license_and_citation_files_agree_with_the_package():
    assert (REPO / "LICENSE").read_text().splitlines()[2].strip() == "Apache License"
    citation = (REPO / "CITATION.cff").read_text()
    assert f"\nversion: {__version__}\n" in citation and "arXiv:2403.15388" in citation
    assert "license: Apache-2.0" in citation
