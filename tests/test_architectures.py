"""The architecture table drives everything per architecture: Auto registration, loading, remote code."""

import json

import pytest
import transformers

from llava_prumerge.architectures import ARCHITECTURES, architecture_for
from llava_prumerge.hub_upload.remote_code import REMOTE_CODE_SOURCES, defined_classes, remote_code_files


@pytest.mark.parametrize("arch", ARCHITECTURES, ids=lambda arch: arch.name)
def test_each_row_names_real_classes_registered_with_the_auto_classes(arch):
    config_class = arch.load("config_class")
    assert (
        config_class.model_type == arch.model_type and config_class.stock_model_type == arch.stock_model_type
    )
    assert config_class.model_class_name == arch.head_class
    assert transformers.AutoConfig.for_model(arch.model_type).__class__ is config_class
    assert transformers.AutoModelForImageTextToText._model_mapping[config_class] is arch.load("head_class")
    assert transformers.AutoModel._model_mapping[config_class] is arch.load("model_class")
    assert architecture_for(arch.stock_model_type) is arch is architecture_for(arch.model_type)


@pytest.mark.parametrize("arch", ARCHITECTURES, ids=lambda arch: arch.name)
def test_remote_code_is_the_rows_modules_and_auto_map_names_classes_they_define(arch, tmp_path):
    files = remote_code_files(arch)
    assert (
        set(files)
        == {f"{module.rpartition('.')[2]}.py" for module in arch.remote_modules}
        <= set(REMOTE_CODE_SOURCES)
    )
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    for target in arch.auto_map.values():
        module, _, class_name = target.rpartition(".")
        assert class_name in defined_classes(tmp_path / f"{module}.py")
    json.dumps(arch.auto_map)  # config.json holds it as is


@pytest.mark.parametrize("arch", ARCHITECTURES, ids=lambda arch: arch.name)
def test_entry_files_import_every_module_they_need_directly(arch):
    """transformers 4.x copies only an auto_map file's direct relative imports from a local folder."""
    import ast

    files = remote_code_files(arch)

    def siblings(name):
        tree = ast.parse(files[name])
        return {
            node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1
        }

    for entry in {target.rpartition(".")[0] for target in arch.auto_map.values()}:
        needed, pending = set(), [entry]
        while pending:
            for sibling in siblings(f"{pending.pop()}.py") - needed:
                needed.add(sibling)
                pending.append(sibling)
        assert needed - {entry} <= siblings(f"{entry}.py"), entry
