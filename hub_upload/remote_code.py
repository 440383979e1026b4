"""The remote code of a Hub folder: the package's modeling sources, flattened into one folder.

Which modules travel is the architecture table's (`llava_prumerge.architectures`): the shared parts
plus the architecture's configuration and modeling files. `trust_remote_code` imports them from the
Hub folder as siblings, so the package-relative imports between them are rewritten to flat ones.
Any other package-relative import would fail on a machine without this package and is refused,
and the package's files are checked statically for what remote code must not do (network I/O,
unpickling, running code or commands). A folder's remote code is accepted only byte-identical to
what this package writes.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
from pathlib import Path

from .. import __version__
from ..architectures import ARCHITECTURES, Architecture
from ..errors import RemoteCodeError


def remote_file_name(module: str) -> str:
    """The Hub folder file of a package module path ("modeling.compaction" -> "compaction.py")."""
    return f"{module.rpartition('.')[2]}.py"


# Hub folder file name -> the package source of every module that may travel (found, not imported).
REMOTE_CODE_SOURCES = {
    remote_file_name(module): Path(importlib.util.find_spec(f"llava_prumerge.{module}").origin)
    for arch in ARCHITECTURES
    for module in arch.remote_modules
}
REMOTE_MODULES = {name.removesuffix(".py") for name in REMOTE_CODE_SOURCES}
# `from ..modeling.X import` / `from ..configuration.X import`: imports between travelling modules.
PACKAGE_IMPORT = re.compile(r"from \.\.(?:modeling|configuration)\.(\w+) import")

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


def flatten_imports(source: str, source_path: Path | str) -> str:
    """The source with its package-relative imports of other travelling modules made sibling imports
    (`from ..configuration.configuration_prumerge import` -> `from .configuration_prumerge import`)."""
    source = PACKAGE_IMPORT.sub(lambda match: f"from .{match.group(1)} import", source)
    for node in ast.walk(ast.parse(source, filename=str(source_path))):
        if isinstance(node, ast.ImportFrom) and node.level and not _is_sibling_import(node):
            raise RemoteCodeError(
                f"{source_path}:{node.lineno}: package-relative import `from {'.' * node.level}{node.module or ''} "
                f"import ...` cannot work in a Hub folder, where only {sorted(REMOTE_CODE_SOURCES)} are present; "
                "import from torch/transformers/the standard library, or from one of those files "
                "(add the module to the architecture table in llava_prumerge/architectures.py)"
            )
    return source


def remote_code_files(arch: Architecture) -> dict[str, str]:
    """Hub folder file name -> text of an architecture's remote-code files, from the installed sources.

    transformers 4.x loads remote code from a local folder by copying each `auto_map` file with only
    its direct relative imports into its module cache, then fails on any deeper one; so each such
    entry file gets an import of every sibling it needs indirectly, in a marked block at its end.
    """
    files = {}
    for module in arch.remote_modules:
        source = REMOTE_CODE_SOURCES[remote_file_name(module)]
        files[remote_file_name(module)] = flatten_imports(source.read_text(encoding="utf-8"), source)
    entry_modules = {target.rpartition(".")[0] for target in arch.auto_map.values()}
    for module in entry_modules:
        name = f"{module}.py"
        indirect = sorted(_needed_siblings(module, files) - _sibling_imports(files[name]) - {module})
        if indirect:
            lines = [
                f"from .{sibling} import {_first_definition(files[f'{sibling}.py'])}  # noqa: E402, F401"
                for sibling in indirect
            ]
            files[name] += INDIRECT_IMPORTS_NOTE + "\n".join(lines) + "\n"
    return files


INDIRECT_IMPORTS_NOTE = (
    "\n\n# Written by `llava-prumerge export`: the modules this file needs through others, imported directly,\n"
    "# because transformers 4.x copies only a local folder's direct relative imports into its module cache.\n"
)


def _sibling_imports(source: str) -> set[str]:
    """The sibling modules a flattened source imports directly (`from .X import ...`)."""
    return {
        node.module
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module
    }


def _needed_siblings(module: str, files: dict[str, str]) -> set[str]:
    """Every sibling module `module` imports, directly or through others."""
    needed, pending = set(), [module]
    while pending:
        for sibling in _sibling_imports(files[f"{pending.pop()}.py"]) - needed:
            needed.add(sibling)
            pending.append(sibling)
    return needed


def _first_definition(source: str) -> str:
    """The name of the first public class or function a module defines: something to import from it."""
    return next(
        node.name
        for node in ast.parse(source).body
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and not node.name.startswith("_")
    )


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


CODE_SUFFIXES = {".py", ".pyc", ".pyo", ".so", ".pyd"}


def remote_code_problems(folder: Path, arch: Architecture, files: list[Path]) -> list[str]:
    """Remote code is accepted only as this package writes it: byte-identical, and no other code file.

    Static rules can be dodged (`import os as o`, `getattr(os, "sys" + "tem")`, `builtins.eval`); a
    byte comparison cannot. `source_problems` guards the code the package itself writes (its tests).
    """
    written = remote_code_files(arch)
    optional = budget_processor_code(arch)  # present in fixed-budget folders only
    problems = []
    for name, source in {**written, **optional}.items():
        path = folder / name
        if not path.is_file():
            if name in written:
                problems.append(f"{name} is missing (remote code for trust_remote_code=True)")
        elif path.read_bytes() != source.encode("utf-8"):
            problems.append(
                f"{name} differs from the remote code llava-prumerge {__version__} writes; export the "
                "folder again with this version (edited remote code is never uploaded)"
            )
    problems += [
        f"{path} is code that llava-prumerge does not write; remove it (only {sorted({**written, **optional})} "
        "may travel)"
        for path in files
        if path.suffix in CODE_SUFFIXES and path.as_posix() not in {**written, **optional}
    ]
    return problems


def budget_processor_code(arch: Architecture) -> dict[str, str]:
    """Hub folder file name -> text of the architecture's fixed-budget processor (none for most)."""
    if not arch.budget_processor:
        return {}
    module = arch.budget_processor.rpartition(".")[0]
    source = Path(importlib.util.find_spec(f"llava_prumerge.{module}").origin)
    return {remote_file_name(module): flatten_imports(source.read_text(encoding="utf-8"), source)}


def defined_classes(path: Path) -> set[str]:
    """Top-level class names of a Python file, read without importing it."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, SyntaxError):
        return set()
    return {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
