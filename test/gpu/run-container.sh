#!/usr/bin/env bash
# Runs the GPU container suite (container_suite.py) on a GPU machine, as root, in one go:
# unpacks what pack-container.sh carried into /tmp/kyb, then the suite brings up etcd +
# kube-apiserver, a private containerd with our shim, runc and CRIU, and kybernate-agent, and
# runs the experiments. Results (results.json, suite.log, logs) go to $OUT.
#
#   GPU_CARRY=.gpucarry OUT=/some/dir bash .gpucarry/scripts/run-container.sh [suite args]
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
carry=${GPU_CARRY:-$(cd "$here/.." && pwd)}
out=${OUT:-/tmp/kyb-out}
work=/tmp/kyb
mkdir -p "$out"
rm -rf "$work" && mkdir -p "$work/bin" "$work/lib"
t0=$SECONDS

for f in "$carry"/*.xz; do
	[[ $f == *.tar.xz ]] && continue
	(xz -dc "$f" >"$work/bin/$(basename "$f" .xz)" && chmod +x "$work/bin/$(basename "$f" .xz)") &
done
tar -C "$work" -xJf "$carry/criu.tar.xz" &
wait
# runc links libseccomp; the machine may lack it.
if ! ldconfig -p | grep -q 'libseccomp\.so\.2 '; then
	cp "$carry/libseccomp.so.2" "$work/lib/" && export LD_LIBRARY_PATH=$work/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
# The agent dlopens libnvidia-ml.so.1 and libcuda.so.1: the driver's own copies.
if ! ldconfig -p | grep -q 'libcuda\.so\.1 '; then
	for d in /usr/local/nvidia/lib64 /usr/lib/x86_64-linux-gnu /usr/lib64; do
		[[ -e $d/libcuda.so.1 ]] && export LD_LIBRARY_PATH=$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} && break
	done
fi
echo "[run-container] unpacked in $((SECONDS - t0))s: $(ls "$work/bin" | tr '\n' ' ')"
"$work/criu/bin/criu" --version | head -1 || echo "[run-container] criu does not run"
export PYTHONUNBUFFERED=1
exec python3 "$here/container_suite.py" --bin "$work/bin" --criu "$work/criu/bin" --pki "$carry/pki" --crds "$carry/crds.json" \
	--work "$work" --out "$out" "$@"
