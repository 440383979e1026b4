#!/usr/bin/env bash
# Lint, then the whole test suite under transformers 4.57.x and under the latest 5.x, each in its own
# virtual environment under .venvs/ (created on first use), then the tests that need an environment of
# their own: vLLM's CPU build, which pins its own torch and transformers (.venvs/vllm,
# scripts/setup_vllm_env.sh: the plugin, `serve`, `bench --engine vllm`, the README's `# needs vLLM`
# blocks), and lmms-eval's (.venvs/lmms, scripts/setup_lmms_env.sh: the `llava_prumerge` lmms-eval
# model found through its entry point and run offline on a local Shapes-VQA task). Both majors are set up first: the cross-version tests export a checkpoint under one major
# and load it under the other (PRUMERGE_TEST_PYTHONS names both interpreters).
# The full run also builds the documentation site (mkdocs.yml; .venvs/docs, scripts/setup_docs_env.sh) with
# `mkdocs build --strict`, into a temporary folder, and drives `llava-prumerge app` in headless chromium and
# starts the Space's app (.venvs/app, scripts/setup_app_env.sh: the Space's requirements.txt, tests/app).
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
# One torch for every environment below (scripts/shared_torch.sh): 750 MB once, not once per environment.
export SHARED_TORCH_VENV="$root/.venvs/torch"

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
# vLLM's, lmms-eval's and the docs' environments build (mostly downloads) while the majors' suites run; one
# after the other, as each installs this checkout in editable mode.
if [[ $full_run == 1 ]]; then
    (bash scripts/setup_vllm_env.sh .venvs/vllm && bash scripts/setup_lmms_env.sh .venvs/lmms \
        && bash scripts/setup_docs_env.sh .venvs/docs && bash scripts/setup_app_env.sh .venvs/app) \
        > "$logs/setup.log" 2>&1 &
    extra_setup=$!
fi

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
other_checks() {  # the environments of their own: vLLM's, the docs', lmms-eval's, the app's
    local failed=0
    echo "=== pytest with $(.venvs/vllm/bin/python -c 'import vllm, transformers; print("vLLM", vllm.__version__, "(CPU), transformers", transformers.__version__)')"
    # PRUMERGE_TEST_VLLM=1: a test that needs vLLM fails here if vLLM cannot be imported, instead of skipping
    PRUMERGE_TEST_VLLM=1 .venvs/vllm/bin/python -m pytest -q -p no:cacheprovider --durations=5 tests/serving \
        tests/test_readme.py::test_every_vllm_readme_block_runs || failed=1
    echo "=== documentation site: mkdocs build --strict (.venvs/docs)"
    NO_MKDOCS_2_WARNING=1 .venvs/docs/bin/mkdocs build --strict --site-dir "$logs/site" || failed=1
    echo "=== lmms-eval bridge (.venvs/lmms)"
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled \
        .venvs/lmms/bin/python -m pytest -q -p no:cacheprovider tests/evaluation/test_lmms_eval.py || failed=1
    echo "=== the app in headless chromium, and the Space's app (.venvs/app: the Space's requirements)"
    # pytest's own script, not `python -m`, which would import the checkout instead of the installed wheel
    PRUMERGE_TEST_APP=1 OMP_NUM_THREADS=1 .venvs/app/bin/pytest -q -p no:cacheprovider tests/app || failed=1
    return $failed
}

if [[ $full_run == 1 ]]; then
    # The other checks start as soon as the first major's suite ends (4.57's is the shorter: the docs pages'
    # blocks run under 5.x only), beside the second's, so that both cores stay busy.
    wait "${suites[0]}" || status=1
    if ! wait "$extra_setup"; then
        cat "$logs/setup.log"
        exit 1
    fi
    other_checks > "$logs/other.log" 2>&1 &
    others=$!
    wait "${suites[1]}" || status=1
    cat "$logs/${majors[0]}.log" "$logs/${majors[1]}.log"
    wait "$others" || status=1
    cat "$logs/other.log"
else
    for index in "${!majors[@]}"; do
        wait "${suites[$index]}" || status=1
        cat "$logs/${majors[$index]}.log"
    done
fi
exit $status
