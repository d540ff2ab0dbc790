#!/usr/bin/env bash
# Stops the cluster that hack/cluster-up.sh started in KYBERNATE_CLUSTER_DIR
# (default .cache/cluster). Only processes named by the folder's pid files are
# signalled, and only after their executable and command line show they are that
# cluster's. Logs stay in the folder unless --purge is given.
#
# Usage: hack/cluster-down.sh [--purge]
#        hack/cluster-down.sh --after-exit PID   (cluster-up's watchdog: waits for
#                                                 PID to exit, then stops the cluster)
set -euo pipefail

# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PURGE=false
OWNER=""
case "${1:-}" in
  "") ;;
  --purge) PURGE=true ;;
  --after-exit)
    OWNER="${2:-}"
    [[ "${OWNER}" =~ ^[0-9]+$ ]] || die "--after-exit needs a pid"
    ;;
  *) die "usage: $0 [--purge | --after-exit PID]" ;;
esac

[[ -d "${KYBERNATE_CLUSTER_DIR}" ]] || { log "no cluster in ${KYBERNATE_CLUSTER_DIR}"; exit 0; }
DIR="$(cd "${KYBERNATE_CLUSTER_DIR}" && pwd -P)"
RUN="${DIR}/run"

if [[ -n "${OWNER}" ]]; then
  # Runs for the life of a test binary. The start time pins the owner down, so a
  # new process that gets its pid later does not keep the cluster alive.
  owner_start="$(proc_start_time "${OWNER}")"
  while [[ -n "${owner_start}" && "$(proc_start_time "${OWNER}")" == "${owner_start}" &&
    "$(proc_state "${OWNER}")" != Z ]]; do
    sleep 1
  done
  log "owner ${OWNER} exited; stopping the cluster"
fi

exec 8>"${DIR}/.lock"
flock 8

# stop NAME BINARY ARG: stop_daemon for run/NAME.pid.
stop() { stop_daemon "$1" "${RUN}/$1.pid" "$2" "$3"; }

# The watchdog first, unless this is the watchdog: it must not stop itself.
if [[ -z "${OWNER}" ]]; then
  stop watchdog "$(readlink -f "${BASH}")" "cluster-down.sh --after-exit"
else
  rm -f "${RUN}/watchdog.pid"
fi

# A real node of this cluster (hack/node-up.sh) first: its kubelet talks to the API server,
# and --purge must not remove a folder with its mounts in it.
if [[ -d "${DIR}/node" ]]; then
  if ((EUID == 0)); then
    KYBERNATE_NODE_DIR="${DIR}/node" "${KYBERNATE_ROOT}/hack/node-down.sh"
  else
    log "the cluster has a real node in ${DIR}/node: stop it as root with hack/node-down.sh"
  fi
fi

# Dependents before what they depend on.
for name in kwok kube-scheduler kube-controller-manager kube-apiserver etcd; do
  stop "${name}" "${KYBERNATE_BIN_DIR}/${name}" "${DIR}/"
done

if ${PURGE}; then
  if awk -v d="${DIR}/" 'index($5 "/", d) == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo; then
    die "mounts remain under ${DIR} (a real node's?); not removing it"
  fi
  rm -rf "${DIR}"
  log "removed ${DIR}"
else
  log "stopped; logs in ${DIR}/logs"
fi
