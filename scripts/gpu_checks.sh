#!/usr/bin/env bash
# The GPU checks, for a machine with an NVIDIA GPU whose Python already has CUDA torch, transformers,
# accelerate and peft (nothing is downloaded): installs this package without dependencies, runs
# tests/gpu/test_cuda.py, then the benchmarks the README quotes (vLLM's too, where vLLM is installed), each
# log and JSON written to OUT_DIR.
# Without a CUDA GPU it says so and exits 0, having checked nothing.
#   bash scripts/gpu_checks.sh OUT_DIR
# PYTHON picks the interpreter (default python3). One failing step does not stop the others; the exit
# status is non-zero when any failed.
set -uo pipefail
out=${1:?usage: gpu_checks.sh OUT_DIR}
python=${PYTHON:-python3}
cd "$(dirname "$0")/.."
mkdir -p "$out"
status=0
step() {  # step NAME COMMAND...: run, log to OUT_DIR/NAME.log, remember a failure
    local name=$1
    shift
    echo "=== $name: $*"
    "$@" 2>&1 | tee "$out/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc"
    [ "$rc" -eq 0 ] || status=1
}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if ! "$python" -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
    echo "gpu_checks: $python sees no CUDA GPU; nothing was checked"
    exit 0
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
# Install this checkout (no dependencies, nothing downloaded) unless the interpreter already imports it.
if ! "$python" -c "import llava_prumerge, pathlib, sys; sys.exit(not pathlib.Path(llava_prumerge.__file__).resolve().is_relative_to(pathlib.Path.cwd().resolve()))" 2>/dev/null; then
    "$python" -m pip install --no-deps --no-build-isolation --disable-pip-version-check -q -e . 2>&1 | tail -3
fi
"$python" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" |
    tee -a "$out/gpu.txt"

step test_cuda "$python" -m pytest -q -p no:cacheprovider -rA tests/gpu/test_cuda.py
step reducer_fp16 "$python" -m llava_prumerge bench --reducer-only --device cuda --dtype float16 \
    --batch-size 1,16 --repeats 5 --json "$out/reducer_fp16.json"
step bench_7b_fp16 "$python" -m llava_prumerge bench --arch llava-1.5-7b --device cuda --dtype float16 \
    --batch-size 1,8,32 --repeats 5 --json "$out/bench_7b_fp16.json"
step bench_13b_bf16 "$python" -m llava_prumerge bench --arch llava-1.5-13b --device cuda --dtype bfloat16 \
    --batch-size 1,8 --repeats 3 --json "$out/bench_13b_bf16.json"
# Issue 33's targets: batch 1 and 8, none vs adaptive PruMerge(+) vs PruMerge+ at 64 / 128, compiled (CUDA graphs
# where the shapes are static) beside the eager rows above; warm-up passes absorb compiling.
step bench_7b_fp16_compiled "$python" -m llava_prumerge bench --arch llava-1.5-7b --device cuda --dtype float16 \
    --batch-size 1,8 --methods none,prumerge,prumerge_plus,prumerge_plus@64,prumerge_plus@128 \
    --compile reduce-overhead --warmup 3 --repeats 5 --json "$out/bench_7b_fp16_compiled.json"
# The same targets as users meet them: the model's forward timed as one call, compiled whole (a fixed budget's
# prefill is one CUDA graph, its prompt in the budget's layout), and its eager twin
step prefill_7b_fp16_compiled "$python" -m llava_prumerge bench --arch llava-1.5-7b --device cuda --dtype float16 \
    --whole-prefill --batch-size 1,8 --methods none,prumerge,prumerge_plus,prumerge_plus@64,prumerge_plus@128 \
    --compile reduce-overhead --warmup 3 --repeats 10 --json "$out/prefill_7b_fp16_compiled.json"
step prefill_7b_fp16_eager "$python" -m llava_prumerge bench --arch llava-1.5-7b --device cuda --dtype float16 \
    --whole-prefill --batch-size 1,8 --methods none,prumerge,prumerge_plus,prumerge_plus@64,prumerge_plus@128 \
    --warmup 2 --repeats 10 --json "$out/prefill_7b_fp16_eager.json"
step bench_7b_fp16_eager_budgets "$python" -m llava_prumerge bench --arch llava-1.5-7b --device cuda \
    --dtype float16 --batch-size 1,8 --methods none,prumerge,prumerge_plus,prumerge_plus@64,prumerge_plus@128 \
    --warmup 2 --repeats 5 --json "$out/bench_7b_fp16_eager_budgets.json"
# vLLM at full depth (random weights), where the interpreter has vLLM: the README's serving targets
if "$python" -c "import vllm" 2>/dev/null; then
    step vllm_llava_7b "$python" -m llava_prumerge bench --engine vllm --arch llava-1.5-7b --dtype float16 \
        --budgets 64 --batch-size 1,8 --repeats 3 --json "$out/vllm_llava_7b.json"
    step vllm_qwen_7b "$python" -m llava_prumerge bench --engine vllm --arch qwen2.5-vl-7b --dtype bfloat16 \
        --budgets 128 --image-size 1280x720 --batch-size 1,8 --repeats 3 --json "$out/vllm_qwen_7b.json"
else
    echo "gpu_checks: $python has no vLLM; the vLLM benchmarks were not run" | tee "$out/vllm.txt"
fi
exit $status
