#!/usr/bin/env bash
# Create (or refresh) a virtual environment that builds the documentation site (mkdocs.yml):
# MkDocs with the Material theme and mkdocstrings' Python handler, pinned. It is light: no torch and no
# transformers. The API reference is read from the sources by griffe, statically; the CLI reference is
# rendered by docs/hooks/cli_reference.py, which imports llava_prumerge.cli, whose parsers need only the
# standard library. This checkout is installed in editable mode without its dependencies for that.
#   bash scripts/setup_docs_env.sh VENV_DIR
#   VENV_DIR/bin/mkdocs build --strict --site-dir "$(mktemp -d)"
set -euo pipefail
# setuptools draws a 9-line "Editable installation" notice box at every editable install: hidden.
export PYTHONWARNINGS="ignore:Editable installation${PYTHONWARNINGS:+,$PYTHONWARNINGS}"
venv=${1:?usage: setup_docs_env.sh VENV_DIR}
root=$(cd "$(dirname "$0")/.." && pwd)

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip() { "$venv/bin/python" -m pip --disable-pip-version-check -q "$@"; }
quiet() { grep -v "^WARNING: Location" || true; }
pip install \
    "mkdocs==1.6.1" \
    "mkdocs-material==9.8.1" \
    "mkdocstrings==1.0.8" \
    "mkdocstrings-python==2.0.11" \
    "pymdown-extensions==13.1" 2>&1 | quiet
pip install --no-deps -e "$root" 2>&1 | quiet
"$venv/bin/python" -c "import mkdocs, material, mkdocstrings, llava_prumerge.cli; print('ready:', '$venv', 'mkdocs', mkdocs.__version__)"
