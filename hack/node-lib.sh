# shellcheck shell=bash disable=SC2034 # variables here are used by the scripts that source this file
# Shared settings of hack/node-up.sh and hack/node-down.sh. Source it after lib.sh.

DIR="${KYBERNATE_NODE_DIR}"
# Machine-wide: the lock and the folder of the node that owns the machine's node resources.
NODE_HOST_DIR=/run/kybernate-node
NODE_BRIDGE=kyb0
# iptables nat chains of the node (API server address for pods).
NODE_CHAIN=KYBERNATE-NODE
CNI_NETWORK=kybernate-node
CNI_BIN_DIR=/usr/lib/cni
PAUSE_IMAGE=docker.io/kybernate/pause:dev
# What the CNI library and the CRI plugin keep outside the node's folder.
CNI_CACHE_DIR=/var/lib/cni/results
NETNS_DIR=/run/netns
# Fixed in containerd 1.6 and its runc shim: shim sockets and runc's state.
CONTAINERD_RUN_DIR=/run/containerd

# daemon_running NAME BINARY: the node's daemon NAME (pid in run/NAME.pid) is alive.
daemon_running() {
  local pid
  pid="$(cat "${DIR}/run/$1.pid" 2>/dev/null)" || return 1
  pid_matches "${pid}" "$2" "${DIR}/"
}

# node_running_in FOLDER: the kubelet or containerd of the node in FOLDER is alive.
node_running_in() {
  local d="$1" pid
  for name in kubelet containerd; do
    pid="$(cat "${d}/run/${name}.pid" 2>/dev/null)" || continue
    [[ "$(proc_state "${pid}")" =~ ^[^ZX]$ ]] || continue
    { tr '\0' ' ' <"/proc/${pid}/cmdline"; } 2>/dev/null | grep -qF -- "${d}/" && return 0
  done
  return 1
}
