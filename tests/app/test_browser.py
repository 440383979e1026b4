"""The app in a real browser, and the Space folder's app started from its own requirements.

These run only with PRUMERGE_TEST_APP=1, which scripts/test.sh sets for its run in .venvs/app (built by
scripts/setup_app_env.sh from the Space's requirements.txt); there a missing Gradio, Selenium or chromium
fails them instead of skipping them. The browser is Debian's headless chromium, driven through its
chromium-driver, on `llava-prumerge app` started as a real server on a free port.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from importlib.metadata import version
from pathlib import Path

import pytest
from PIL import Image

from llava_prumerge.cli import main

pytestmark = pytest.mark.skipif(
    os.environ.get("PRUMERGE_TEST_APP") != "1",
    reason="needs a browser and Gradio: scripts/test.sh runs these in .venvs/app (PRUMERGE_TEST_APP=1)",
)
BIN = Path(sys.executable).parent
STARTUP_SECONDS = 60


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_page(url: str, server: subprocess.Popen) -> str:
    """The page's text once the server answers (failing with its output if it exits first)."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the server exited ({server.returncode}):\n{server.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read().decode()
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"no answer from {url} in {STARTUP_SECONDS} s")


def started(command: list[str], cwd: Path | None = None, **env) -> subprocess.Popen:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **env}
    return subprocess.Popen(
        command, cwd=cwd, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@pytest.fixture
def server():
    """Start a server with `server(command, ...)`; each is stopped after the test."""
    processes = []

    def start(command, cwd=None, **env):
        processes.append(started(command, cwd, **env))
        return processes[-1]

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=30)
        process.stdout.close()


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1600"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()


def test_the_page_answers_an_uploaded_png_with_each_methods_tokens(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    started_at = time.monotonic()
    image = tmp_path / "shapes.png"
    canvas = Image.new("RGB", (96, 96), "white")
    canvas.paste((30, 60, 200), (24, 24, 72, 72))
    canvas.save(image)
    port = free_port()
    app = server([str(BIN / "llava-prumerge"), "app", "--port", str(port)])
    wait_for_page(f"http://127.0.0.1:{port}/config", app)

    browser.get(f"http://127.0.0.1:{port}/")
    wait = WebDriverWait(browser, 60)
    upload = wait.until(lambda page: page.find_element(By.CSS_SELECTOR, "#upload input[type=file]"))
    upload.send_keys(str(image))
    wait.until(lambda page: "shapes" in page.find_element(By.ID, "upload").text)  # the name, in two parts
    browser.find_element(By.CSS_SELECTOR, "#question textarea").send_keys("What color is the square?")
    browser.find_element(By.CSS_SELECTOR, "#budgets textarea, #budgets input").send_keys("16")
    browser.find_element(By.ID, "run").click()
    wait.until(lambda page: "methods on" in page.find_element(By.ID, "status").text)

    assert browser.find_element(By.ID, "status").text.startswith("5 methods on shapes.png")
    rows = [row.text for row in browser.find_elements(By.CSS_SELECTOR, "#results tbody tr")]
    assert [row.split()[0] for row in rows] == [
        "none",
        "prumerge",
        "prumerge_plus",
        "prumerge@16",
        "prumerge_plus@16",
    ]
    cells = {row.split()[0]: row.split() for row in rows}
    assert cells["none"][1:3] == ["144", "144"] and cells["prumerge@16"][1] == "16"
    assert 1 < int(cells["prumerge"][1]) < 144
    assert all(len(cell) > 6 for cell in cells.values())  # times and an answer follow the counts
    captions = browser.find_element(By.ID, "pictures").text
    assert "prumerge@16: 16 of 144 visual tokens" in captions
    screenshot = tmp_path / "app.png"
    assert browser.save_screenshot(str(screenshot))
    with Image.open(screenshot) as shot:
        assert shot.format == "PNG" and shot.size[0] >= 1000
    assert time.monotonic() - started_at < 90


def test_the_page_says_what_is_wrong_with_an_upload(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    port = free_port()
    app = server([str(BIN / "llava-prumerge"), "app", "--port", str(port)])
    wait_for_page(f"http://127.0.0.1:{port}/config", app)
    browser.get(f"http://127.0.0.1:{port}/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda page: page.find_element(By.CSS_SELECTOR, "#upload input[type=file]")).send_keys(
        str(notes)
    )
    wait.until(lambda page: "notes" in page.find_element(By.ID, "upload").text)
    browser.find_element(By.ID, "run").click()
    wait.until(lambda page: "Not run" in page.find_element(By.ID, "status").text)
    status = browser.find_element(By.ID, "status").text
    assert "PIL does not recognize it as an image" in status and "Traceback" not in browser.page_source


def test_a_wrong_model_is_one_line_before_the_server_starts(tmp_path):
    result = subprocess.run(
        [str(BIN / "llava-prumerge"), "app", "--model", str(tmp_path), "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("llava-prumerge app: error:") and result.stderr.count("\n") == 1
    assert "Running on" not in result.stdout


def test_the_space_app_starts_from_its_own_requirements(server, tmp_path):
    """This environment was built from the Space's requirements.txt (scripts/setup_app_env.sh); the Space's
    app.py starts in it on a local folder (the Hub is out of reach here) and serves its page."""
    from packaging.requirements import Requirement

    main(["export", "--tiny", "--out", str(tmp_path / "model")])
    main(["space", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "space")])
    for line in (tmp_path / "space" / "requirements.txt").read_text().splitlines():
        requirement = Requirement(line)
        assert requirement.specifier.contains(version(requirement.name)), (
            f"{line}: {version(requirement.name)}"
        )
    port = free_port()
    app = server([sys.executable, "app.py"], cwd=tmp_path / "space", GRADIO_SERVER_PORT=str(port))
    config = wait_for_page(f"http://127.0.0.1:{port}/config", app)
    assert str(tmp_path / "model") in config and "LLaVA-PruMerge" in config
    assert wait_for_page(f"http://127.0.0.1:{port}/", app).startswith("<!doctype html>")
