#!/usr/bin/env bash
# Every GPU check in one run, for a lent H100/H200 (about 10 minutes at most; each step has its
# own time limit, and every log lands in $OUT, or ./gpu_out): the environment; the GPU tests
# (CUDA sizing, a real out-of-memory back-off, AMP, compile=True, NCCL under torchrun); the
# sampling benchmark at GPU sizes with baal and torch-uncertainty (families: GPU_CHECK_MODELS,
# default all four); compile=True on the transformer (GPU_CHECK_COMPILE=1); the per-call costs
# part by part, with a host profile (GPU_CHECK_PROFILE=0 skips it); the whole suite with CUDA
# visible (GPU_CHECK_SUITE=0 skips it). The pass-size sweep is
# benchmarks/sweep_pass_size.py --device cuda.
# It uses the machine's own torch: the repository is put on PYTHONPATH, and nothing is installed
# but the wheels in .whl/ (baal, structlog, torch-uncertainty for the benchmark), if any.
#
#   bash benchmarks/gpu_check.sh
set -u
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MCDROP_EXAMPLE_QUICK=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
        .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

step() { echo; echo "== $1 ($(date +%T))"; }

step environment
{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    python3 -c "import torch, sys; print('python', sys.version.split()[0], '| torch', \
torch.__version__, '| CUDA', torch.version.cuda, '| cuDNN', torch.backends.cudnn.version(), \
'|', torch.cuda.get_device_name(0), torch.cuda.get_device_properties(0).total_memory >> 20, 'MiB')"
    python3 -m pip list 2>/dev/null | grep -iE "^(torch|transformers|lightning|torchmetrics|timm|numpy|scipy|scikit-learn|hypothesis|pytest) "
} 2>&1 | tee "$OUT/env.txt"

step "GPU tests"
timeout 100 python3 -m pytest -m gpu -v -p no:cacheprovider -p no:benchmark tests/sampling/test_gpu.py \
    tests/sampling/test_strategies.py >"$OUT/gpu_tests.txt" 2>&1
grep -E "PASSED|FAILED|ERROR|Error|assert|passed|failed" "$OUT/gpu_tests.txt" | tail -40

step "sampling benchmark, GPU sizes"
timeout 240 python3 benchmarks/bench_sampling.py --device cuda \
    --models "${GPU_CHECK_MODELS:-conv,mlp,transformer,eager_transformer}" \
    --json "$OUT/bench_sampling_cuda.json" >"$OUT/bench_sampling_cuda.txt" 2>&1
grep -E "^\[|auto chose|  (vmap|replicate|auto|auto e2e|deterministic) |^  (NOT met|met) " \
    "$OUT/bench_sampling_cuda.txt"

if [ "${GPU_CHECK_COMPILE:-0}" = 1 ]; then
    step "transformer bf16 with compile=True"
    timeout 80 python3 benchmarks/bench_sampling.py --device cuda --models transformer --dtype bf16 \
        --compile --repeats 3 --json "$OUT/bench_compile_cuda.json" >"$OUT/bench_compile_cuda.txt" 2>&1
    grep -E "replicate|auto|compile|TFLOP|naive|determ" "$OUT/bench_compile_cuda.txt"
fi

if [ "${GPU_CHECK_PROFILE:-1}" = 1 ]; then
    step "per-call costs, part by part, and where the host time of a call goes"
    for config in "conv fp32" "mlp fp32" "mlp bf16" "eager_transformer bf16"; do
        set -- $config
        timeout 60 python3 benchmarks/profile_fixed_costs.py --device cuda --model "$1" \
            --dtype "$2" --repeats 9 --cprofile 10 >>"$OUT/profile_fixed_costs_cuda.txt" 2>&1
    done
    grep -E "^torch|x pass" "$OUT/profile_fixed_costs_cuda.txt"
fi

if [ "${GPU_CHECK_SUITE:-1}" = 1 ]; then
    step "whole suite with CUDA visible"
    timeout 200 python3 -m pytest -q -rfE --tb=line -p no:cacheprovider -p no:benchmark -n 14 \
        -m "not gpu" >"$OUT/suite.txt" 2>&1
    grep -E "^(FAILED|ERROR)|Error:" "$OUT/suite.txt" | head -30
    tail -3 "$OUT/suite.txt"
fi
step done
