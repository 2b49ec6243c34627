#!/usr/bin/env bash
# One short check on a CUDA machine (about 4 minutes): the environment, the CUDA tests, and the SVI-overhead
# benchmark with --device cuda. It installs nothing from the network and goes on past what fails.
#
#   bash benchmarks/gpu_check.sh            # output also written to $OUT (or outputs/gpu_check when unset)
#
# Environment: DEVICE (default cuda; cpu to try the script), PYTHON (default: python3, else python), STEPS / ROUNDS / WARMUP (benchmark settings),
# ONLY (benchmark pillars, default all), BENCH_TIMEOUT / TEST_TIMEOUT (seconds).
set -u
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-outputs/gpu_check}"
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu_check.log"
: >"$LOG"
PY="${PYTHON:-$(command -v python3 || command -v python)}"
STEPS="${STEPS:-30}" ROUNDS="${ROUNDS:-5}" WARMUP="${WARMUP:-5}" ONLY="${ONLY:-optim,vae,gan,rbm,dbm}"
BENCH_TIMEOUT="${BENCH_TIMEOUT:-200}" TEST_TIMEOUT="${TEST_TIMEOUT:-90}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # dgm_ppl from this tree, installed or not

say() { echo "== $*" | tee -a "$LOG"; }
run() { "$@" 2>&1 | tee -a "$LOG"; return "${PIPESTATUS[0]}"; }

say "machine ($(date -u +%FT%TZ))"
run nvidia-smi || say "nvidia-smi not available"
say "python: $PY"
run "$PY" -c "
import sys, platform; print(sys.version.split()[0], platform.platform())
for name in ('torch', 'pyro', 'numpy', 'tqdm', 'pytest', 'sklearn', 'arviz', 'rbms'):
    try:
        m = __import__(name); print(f'{name:8s}', getattr(m, '__version__', '?'))
    except Exception as e:
        print(f'{name:8s} MISSING ({type(e).__name__}: {e})')
import torch
print('cuda', torch.version.cuda, 'available', torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')
" || say "python cannot import torch: nothing below can run"

if ! "$PY" -c "import dgm_ppl" >>"$LOG" 2>&1; then
    say "import dgm_ppl failed; trying pip install -e . --no-deps (offline)"
    run "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . || say "install failed"
    run "$PY" -c "import dgm_ppl" || say "dgm_ppl still not importable: see the missing modules above"
fi

say "CUDA tests"
mapfile -t FILES < <(grep -l "cuda" tests/test_*.py)
if "$PY" -c "import pytest" 2>/dev/null; then
    run timeout "$TEST_TIMEOUT" "$PY" -m pytest -q -rs -p no:cacheprovider -k cuda "${FILES[@]}"
    say "pytest exit status $?"
else
    say "pytest missing: CUDA tests skipped"
fi

DEVICE="${DEVICE:-cuda}"
BENCH="$OUT_DIR/svi_overhead_$DEVICE.txt"
say "svi_overhead --device $DEVICE --steps $STEPS --rounds $ROUNDS --warmup $WARMUP --only $ONLY (output: $BENCH)"
timeout "$BENCH_TIMEOUT" "$PY" benchmarks/svi_overhead.py --device "$DEVICE" --steps "$STEPS" --rounds "$ROUNDS" \
    --warmup "$WARMUP" --only "$ONLY" >"$BENCH" 2>&1
status=$?
cat "$BENCH" >>"$LOG"
tail -n 45 "$BENCH"
say "benchmark exit status $status (124: timed out; the lines printed so far are kept)"
say "done; output in $OUT_DIR"
