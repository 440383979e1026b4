"""The remote code of a Hub folder: the package's modeling sources, flattened into one folder.

`trust_remote_code` imports the three files below from the Hub folder as siblings, so the
package-relative imports between them are rewritten to flat ones. Any other package-relative
import would fail on a machine without this package and is refused, and the files are checked
statically for what remote code must not do (network I/O, unpickling, running code or commands).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from ..configuration import configuration_llava_prumerge
from ..modeling import modeling_llava_prumerge, token_reduction

# Hub folder file name -> the package source it is copied from.
REMOTE_CODE_SOURCES = {
    "configuration_llava_prumerge.py": Path(configuration_llava_prumerge.__file__),
    "modeling_llava_prumerge.py": Path(modeling_llava_prumerge.__file__),
    "token_reduction.py": Path(token_reduction.__file__),
}
REMOTE_MODULES = {name.removesuffix(".py") for name in REMOTE_CODE_SOURCES}

# config.json `auto_map`: what each Auto class instantiates with trust_remote_code=True.
AUTO_MAP = {
    "AutoConfig": "configuration_llava_prumerge.LlavaPruMergeConfig",
    "AutoModel": "modeling_llava_prumerge.LlavaPruMergeModel",
    "AutoModelForVision2Seq": "modeling_llava_prumerge.LlavaPruMergeForConditionalGeneration",
    "AutoModelForImageTextToText": "modeling_llava_prumerge.LlavaPruMergeForConditionalGeneration",
}

# The package-relative imports that become sibling imports in the Hub folder.
FLAT_IMPORTS = {
    "from ..modeling.token_reduction import": "from .token_reduction import",
    "from ..configuration.configuration_llava_prumerge import": "from .configuration_llava_prumerge import",
}

ALLOWED_THIRD_PARTY = {"torch", "transformers"}
# Standard-library modules that reach the network, unpickle, or run code or commands.
FORBIDDEN_MODULES = {
    "asyncio", "ctypes", "ftplib", "http", "imaplib", "importlib", "marshal", "multiprocessing",
    "pickle", "poplib", "shelve", "smtplib", "socket", "socketserver", "ssl", "subprocess",
    "telnetlib", "urllib", "webbrowser", "xmlrpc",
}  # fmt: skip
# Names that download, wherever they are imported from (transformers re-exports some), and
# names that download, unpickle or run commands when imported from their own module.
FORBIDDEN_NAMES = {"hf_hub_download", "snapshot_download", "cached_file", "cached_files"}
FORBIDDEN_FROM_IMPORTS = {("torch", "load"), ("torch", "hub"), ("os", "system"), ("os", "popen")}
FORBIDDEN_CALLS = {
    "eval",
    "exec",
    "compile",
    "__import__",
    "torch.load",
    "torch.hub.load",
    "os.system",
    "os.popen",
}
FORBIDDEN_CALL_PREFIXES = ("os.exec", "os.spawn", "os.fork", "pickle.", "subprocess.", "torch.hub.")


class RemoteCodeError(ValueError):
    """A package source cannot travel as remote code."""


def flatten_imports(source: str, source_path: Path | str) -> str:
    """The source with the package-relative imports between the three files made sibling imports."""
    for package_import, flat_import in FLAT_IMPORTS.items():
        source = source.replace(package_import, flat_import)
    for node in ast.walk(ast.parse(source, filename=str(source_path))):
        if isinstance(node, ast.ImportFrom) and node.level and not _is_sibling_import(node):
            raise RemoteCodeError(
                f"{source_path}:{node.lineno}: package-relative import `from {'.' * node.level}{node.module or ''} "
                f"import ...` cannot work in a Hub folder, where only {sorted(REMOTE_CODE_SOURCES)} are present; "
                "import from torch/transformers/the standard library, or from one of those files "
                "(add a rewrite to FLAT_IMPORTS in hub_upload/remote_code.py)"
            )
    return source


def remote_code_files() -> dict[str, str]:
    """File name -> text of the remote-code files, from the installed package sources."""
    return {
        name: flatten_imports(path.read_text(encoding="utf-8"), path)
        for name, path in REMOTE_CODE_SOURCES.items()
    }


def _is_sibling_import(node: ast.ImportFrom) -> bool:
    return node.level == 1 and node.module in REMOTE_MODULES


def _dotted_name(node: ast.expr) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _module_problem(module: str) -> str | None:
    top = module.split(".")[0]
    if module == "torch.hub" or module.startswith("torch.hub.") or module == "transformers.utils.hub":
        return f"imports {module} (downloads)"
    if top in FORBIDDEN_MODULES:
        return f"imports {module} (network I/O, unpickling or running code is not allowed in remote code)"
    if top not in ALLOWED_THIRD_PARTY and top not in sys.stdlib_module_names:
        return f"imports {module}: remote code may import only torch, transformers and the standard library"
    return None


def source_problems(name: str, source: str) -> list[str]:
    """What is wrong with one remote-code file, statically (it is never imported here)."""
    try:
        tree = ast.parse(source, filename=name)
    except SyntaxError as error:
        return [f"{name}:{error.lineno}: syntax error: {error.msg}"]
    problems = []
    for node in ast.walk(tree):
        where = f"{name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            problems += [f"{where}: {p}" for alias in node.names if (p := _module_problem(alias.name))]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if not _is_sibling_import(node):
                    problems.append(
                        f"{where}: relative import from {'.' * node.level}{node.module or ''}; only "
                        f"`from .<module> import` of {sorted(REMOTE_MODULES)} works in a Hub folder"
                    )
            elif problem := _module_problem(node.module or ""):
                problems.append(f"{where}: {problem}")
            problems += [
                f"{where}: imports {alias.name} from {node.module} (downloads, unpickles or runs commands)"
                for alias in node.names
                if node.level == 0
                and (alias.name in FORBIDDEN_NAMES or (node.module, alias.name) in FORBIDDEN_FROM_IMPORTS)
            ]
        elif isinstance(node, ast.Call):
            called = _dotted_name(node.func)
            if called in FORBIDDEN_CALLS or called.startswith(FORBIDDEN_CALL_PREFIXES):
                problems.append(f"{where}: calls {called}()")
    return problems


def remote_code_problems(folder: Path) -> list[str]:
    """What keeps the folder's remote code from loading self-contained and safely."""
    problems = []
    for name in REMOTE_CODE_SOURCES:
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} is missing (remote code for trust_remote_code=True)")
            continue
        problems += source_problems(name, path.read_text(encoding="utf-8"))
    return problems


def defined_classes(path: Path) -> set[str]:
    """Top-level class names of a Python file, read without importing it."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, SyntaxError):
        return set()
    return {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
