#!/usr/bin/env bash
# make demo: a local control plane with simulated GPU nodes (kwok), the node agent in
# --simulate mode serving them, and kybernate-scheduler; applies the example workload of
# docs/examples and prints a timeline of what happens to the pods.
#
# Nothing here touches a GPU: the agent simulates each node's GPUs and says so in every
# GPUNode's Simulated condition.
#
# On a machine with an NVIDIA GPU (nvidia-smi lists one, root) it runs the same acts on a real
# node instead: hack/demo-gpu.sh (a kubelet with containerd's CRI and our shim, the agent on the
# real driver, PyTorch pods). KYBERNATE_DEMO_SIMULATED=1 forces the simulated demo there.
#
# Usage: hack/demo.sh [up|down]
set -euo pipefail

# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ "${1:-up}" == up && "${KYBERNATE_DEMO_SIMULATED:-0}" != 1 ]] && ((EUID == 0)) &&
  nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
  log "an NVIDIA GPU is here: the demo runs on a real node (KYBERNATE_DEMO_SIMULATED=1 for the simulated one)"
  exec "${KYBERNATE_ROOT}/hack/demo-gpu.sh"
fi

# Four nodes: the workload goes to three, the fourth (cordoned until then) is for the preemption act.
export KYBERNATE_NODES="${KYBERNATE_NODES:-4}"
export KYBERNATE_GPUS_PER_NODE="${KYBERNATE_GPUS_PER_NODE:-8}"
BIN="${KYBERNATE_ROOT}/bin"
NAMESPACE=kybernate-demo
COMPONENTS=(kybernate-scheduler kybernate-agent)

mkdir -p "${KYBERNATE_CLUSTER_DIR}"
DIR="$(cd "${KYBERNATE_CLUSTER_DIR}" && pwd -P)"
RUN="${DIR}/run" LOGS="${DIR}/logs"

# stop_components: ends the components this script started, by their pid files.
stop_components() {
  local name pid
  for name in "${COMPONENTS[@]}"; do
    [[ -f "${RUN}/${name}.pid" ]] || continue
    pid="$(<"${RUN}/${name}.pid")"
    if pid_matches "${pid}" "${BIN}/${name}" "${DIR}/"; then
      log "stopping ${name} (pid ${pid})"
      kill -TERM "${pid}" 2>/dev/null || true
      for _ in $(seq 150); do pid_matches "${pid}" "${BIN}/${name}" "${DIR}/" || break; sleep 0.1; done
      kill -KILL "${pid}" 2>/dev/null || true
    fi
    rm -f "${RUN}/${name}.pid"
  done
}

if [[ "${1:-up}" == down ]]; then
  stop_components
  "${KYBERNATE_ROOT}/hack/cluster-down.sh"
  exit 0
fi

for name in "${COMPONENTS[@]}" kubectl-kybernate; do
  [[ -x "${BIN}/${name}" ]] || die "${BIN}/${name} is missing: run make build"
done

KUBECONFIG="$("${KYBERNATE_ROOT}/hack/cluster-up.sh")"
export KUBECONFIG
KUBECTL="${KYBERNATE_BIN_DIR}/kubectl"
stop_components

# The scheduler runs with the shipped profile, pointed at this cluster.
SCHED_CONFIG="${DIR}/kybernate-scheduler.yaml"
{
  cat "${KYBERNATE_ROOT}/manifests/scheduler/config.yaml"
  printf 'clientConnection:\n  kubeconfig: %s\n' "${KUBECONFIG}"
} >"${SCHED_CONFIG}"
"${KUBECTL}" create namespace kybernate-system --dry-run=client -o yaml | "${KUBECTL}" apply -f - >/dev/null

launch() {
  local name="$1"; shift
  setsid "${BIN}/${name}" "$@" >"${LOGS}/${name}.log" 2>&1 < /dev/null &
  echo $! >"${RUN}/${name}.pid"
  log "started ${name} (pid $!, log ${LOGS}/${name}.log)"
}
# The simulated nodes share one folder of checkpoint images (migrations: docs/migration.md).
mkdir -p "${RUN}/images"
launch kybernate-agent --simulate --kubeconfig "${KUBECONFIG}" --simulate-node-selector type=kwok \
  --metrics-bind-address 127.0.0.1:0 --socket "${RUN}/agent.sock" --checkpoint-dir "${RUN}/images"
