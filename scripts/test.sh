#!/usr/bin/env bash
# Lint, then run the whole test suite under transformers 4.57.x and under the latest 5.x,
# each in its own virtual environment under .venvs/ (created on first use).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
status=0
for entry in "tf4=transformers>=4.57,<4.58" "tf5=transformers>=5,<6"; do
    venv=".venvs/${entry%%=*}"
    spec=${entry#*=}
    bash scripts/setup_env.sh "$venv" "$spec"
    if [ "$venv" = .venvs/tf5 ]; then
        "$venv/bin/ruff" check . && "$venv/bin/ruff" format --check . || status=1
    fi
    echo "=== pytest with $("$venv/bin/python" -c 'import transformers; print("transformers", transformers.__version__)')"
    "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@" || status=1
done
exit $status
