#!/usr/bin/env bash
# Lint, then the whole test suite under transformers 4.57.x and under the latest 5.x, each in its own
# virtual environment under .venvs/ (created on first use), then the tests that need an environment of
# their own: vLLM's CPU build, which pins its own torch and transformers (.venvs/vllm,
# scripts/setup_vllm_env.sh: the plugin, `serve`, `bench --engine vllm`, the README's `# needs vLLM`
# blocks). Both majors are set up first: the cross-version tests export a checkpoint under one major
# and load it under the other (PRUMERGE_TEST_PYTHONS names both interpreters).
#   bash scripts/test.sh [tf4|tf5] [PYTEST ARGS...]
# With tf4 or tf5 first, only that major is set up and tested (the cross-version tests then load under
# that major alone), and with pytest arguments only the two majors run; CI (.ci/run) runs everything.
# The two majors' suites run at the same time with one torch thread each (the tests' models are tiny:
# two processes use two cores better than one process with two threads); each prints when it ends.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
declare -A specs=([tf4]="transformers>=4.57,<4.58" [tf5]="transformers>=5,<6")
majors=(tf4 tf5)
if [[ "${1:-}" == tf4 || "${1:-}" == tf5 ]]; then
    majors=("$1")
    shift
fi
full_run=$([[ ${#majors[@]} -eq 2 && $# -eq 0 ]] && echo 1 || echo 0)
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

# vLLM's environment builds (mostly downloads) while the majors' environments are set up and tested.
if [[ $full_run == 1 ]]; then
    bash scripts/setup_vllm_env.sh .venvs/vllm > "$logs/vllm-setup.log" 2>&1 &
    vllm_setup=$!
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

suites=()
for name in "${majors[@]}"; do
    (
        echo "=== pytest with $(".venvs/$name/bin/python" -c 'import transformers; print("transformers", transformers.__version__)')"
        OMP_NUM_THREADS=1 ".venvs/$name/bin/python" -m pytest -q -p no:cacheprovider --durations=10 "$@"
    ) > "$logs/$name.log" 2>&1 &
    suites+=($!)
done
for index in "${!majors[@]}"; do
    wait "${suites[$index]}" || status=1
    cat "$logs/${majors[$index]}.log"
done

if [[ $full_run == 1 ]]; then
    if ! wait "$vllm_setup"; then
        cat "$logs/vllm-setup.log"
        exit 1
    fi
    echo "=== pytest with $(.venvs/vllm/bin/python -c 'import vllm, transformers; print("vLLM", vllm.__version__, "(CPU), transformers", transformers.__version__)')"
    # PRUMERGE_TEST_VLLM=1: a test that needs vLLM fails here if vLLM cannot be imported, instead of skipping
    PRUMERGE_TEST_VLLM=1 .venvs/vllm/bin/python -m pytest -q -p no:cacheprovider --durations=5 tests/serving \
        tests/test_readme.py::test_every_vllm_readme_block_runs || status=1
fi
exit $status