launch kybernate-scheduler --config "${SCHED_CONFIG}" \
  --controllers-config "${KYBERNATE_ROOT}/manifests/scheduler/controllers.yaml" --secure-port 0 --v=2

# Every GPU node reports its (simulated) GPUs before the workload arrives.
for _ in $(seq 120); do
  ready=$("${KUBECTL}" get gpunodes -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' 2>/dev/null | grep -c True || true)
  ((ready >= KYBERNATE_NODES)) && break
  sleep 0.5
done
((ready >= KYBERNATE_NODES)) || die "only ${ready} of ${KYBERNATE_NODES} GPUNodes are Ready; see ${LOGS}/kybernate-agent.log"
echo
echo "== ${KYBERNATE_NODES} simulated GPU nodes"
"${KUBECTL}" get gpunodes
"${KUBECTL}" get nodes -o custom-columns='NODE:.metadata.name,GPU-MODEL:.metadata.labels.kybernate\.io/gpu-model,kybernate.io/gpu:.status.allocatable.kybernate\.io/gpu'

ACT2_NODE="kwok-gpu-$((KYBERNATE_NODES - 1))"
"${KUBECTL}" cordon "${ACT2_NODE}" >/dev/null
"${KUBECTL}" apply -f "${KYBERNATE_ROOT}/manifests/priorityclasses.yaml" >/dev/null

start=$(date +%s.%N)
elapsed() { awk -v s="${start}" -v n="$(date +%s.%N)" 'BEGIN { printf "%7.2fs", n - s }'; }
declare -A last=()
# timeline UNTIL TIMEOUT: prints every change of a demo pod's node, GPUs and GPU state until
# the command UNTIL succeeds or TIMEOUT seconds pass.
timeline() {
  local until="$1" deadline=$((SECONDS + $2)) name node gpus state phase line
  while :; do
    # '|' and not a tab: read collapses runs of whitespace separators, and fields may be empty.
    while IFS='|' read -r name node gpus state phase; do
      [[ -n "${name}" ]] || continue
      line="${node:-<pending>} ${gpus} ${state:-${gpus:+Running}} ${phase}"
      [[ "${last[${name}]:-}" == "${line}" ]] && continue
      last[${name}]="${line}"
      if [[ -z "${node}" ]]; then
        printf '%s  %-12s pending\n' "$(elapsed)" "${name}"
      else
        printf '%s  %-12s %-11s on %-11s GPUs %s\n' "$(elapsed)" "${name}" "${state:-Running}" "${node}" "${gpus//GPU-/}"
      fi
    done < <("${KUBECTL}" get pods -n "${NAMESPACE}" -o jsonpath='{range .items[*]}{.metadata.name}|{.spec.nodeName}|{.metadata.annotations.kybernate\.io/gpus}|{.metadata.annotations.kybernate\.io/state}|{.status.phase}{"\n"}{end}' 2>/dev/null)
    eval "${until}" && return 0
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}
# events_in_order NS POD: the pod's Events, oldest first. The scheduler's events (events.k8s.io)
# carry eventTime and a series, the agent's (core API) lastTimestamp: each is sorted by the time
# it last happened, whichever field holds it. The core API has whole seconds only: such an event
# goes after the finer-stamped events of its second (the agent answers the scheduler's).
events_in_order() {
  "${KUBECTL}" get events -n "$1" --field-selector "involvedObject.name=$2" -o jsonpath='{range .items[*]}{.series.lastObservedTime}|{.lastTimestamp}|{.eventTime}|{.firstTimestamp}|{.metadata.creationTimestamp}|{.type}|{.reason}|{.source.component}|{.reportingComponent}|{.message}{"\n"}{end}' |
    awk -F'|' '
      function set(v) { return v != "" && v != "null" }   # jsonpath prints an unset time as null
      {
        t = ""; for (i = 1; i <= 5; i++) if (set($i)) { t = $i; break }
        key = t; if (key ~ /:[0-9][0-9]Z$/) sub(/Z$/, ".999999Z", key)   # whole seconds: after the events of that second
        from = set($8) ? $8 : $9
        msg = $10; for (i = 11; i <= NF; i++) msg = msg "|" $i
        printf "%s\t%-27s %-8s %-16s %-22s %s\n", key, t, $6, $7, from, msg
      }' | LC_ALL=C sort -s -t$'\t' -k1,1 | cut -f2- | { printf '%-27s %-8s %-16s %-22s %s\n' TIME TYPE REASON FROM MESSAGE; cat; }
}
all_placed() { ! "${KUBECTL}" get pods -n "${NAMESPACE}" -o jsonpath='{range .items[*]}{.spec.nodeName}{"\n"}{end}' | grep -qx ''; }
state_of() { "${KUBECTL}" get pod -n "${NAMESPACE}" "$1" -o jsonpath='{.metadata.annotations.kybernate\.io/state}' 2>/dev/null; }
suspended_any() { "${KUBECTL}" get pods -n "${NAMESPACE}" -o jsonpath='{.items[*].metadata.annotations.kybernate\.io/state}' | grep -qw Suspended; }
none_suspended() { ! "${KUBECTL}" get pods -n "${NAMESPACE}" -o jsonpath='{.items[*].metadata.annotations.kybernate\.io/state}' | grep -qwE 'Suspended|Suspending|Resuming'; }

echo
echo "== act 1: placement. docs/examples/workload.yaml: whole GPUs, 20Gi shares, 2-GPU pods"
"${KUBECTL}" apply -f "${KYBERNATE_ROOT}/docs/examples/workload.yaml" >/dev/null
timeline all_placed 120 || log "not every pod placed; kubectl -n ${NAMESPACE} describe pod shows why"

echo
echo "== act 2: preemption by suspension on ${ACT2_NODE}"
echo "   eight low-priority pods take 50Gi on each of its 8 GPUs (docs/examples/preemption-batch.yaml)"
"${KUBECTL}" uncordon "${ACT2_NODE}" >/dev/null
"${KUBECTL}" apply -f "${KYBERNATE_ROOT}/docs/examples/preemption-batch.yaml" >/dev/null
timeline all_placed 60 || true
echo "   a high-priority pod needs 40Gi on one GPU: the cheapest batch pod is suspended, not deleted"
"${KUBECTL}" apply -f "${KYBERNATE_ROOT}/docs/examples/preemption-interactive.yaml" >/dev/null
timeline 'suspended_any && all_placed' 120 || log "no suspension seen; see ${LOGS}/kybernate-scheduler.log"
# The agent reports the parked pod in the GPUNode a moment after it marks the pod Suspended.
for _ in $(seq 50); do
  [[ -n "$("${KUBECTL}" get gpunode "${ACT2_NODE}" -o jsonpath='{.status.suspendedPods[*].name}')" ]] && break
  sleep 0.2
done
echo "   kubectl kybernate gpus ${ACT2_NODE} (the kubectl plugin): the suspended pod's memory is parked in host memory"
"${BIN}/kubectl-kybernate" --kubeconfig "${KUBECONFIG}" gpus "${ACT2_NODE}" | sed 's/^/   /'
echo "   the high-priority pod ends: the suspended pod resumes and carries on"
"${KUBECTL}" delete pod -n "${NAMESPACE}" interactive --wait=false >/dev/null
timeline none_suspended 120 || log "no resume seen; see ${LOGS}/kybernate-scheduler.log"

echo
echo "== GPUCheckpoints: what moved, how much, how long"
"${KUBECTL}" get gpucheckpoints -n "${NAMESPACE}" \
  -o custom-columns='NAME:.metadata.name,ACTION:.spec.action,REASON:.spec.reason,PHASE:.status.phase,BYTES:.status.bytesMoved,STEPS:.status.steps[*].name,DURATIONS:.status.steps[*].duration'
echo
echo "== Events of the suspended pod, oldest first"
# The preemption's victim (act 1's pods may have been spread onto unused GPUs too: reason Spread).
victim=$("${KUBECTL}" get gpucheckpoints -n "${NAMESPACE}" -o jsonpath='{.items[?(@.spec.reason=="Preemption")].spec.podName}' | awk '{print $1}')
[[ -n "${victim}" ]] && events_in_order "${NAMESPACE}" "${victim}"
echo
echo "Everything above is simulated: the GPUNodes say Simulated=True and no real GPU was touched."
echo "Try: kubectl --kubeconfig ${KUBECONFIG} get pods,gpunodes,gpucheckpoints -A"
echo "Stop with: make demo-down"
