#!/usr/bin/env bash
# Create (or refresh) a virtual environment with llava-prumerge installed in editable mode.
#   bash scripts/setup_env.sh VENV_DIR [TRANSFORMERS_REQUIREMENT]
# torch is installed first as TORCH_SPEC (default torch==2.13.0: on the project's machines a CPU
# wheel on local disk; elsewhere the normal PyPI build). Set TORCH_SPEC="" to keep a torch you have.
# EXTRAS names the package's extras to install too (scripts/test.sh sets EXTRAS=test); default none.
# SHARED_TORCH_VENV: read torch from that environment instead (see scripts/shared_torch.sh).
set -euo pipefail
# setuptools draws a 9-line "Editable installation" notice box at every editable install: hidden.
export PYTHONWARNINGS="ignore:Editable installation${PYTHONWARNINGS:+,$PYTHONWARNINGS}"
venv=${1:?usage: setup_env.sh VENV_DIR [TRANSFORMERS_REQUIREMENT]}
transformers_spec=${2:-"transformers>=4.57,<6"}
torch_spec=${TORCH_SPEC-torch==2.13.0}
root=$(cd "$(dirname "$0")/.." && pwd)

source "$root/scripts/shared_torch.sh"

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip() { "$venv/bin/python" -m pip --disable-pip-version-check -q "$@"; }
pip install --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
if use_shared_torch "$venv" "$torch_spec"; then
    torch_spec=""
elif [ -n "$torch_spec" ]; then
    pip install "$torch_spec" 2>&1 | grep -v "^WARNING: Location" || true
fi
pip install -e "$root${EXTRAS:+[$EXTRAS]}" "$transformers_spec" 2>&1 | grep -v "^WARNING: Location" || true
"$venv/bin/python" -c "import torch, transformers, llava_prumerge; print('ready:', '$venv', 'torch', torch.__version__, 'transformers', transformers.__version__)"
