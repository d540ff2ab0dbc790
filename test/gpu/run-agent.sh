#!/usr/bin/env bash
# Runs kybernate-agent against the real GPUs of this machine, in one go: a private control
# plane (etcd + kube-apiserver, no kubelet), a Node and a Pod object, a PyTorch process placed
# in that pod's cgroup, the agent in real mode, then agent_suite.py (inventory vs nvidia-smi,
# two suspend/resume cycles: one over the gRPC socket, one through GPUCheckpoint objects).
# Leaves agent-results.md, results.json and logs in $OUT (default test/gpu/results/out).
#
# The machine needs no Go: run test/gpu/pack-agent.sh on an x86-64 machine with Go and the
# control plane binaries (hack/build-controlplane.sh) and carry .gpubin/agent-run.
#
# Not a secure setup: the API server listens on 127.0.0.1 only, with a throwaway CA and a
# client certificate in system:masters that the agent uses too; meant for an isolated,
# short-lived machine.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
pack=${AGENT_PACK:-$root/.gpubin/agent-run}
out=${OUT:-$here/results/out}
work=${AGENT_WORK:-/tmp/kyb-agent-run}
etcd_port=${ETCD_PORT:-23790}
apiserver_port=${APISERVER_PORT:-26443}
mkdir -p "$out"
out=$(cd "$out" && pwd)
t0=$SECONDS
log() { echo "[run-agent $((SECONDS - t0))s] $*" >&2; }

[[ -d $pack/pki ]] || { log "no $pack; run test/gpu/pack-agent.sh where Go is and carry .gpubin/agent-run"; exit 2; }
rm -rf "$work"
mkdir -p "$work/bin" "$work/logs"
bin=$work/bin

pids=()
cleanup() {
	local rc=$?
	# The API server first, then etcd under it.
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
		kill "${pids[i]}" 2>/dev/null || true
		for _ in {1..50}; do
			kill -0 "${pids[i]}" 2>/dev/null || break
			sleep 0.1
		done
		kill -9 "${pids[i]}" 2>/dev/null || true
		wait "${pids[i]}" 2>/dev/null || true
	done
	for f in etcd kube-apiserver; do
		[[ -f $work/logs/$f.log ]] && tail -n 200 "$work/logs/$f.log" >"$out/$f.log.tail" || true
	done
	log "done rc=$rc"
}
trap cleanup EXIT

# ------------------------------------------------------------------------- binaries
unpack() { # NAME
	if command -v xz >/dev/null; then
		xz -dc "$pack/$1.xz" >"$bin/$1"
	else
		python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"), 1 << 20)' "$pack/$1.xz" "$bin/$1"
	fi
	chmod +x "$bin/$1"
}
for b in etcd kube-apiserver kubectl kybernate-agent agentctl; do
	unpack "$b" &
done
# cuda-test: the raw driver path of the bench (older packs lack it).
if [[ -f $pack/cuda-test.xz ]]; then
	unpack cuda-test &
fi
wait
log "unpacked $(du -sh "$bin" | cut -f1) (xz: $(command -v xz || echo 'none, python lzma'))"

# The agent dlopens libnvidia-ml.so.1 and libcuda.so.1: the driver's own copies.
if ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1 '; then
	for d in /usr/local/nvidia/lib64 /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/local/nvidia/lib; do
		if [[ -e $d/libcuda.so.1 ]]; then
			export LD_LIBRARY_PATH=$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
			break
		fi
	done
fi

# ---------------------------------------------------------------------- control plane
pki=$pack/pki
setsid "$bin/etcd" --name=kyb --data-dir="$work/etcd-data" \
	--listen-client-urls="http://127.0.0.1:$etcd_port" --advertise-client-urls="http://127.0.0.1:$etcd_port" \
	--listen-peer-urls="http://127.0.0.1:$((etcd_port + 1))" --initial-advertise-peer-urls="http://127.0.0.1:$((etcd_port + 1))" \
	--initial-cluster="kyb=http://127.0.0.1:$((etcd_port + 1))" --unsafe-no-fsync=true --log-level=warn \
	</dev/null >"$work/logs/etcd.log" 2>&1 &
pids+=($!)

setsid "$bin/kube-apiserver" \
	--etcd-servers="http://127.0.0.1:$etcd_port" \
	--bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$apiserver_port" \
	--cert-dir="$work/apiserver" \
	--tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
	--client-ca-file="$pki/ca.crt" \
	--authorization-mode=RBAC \
	--service-cluster-ip-range=10.96.0.0/16 \
	--service-account-issuer=https://kubernetes.default.svc.cluster.local \
	--service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
	--endpoint-reconciler-type=none --profiling=false \
	</dev/null >"$work/logs/kube-apiserver.log" 2>&1 &
pids+=($!)

kc=$work/admin.kubeconfig
cat >"$kc" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: gpu
  cluster:
    server: https://127.0.0.1:$apiserver_port
    certificate-authority-data: $(base64 -w0 "$pki/ca.crt")
users:
- name: admin
  user:
    client-certificate-data: $(base64 -w0 "$pki/admin.crt")
    client-key-data: $(base64 -w0 "$pki/admin.key")
contexts:
- name: gpu
  context: {cluster: gpu, user: admin}
current-context: gpu
EOF
kubectl=("$bin/kubectl" --kubeconfig "$kc" --cache-dir "$work/kubectl-cache")

deadline=$((SECONDS + 90))
until [[ $("${kubectl[@]}" get --raw /readyz 2>/dev/null) == ok ]]; do
	for p in "${pids[@]}"; do
		kill -0 "$p" 2>/dev/null || { log "control plane process $p exited"; tail -n 30 "$work"/logs/*.log >&2; exit 1; }
	done
	((SECONDS < deadline)) || { log "kube-apiserver not ready after 90s"; tail -n 30 "$work/logs/kube-apiserver.log" >&2; exit 1; }
	sleep 0.3
done
log "control plane ready ($("$bin/kube-apiserver" --version), $("$bin/etcd" --version | head -1))"

timeout 60 "${kubectl[@]}" apply --server-side -f "$root/manifests/crds" >&2
timeout 60 "${kubectl[@]}" wait --for=condition=Established --timeout=50s crd --all >&2

# -------------------------------------------------------------------------- the suite
# AGENT_SUITE picks the script: agent_suite.py (default) or agent_bench.py (run-agent-bench.sh).
export PYTHONUNBUFFERED=1
set +e
timeout --signal=TERM --kill-after=15 "${SUITE_TIMEOUT:-420}" \
	python3 "$here/${AGENT_SUITE:-agent_suite.py}" --bin "$bin" --kubeconfig "$kc" --work "$work" --out "$out" "$@"
rc=$?
set -e
cp "$work/logs/agent.log" "$out/agent.log" 2>/dev/null || true
exit "$rc"
