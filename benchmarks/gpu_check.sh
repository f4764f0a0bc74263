#!/usr/bin/env bash
# The GPU checks, as one command for a machine with an NVIDIA GPU, nvcc and a CUDA build of torch:
# build the CPU + CUDA ops in place with that machine's python3/torch, run the test suite (its `cuda`
# cases run there), then benchmarks/bench_gpu.py (which rewrites its section of benchmarks/RESULTS.md).
#
#   benchmarks/gpu_check.sh [OUTDIR]      # logs, junit XML and RESULTS.md copied to OUTDIR
#
# Pure-Python wheels that the machine lacks (ase) may be put in .whl/; they are installed to /tmp/site.
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${1:-${OUT:-/tmp/boltzgrad_gpu_check}}
mkdir -p "$OUTDIR"
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUTDIR/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUTDIR/gpu.txt"

start=$(date +%s)
if ! BOLTZGRAD_CUDA=1 $PY setup.py -q build_ext --inplace >"$OUTDIR/build.log" 2>&1; then
    tail -40 "$OUTDIR/build.log"
    echo "BUILD FAILED"
    exit 1
fi
echo "build: $(( $(date +%s) - start )) s"

# the test suite: -n with pytest-xdist where it is installed
XDIST=""
$PY -c "import xdist" 2>/dev/null && XDIST="-n 8"
start=$(date +%s)
BOLTZGRAD_EXPECT_CUDA=1 timeout "${TEST_TIMEOUT:-240}" $PY -m pytest -q -p no:cacheprovider $XDIST -rfE \
    --junitxml="$OUTDIR/junit.xml" >"$OUTDIR/tests.log" 2>&1
test_rc=$?
tail -25 "$OUTDIR/tests.log"
echo "tests: rc $test_rc, $(( $(date +%s) - start )) s"
$PY - "$OUTDIR/junit.xml" <<'EOF'
import sys
import xml.etree.ElementTree as ET
try:
    cases = [c for c in ET.parse(sys.argv[1]).iter("testcase") if "cuda" in c.get("name", "")]
except (OSError, ET.ParseError) as exc:
    sys.exit(f"no junit XML: {exc}")
bad = [c.get("name") for c in cases if c.find("failure") is not None or c.find("error") is not None]
skipped = sum(c.find("skipped") is not None for c in cases)
print(f"cuda test cases: {len(cases)}, failed {len(bad)}, skipped {skipped}", *bad[:20], sep="\n  ")
EOF

start=$(date +%s)
timeout "${BENCH_TIMEOUT:-240}" $PY benchmarks/bench_gpu.py ${BENCH_ARGS:-} >"$OUTDIR/bench.log" 2>&1
bench_rc=$?
tail -60 "$OUTDIR/bench.log"
echo "bench: rc $bench_rc, $(( $(date +%s) - start )) s"
cp benchmarks/RESULTS.md "$OUTDIR/RESULTS.md"
exit $(( test_rc != 0 || bench_rc != 0 ))
