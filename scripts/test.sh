#!/usr/bin/env bash
# Lint, then run the whole test suite under transformers 4.57.x and under the latest 5.x,
# each in its own virtual environment under .venvs/ (created on first use). Both environments
# are set up first: the cross-version tests export a checkpoint under one major and load it
# under the other (PRUMERGE_TEST_PYTHONS names both interpreters).
#   bash scripts/test.sh [tf4|tf5] [PYTEST ARGS...]
# With tf4 or tf5 first, only that major is set up and tested (the cross-version tests then load
# under that major alone); CI (.ci/run) runs both.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
declare -A specs=([tf4]="transformers>=4.57,<4.58" [tf5]="transformers>=5,<6")
majors=(tf4 tf5)
if [[ "${1:-}" == tf4 || "${1:-}" == tf5 ]]; then
    majors=("$1")
    shift
fi
pythons=()
vision_pythons=()
for name in "${majors[@]}"; do
    EXTRAS=test bash scripts/setup_env.sh ".venvs/$name" "${specs[$name]}"
    # torchvision only where video processors are tested (why an overlay: scripts/setup_vision_overlay.sh)
    bash scripts/setup_vision_overlay.sh ".venvs/$name" ".venvs/$name-vision"
    pythons+=("$root/.venvs/$name/bin/python")
    vision_pythons+=("$root/.venvs/$name-vision/bin/python")
done
export PRUMERGE_TEST_PYTHONS=$(IFS=:; echo "${pythons[*]}")
export PRUMERGE_TEST_VISION_PYTHONS=$(IFS=:; echo "${vision_pythons[*]}")
status=0
lint=".venvs/${majors[-1]}/bin"
"$lint/ruff" check . && "$lint/ruff" format --check . || status=1
for name in "${majors[@]}"; do
    echo "=== pytest with $(".venvs/$name/bin/python" -c 'import transformers; print("transformers", transformers.__version__)')"
    ".venvs/$name/bin/python" -m pytest -q -p no:cacheprovider "$@" || status=1
done
exit $status
