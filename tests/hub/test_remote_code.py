"""The remote code a Hub folder carries: self-contained, safe, and the set the architecture table names."""

import ast
import sys

import pytest

from llava_prumerge.cli import main
from llava_prumerge.errors import RemoteCodeError
from llava_prumerge.hub_upload.remote_code import REMOTE_CODE_SOURCES, flatten_imports

NETWORK_OR_CODE_MODULES = {"socket", "ssl", "http", "urllib", "requests", "huggingface_hub", "subprocess",
                           "pickle", "marshal", "shelve", "ctypes", "importlib"}  # fmt: skip
DANGEROUS_CALLS = {"eval", "exec", "compile", "__import__", "torch.load", "os.system", "os.popen"}


@pytest.fixture(scope="module")
def video_hub_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("video") / "tiny-video"
    main(["export", "--tiny", "--arch", "video-llava", "--out", str(out)])
    return out


@pytest.mark.parametrize("folder_fixture", ["hub_folder", "video_hub_folder"])
def test_remote_code_is_self_contained_and_does_no_io_pickling_or_code_execution(request, folder_fixture):
    hub_folder = request.getfixturevalue(folder_fixture)
    names = sorted(path.name for path in hub_folder.glob("*.py"))
    assert set(names) <= set(REMOTE_CODE_SOURCES)
    siblings = {name.removesuffix(".py") for name in names}
    for name in names:
        tree = ast.parse((hub_folder / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1 and node.module in siblings, (
                    f"{name}: from {'.' * node.level}{node.module}"
                )
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = (
                    [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module]
                )
                for module in modules:
                    top = module.split(".")[0]
                    assert top in {"torch", "transformers"} or top in sys.stdlib_module_names, (
                        f"{name}: {module}"
                    )
                    assert top not in NETWORK_OR_CODE_MODULES, f"{name}: {module}"
            elif isinstance(node, ast.Call):
                assert ast.unparse(node.func) not in DANGEROUS_CALLS, f"{name}: {ast.unparse(node.func)}()"
    for name in names:
        assert "from .." not in (hub_folder / name).read_text(), name
    model = "llava" if folder_fixture == "hub_folder" else "video_llava"
    config_class = "LlavaPruMergeConfig" if model == "llava" else "VideoLlavaPruMergeConfig"
    configuration = (hub_folder / f"configuration_{model}_prumerge.py").read_text()
    assert "from .configuration_prumerge import PruMergeConfigMixin" in configuration
    modeling = (hub_folder / f"modeling_{model}_prumerge.py").read_text()
    assert f"from .configuration_{model}_prumerge import {config_class}" in modeling
    assert "from .vision_encoding import" in modeling and "from .modeling_prumerge import (" in modeling


def test_other_package_relative_imports_are_refused():
    with pytest.raises(RemoteCodeError, match=r"x\.py:2: package-relative import `from \.\.tiny import"):
        flatten_imports("import torch\nfrom ..tiny import tiny_model\n", "x.py")
