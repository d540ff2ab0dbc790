#!/usr/bin/env bash
# Starts or stops a private containerd daemon for the e2e tests: its own root, state, socket
# and config under one folder, so it never meets the host's containerd.
#
# Shims inherit the daemon's PATH, so `up` puts first on it the folder with our shim
# (containerd-shim-kybernate-v1 for runtime io.containerd.kybernate.v1) and the folder with
# CRIU >= 4.1 from hack/install-runtime.sh (runc finds criu on PATH), when they exist.
#
# Usage: hack/containerd.sh up|down
# Env:   KYBERNATE_CONTAINERD_DIR (default .cache/containerd), KYBERNATE_SHIM_DIR (default bin/),
#        KYBERNATE_CRIU (a criu binary to use instead of hack/install-runtime.sh's),
#        KYBERNATE_SHIM_CONFIG (passed to the shims: their settings file, see shim/README.md)
# `up` prints the socket path.
set -euo pipefail

# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DIR="${KYBERNATE_CONTAINERD_DIR:-${KYBERNATE_CACHE_DIR}/containerd}"
mkdir -p "${DIR}"
DIR="$(cd "${DIR}" && pwd -P)"
SOCKET="${DIR}/containerd.sock"
PIDFILE="${DIR}/containerd.pid"
CONTAINERD="$(command -v containerd || true)"
[[ -n "${CONTAINERD}" ]] || die "containerd is not installed (Debian: apt-get install containerd)"

case "${1:-}" in
up)
  if [[ -f "${PIDFILE}" ]] && pid_matches "$(<"${PIDFILE}")" "${CONTAINERD}" "${DIR}/"; then
    echo "${SOCKET}"
    exit 0
  fi
  cat >"${DIR}/config.toml" <<TOML
version = 2
root = "${DIR}/root"
state = "${DIR}/state"
# The CRI plugin is the kubelet's business; the e2e tests talk to containerd directly.
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "${SOCKET}"
[ttrpc]
  address = "${SOCKET}.ttrpc"
[debug]
  address = ""
TOML
  path="${PATH}"
  criu_dir="${KYBERNATE_CACHE_DIR}/runtime/criu/bin"
  # KYBERNATE_CRIU (a binary named criu) replaces it, as in test/e2e.
  [[ -n "${KYBERNATE_CRIU:-}" ]] && criu_dir="$(dirname "${KYBERNATE_CRIU}")"
  [[ -x "${criu_dir}/criu" ]] && path="${criu_dir}:${path}"
  shim_dir="${KYBERNATE_SHIM_DIR:-${KYBERNATE_ROOT}/bin}"
  [[ -d "${shim_dir}" ]] && path="$(cd "${shim_dir}" && pwd -P):${path}"
  PATH="${path}" setsid "${CONTAINERD}" --config "${DIR}/config.toml" >"${DIR}/containerd.log" 2>&1 </dev/null &
  echo $! >"${PIDFILE}"
  for _ in $(seq 100); do
    [[ -S "${SOCKET}" ]] && { log "containerd up (pid $(<"${PIDFILE}"), log ${DIR}/containerd.log)"; echo "${SOCKET}"; exit 0; }
    sleep 0.1
  done
  die "containerd did not open ${SOCKET}; see ${DIR}/containerd.log"
  ;;
down)
  [[ -f "${PIDFILE}" ]] || exit 0
  pid="$(<"${PIDFILE}")"
  if pid_matches "${pid}" "${CONTAINERD}" "${DIR}/"; then
    kill -TERM "${pid}"
    for _ in $(seq 100); do pid_matches "${pid}" "${CONTAINERD}" "${DIR}/" || break; sleep 0.1; done
    pid_matches "${pid}" "${CONTAINERD}" "${DIR}/" && kill -KILL "${pid}"
  fi
  rm -f "${PIDFILE}"
  log "containerd stopped"
  ;;
*) die "usage: $0 up|down" ;;
esac
