"""Fixtures of the Hub tests: an exported tiny folder and tiny stand-ins for convert's inputs."""

from pathlib import Path

import pytest

from llava_prumerge.hub_upload import export
from llava_prumerge.testing.tiny_inputs import write_tiny_inputs


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory, model, processor) -> Path:
    out = tmp_path_factory.mktemp("export") / "tiny-prumerge"
    return export.save_hub_folder(model, processor, out, model_card_extra={"license": "apache-2.0"})


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory):
    return write_tiny_inputs(tmp_path_factory.mktemp("inputs"))
