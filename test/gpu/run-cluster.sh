#!/usr/bin/env bash
# Runs cluster_suite.py (the whole system on this GPU node: issue 19) as root from what
# pack-cluster.sh carried: unpacks into $KYB_WORK (default /tmp/kyb), makes one hard link per
# program of the multi-call binary, runs the suite, and removes what the node left behind
# (its pods' processes, mounts and cgroups). Results go to $OUT: results.json, results.md,
# suite.log, nvml.json, logs.tar.xz. Exits with the suite's status (non-zero when a check failed).
#
#   OUT=/some/dir bash .gpubin/cluster/run-cluster.sh [suite flags, e.g. --scenarios 1,2]
set -uo pipefail

carry=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${OUT:-/tmp/kyb-out}
work=${KYB_WORK:-/tmp/kyb}
mkdir -p "$out"
[[ $EUID -eq 0 ]] || { echo "run-cluster: needs root (kubelet, containerd, runc)" >&2; exit 1; }

# teardown: every process in the node's cgroups and its shims, then the node's mounts.
teardown() {
	local d pid
	for d in /sys/fs/cgroup/kybernate-gpu /sys/fs/cgroup/*/kybernate-gpu; do
		[[ -d $d ]] || continue
		[[ -f $d/cgroup.kill ]] && echo 1 >"$d/cgroup.kill" 2>/dev/null
		find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u | while read -r pid; do kill -9 "$pid" 2>/dev/null; done
	done
	for pid in $(pgrep -f "containerd-shim-kybernate-v1 .*$work/node" ; pgrep -f "containerd-shim-runc-v2 .*$work/node"); do
		kill -9 "$pid" 2>/dev/null
	done
	sleep 1
	awk -v w="$work/" 'index($5, w) == 1 {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do
		umount -l "$m" 2>/dev/null
	done
	for d in /sys/fs/cgroup/kybernate-gpu /sys/fs/cgroup/*/kybernate-gpu; do
		[[ -d $d ]] && find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null
	done
	return 0
}

teardown
rm -rf "$work" && mkdir -p "$work/bin" "$work/lib"
t0=$SECONDS
for b in kyb containerd runc pause; do
	if [[ -x $carry/$b ]]; then # uncompressed (a rehearsal where it was built)
		cp "$carry/$b" "$work/bin/$b"
	else
		(xz -dc "$carry/$b.xz" >"$work/bin/$b" && chmod +x "$work/bin/$b") &
	fi
done
if [[ -s $carry/criu.tar.xz ]]; then # patched to run from /tmp/kyb/criu (pack_criu)
	tar -C "$work" -xJf "$carry/criu.tar.xz" &
fi
# SeaweedFS for scenario 9, left by an earlier call on this machine (test/gpu/pack-weed.sh).
weed=${KYB_WEED_XZ:-$carry/../weed/weed.xz}
if [[ -s $weed ]]; then
	(xz -dc "$weed" >"$work/bin/weed" && chmod +x "$work/bin/weed") &
fi
wait
for p in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl kybernate-scheduler \
	kybernate-agent kybernate-activator containerd-shim-kybernate-v1 containerd-shim-runc-v2 ctr-import; do
	ln "$work/bin/kyb" "$work/bin/$p"
done
if ! ldconfig -p | grep -q 'libseccomp\.so\.2 '; then
	cp "$carry/libseccomp.so.2" "$work/lib/" && export LD_LIBRARY_PATH=$work/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
echo "[run-cluster] unpacked in $((SECONDS - t0))s; $(uname -r); $(nvidia-smi -L 2>/dev/null | head -1)"
# runc, started by the shim under containerd, finds criu on PATH.
[[ -x $work/criu/bin/criu ]] && export PATH=$work/criu/bin:$PATH && echo "[run-cluster] $("$work/criu/bin/criu" --version | head -1)"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
python3 "$carry/repo/test/gpu/cluster_suite.py" --bin "$work/bin" --pki "$carry/pki" --repo "$carry/repo" \
	--work "$work" --out "$out" "$@"
rc=$?
teardown
echo "[run-cluster] suite exit status $rc"
exit "$rc"
