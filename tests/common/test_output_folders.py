"""Interrupted runs leave no half-written output, and what a killed run left is removed by the next one."""

import json
import signal
import subprocess
import sys
import textwrap

from llava_prumerge.common.output_folders import remove_leftovers


def killed_while_writing(module: str, function: str, argv: list[str]) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh interpreter that is SIGKILLed (no cleanup can run) inside `module.function`."""
    script = textwrap.dedent(
        f"""
        import os, signal, {module} as target
        from llava_prumerge.cli import main
        def killed(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)
        setattr(target, {function!r}, killed)
        main({argv!r})
        """
    )
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)


def hidden_siblings(folder):
    return sorted(path.name for path in folder.parent.iterdir() if path.name.startswith(f".{folder.name}."))


def test_a_killed_export_leaves_no_folder_and_the_next_export_removes_its_leftovers(tmp_path):
    out = tmp_path / "tiny-prumerge"
    run = killed_while_writing(
        "llava_prumerge.hub_upload.export", "write_weights", ["export", "--tiny", "--out", str(out)]
    )
    assert run.returncode == -signal.SIGKILL
    assert not out.exists()
    (leftover,) = hidden_siblings(out)
    assert leftover.startswith(".tiny-prumerge.partial-")
    done = subprocess.run(
        [sys.executable, "-m", "llava_prumerge", "export", "--tiny", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"Removed what interrupted runs left: {leftover}" in done.stdout
    assert hidden_siblings(out) == [] and (out / "config.json").is_file()


def test_a_killed_tiny_inputs_run_leaves_no_half_folder(tmp_path):
    out = tmp_path / "inputs"
    run = killed_while_writing(
        "llava_prumerge.testing.tiny_inputs", "_write_video_llava_hf", ["tiny-inputs", str(out)]
    )
    assert run.returncode == -signal.SIGKILL and not out.exists() and len(hidden_siblings(out)) == 1
    done = subprocess.run(
        [sys.executable, "-m", "llava_prumerge", "tiny-inputs", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert hidden_siblings(out) == []
    recorded = json.loads((out / "lora" / "config.json").read_text())
    assert recorded["_name_or_path"] == str(
        (out / "vicuna").resolve()
    )  # the final place, not the staging one


def test_leftovers_of_a_live_run_are_kept_and_those_of_older_versions_removed(tmp_path):
    out = tmp_path / "model"
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as running:
        try:
            gone = subprocess.run(
                [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
            )
            names = {
                "live": f".model.partial-{running.pid}-0123abcd",
                "dead": f".model.replaced-{int(gone.stdout)}-0123abcd",
                "unnamed pid": ".model.partial-89abcdef",  # as 0.2.0 named them
                "other output": f".other.partial-{int(gone.stdout)}-0123abcd",
            }
            for name in names.values():
                (tmp_path / name).mkdir()
            removed = remove_leftovers(out)
            assert sorted(path.name for path in removed) == sorted([names["dead"], names["unnamed pid"]])
            assert (tmp_path / names["live"]).is_dir() and (tmp_path / names["other output"]).is_dir()
        finally:
            running.kill()
