#!/usr/bin/env bash
# Runs the CUDA checkpoint suite (cuda_suite.py) on a GPU machine with driver
# 580+ and PyTorch, in one go, and leaves cuda-results.md, results.json and
# workers.log in $OUT (default test/gpu/results/out).
#
# The machine needs no Go: build cuda-test elsewhere (x86-64) and carry it:
#   CGO_ENABLED=1 go build -o .gpubin/cuda-test ./cuda/cmd/cuda-test
# Extra arguments go to cuda_suite.py (e.g. --sizes 1,8 --budget 200).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${CUDA_TEST_BIN:-$root/.gpubin/cuda-test}
out=${OUT:-$here/results/out}
mkdir -p "$out"

if [[ ! -x $bin ]]; then
	echo "run-cuda.sh: no cuda-test at $bin; build it with CGO_ENABLED=1 go build -o .gpubin/cuda-test ./cuda/cmd/cuda-test" >&2
	exit 2
fi

# cuda-test dlopens libcuda.so.1. Use the driver's own copy, never the
# toolkit's stub or forward-compatibility library.
if ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1 '; then
	for d in /usr/local/nvidia/lib64 /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/local/nvidia/lib; do
		if [[ -e $d/libcuda.so.1 ]]; then
			export LD_LIBRARY_PATH=$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
			break
		fi
	done
fi

nvidia-smi --query-gpu=index,name,uuid,driver_version,memory.total,memory.used --format=csv || true
"$bin" info || echo "run-cuda.sh: cuda-test info failed" >&2

export PYTHONUNBUFFERED=1
exec python3 "$here/cuda_suite.py" --bin "$bin" --out "$out" "$@"
