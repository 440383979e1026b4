#!/usr/bin/env bash
# Create (or reuse) a virtual environment with lmms-eval 0.7.3 and llava-prumerge (editable), for the
# lmms-eval bridge (`python -m lmms_eval --model llava_prumerge ...`, `llava-prumerge eval --lmms-eval-tasks`).
#   bash scripts/setup_lmms_env.sh VENV_DIR
# lmms-eval gets its own environment because it pins tools of its own (ruff, wandb, av). torch is
# installed first as TORCH_SPEC (default torch==2.13.0) and held there; filelock stays below 4 (lmms-eval's
# evaluator imports filelock._api); torchvision is removed (lmms-eval's core does not import it, and the
# registry's build needs CUDA libraries that a CPU machine lacks). SHARED_TORCH_VENV: read torch from that
# environment instead (see scripts/shared_torch.sh).
set -euo pipefail
# setuptools draws a 9-line "Editable installation" notice box at every editable install: hidden.
export PYTHONWARNINGS="ignore:Editable installation${PYTHONWARNINGS:+,$PYTHONWARNINGS}"
venv=${1:?usage: setup_lmms_env.sh VENV_DIR}
torch_spec=${TORCH_SPEC-torch==2.13.0}
root=$(cd "$(dirname "$0")/.." && pwd)
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import lmms_eval, llava_prumerge" 2>/dev/null; then
    # refresh this package's metadata (its lmms_eval.models entry point) and keep everything else
    "$venv/bin/python" -m pip --disable-pip-version-check -q install --no-deps -e "$root" 2>&1 | grep -v "^WARNING: Location" || true
    echo "ready: $venv (reused)"
    exit 0
fi
source "$root/scripts/shared_torch.sh"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip() { "$venv/bin/python" -m pip --disable-pip-version-check -q "$@"; }
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
[ -n "$torch_spec" ] && echo "$torch_spec" > "$constraints"
pip install --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
if ! use_shared_torch "$venv" "$torch_spec" && [ -n "$torch_spec" ]; then
    pip install "$torch_spec" 2>&1 | grep -v "^WARNING: Location" || true
fi
pip install -c "$constraints" "lmms-eval==0.7.3" "filelock<4" -e "$root[test]" 2>&1 | grep -v "^WARNING: Location" || true
pip uninstall -y torchvision 2>&1 | grep -v "^WARNING: Skipping" || true
"$venv/bin/python" -c "import lmms_eval, transformers, llava_prumerge; print('ready:', '$venv', 'transformers', transformers.__version__)"
