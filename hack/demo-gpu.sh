#!/usr/bin/env bash
# make demo on a machine with an NVIDIA GPU (root, driver 580+, python3 with PyTorch): the demo's
# acts on a real node. Builds what test/gpu/pack-cluster.sh packs (one multi-call binary with
# the control plane, the kubelet and Kybernate; containerd 1.7 with CRI; runc) and runs
# test/gpu/run-cluster.sh: a control plane, a kubelet with containerd's CRI and our shim,
# kybernate-agent on the real driver and kybernate-scheduler (kubectl apply -k), then PyTorch
# pods: preemption by suspension next to kube-scheduler's default preemption, time slicing of
# three pods, an agent restart while pods are suspended, the deletion of a suspended pod. The
# timeline is printed as it happens; the report (results.md) at the end. The lent GPU machine,
# which has no Go, runs the same run-cluster.sh from what pack-cluster.sh packed here.
#
# Usage: hack/demo-gpu.sh   (KYBERNATE_DEMO_OUT: where the report goes, default .cache/demo-gpu)
set -euo pipefail

# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

((EUID == 0)) || die "the real-node demo needs root (kubelet, containerd, runc)"
out="${KYBERNATE_DEMO_OUT:-${KYBERNATE_ROOT}/.cache/demo-gpu}"
carry="${KYBERNATE_CACHE_DIR}/gpu-cluster-carry"
GPU_CLUSTER_CARRY="${carry}" "${KYBERNATE_ROOT}/test/gpu/pack-cluster.sh" >/dev/null
rc=0
OUT="${out}" KYB_WORK="${KYBERNATE_CACHE_DIR}/demo-gpu-node" bash "${carry}/run-cluster.sh" "$@" || rc=$?
echo
cat "${out}/results.md"
exit "${rc}"
