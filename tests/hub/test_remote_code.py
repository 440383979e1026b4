"""The remote code a Hub folder carries: self-contained, safe, and the set the architecture table names."""

import ast
import sys

import pytest

from llava_prumerge.errors import RemoteCodeError
from llava_prumerge.hub_upload.remote_code import REMOTE_CODE_SOURCES, flatten_imports

NETWORK_OR_CODE_MODULES = {"socket", "ssl", "http", "urllib", "requests", "huggingface_hub", "subprocess",
                           "pickle", "marshal", "shelve", "ctypes", "importlib"}  # fmt: skip
DANGEROUS_CALLS = {"eval", "exec", "compile", "__import__", "torch.load", "os.system", "os.popen"}


def test_remote_code_is_self_contained_and_does_no_io_pickling_or_code_execution(hub_folder):
    siblings = {name.removesuffix(".py") for name in REMOTE_CODE_SOURCES}
    for name in REMOTE_CODE_SOURCES:
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
    for name in REMOTE_CODE_SOURCES:
        assert "from .." not in (hub_folder / name).read_text(), name
    configuration = (hub_folder / "configuration_llava_prumerge.py").read_text()
    assert "from .configuration_prumerge import PruMergeConfigMixin" in configuration
    modeling = (hub_folder / "modeling_llava_prumerge.py").read_text()
    assert "from .configuration_llava_prumerge import LlavaPruMergeConfig" in modeling
    assert "from .vision_encoding import" in modeling and "from .modeling_prumerge import (" in modeling


def test_other_package_relative_imports_are_refused():
    with pytest.raises(RemoteCodeError, match=r"x\.py:2: package-relative import `from \.\.tiny import"):
        flatten_imports("import torch\nfrom ..tiny import tiny_model\n", "x.py")
