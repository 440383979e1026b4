#!/usr/bin/env bash
# Lint, then run the whole test suite under transformers 4.57.x and under the latest 5.x,
# each in its own virtual environment under .venvs/ (created on first use). Both environments
# are set up first: the cross-version tests export a checkpoint under one major and load it
# under the other (PRUMERGE_TEST_PYTHONS names both interpreters). Then the vLLM tests (the
# plugin, `serve`, `bench --engine vllm`, the README's `# needs vLLM` blocks) in .venvs/vllm, with
# vLLM's CPU build, which pins its own torch and transformers (scripts/setup_vllm_env.sh). That part took
# 4.8 minutes on a fresh clone of a shared 2-core machine: 2.1 to build .venvs/vllm, 2.7 for its tests.
# Arguments go to the tf4 and tf5 pytest runs.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
declare -A specs=([tf4]="transformers>=4.57,<4.58" [tf5]="transformers>=5,<6")
for name in tf4 tf5; do
    bash scripts/setup_env.sh ".venvs/$name" "${specs[$name]}"
done
export PRUMERGE_TEST_PYTHONS="$root/.venvs/tf4/bin/python:$root/.venvs/tf5/bin/python"
# torchvision only where video processors are tested (why an overlay: scripts/setup_vision_overlay.sh)
for name in tf4 tf5; do
    bash scripts/setup_vision_overlay.sh ".venvs/$name" ".venvs/$name-vision"
done
export PRUMERGE_TEST_VISION_PYTHONS="$root/.venvs/tf4-vision/bin/python:$root/.venvs/tf5-vision/bin/python"
bash scripts/setup_vllm_env.sh .venvs/vllm
status=0
.venvs/tf5/bin/ruff check . && .venvs/tf5/bin/ruff format --check . || status=1
for name in tf4 tf5; do
    echo "=== pytest with $(".venvs/$name/bin/python" -c 'import transformers; print("transformers", transformers.__version__)')"
    ".venvs/$name/bin/python" -m pytest -q -p no:cacheprovider "$@" || status=1
done
echo "=== pytest with $(.venvs/vllm/bin/python -c 'import vllm, transformers; print("vLLM", vllm.__version__, "(CPU), transformers", transformers.__version__)')"
# PRUMERGE_TEST_VLLM=1: a test that needs vLLM fails here if vLLM cannot be imported, instead of skipping
PRUMERGE_TEST_VLLM=1 .venvs/vllm/bin/python -m pytest -q -p no:cacheprovider --durations=5 tests/serving \
    tests/test_readme.py::test_every_vllm_readme_block_runs || status=1
exit $status
