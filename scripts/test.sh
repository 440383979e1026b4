#!/usr/bin/env bash
# Lint, then run the whole test suite under transformers 4.57.x and under the latest 5.x,
# each in its own virtual environment under .venvs/ (created on first use), then (without arguments)
# the lmms-eval bridge's tests in lmms-eval's environment, .venvs/lmms. Both environments
# are set up first: the cross-version tests export a checkpoint under one major and load it
# under the other (PRUMERGE_TEST_PYTHONS names both interpreters).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
declare -A specs=([tf4]="transformers>=4.57,<4.58" [tf5]="transformers>=5,<6")
for name in tf4 tf5; do
    bash scripts/setup_env.sh ".venvs/$name" "${specs[$name]}"
done
export PRUMERGE_TEST_PYTHONS="$root/.venvs/tf4/bin/python:$root/.venvs/tf5/bin/python"
status=0
.venvs/tf5/bin/ruff check . && .venvs/tf5/bin/ruff format --check . || status=1
for name in tf4 tf5; do
    echo "=== pytest with $(".venvs/$name/bin/python" -c 'import transformers; print("transformers", transformers.__version__)')"
    ".venvs/$name/bin/python" -m pytest -q -p no:cacheprovider "$@" || status=1
done
# The lmms-eval bridge, in lmms-eval's own environment (it pins tools of its own): the `llava_prumerge`
# model found through its entry point and run offline on a local Shapes-VQA task. Only in a full run.
if [ $# -eq 0 ]; then
    echo "=== lmms-eval bridge (.venvs/lmms)"
    if bash scripts/setup_lmms_env.sh .venvs/lmms; then
        HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled \
            .venvs/lmms/bin/python -m pytest -q -p no:cacheprovider tests/evaluation/test_lmms_eval.py || status=1
    else
        status=1
    fi
fi
exit $status
