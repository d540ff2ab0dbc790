#!/usr/bin/env bash
# Stops the real node of hack/node-up.sh in KYBERNATE_NODE_DIR and removes what it left on the
# host outside that folder: its pods' processes and shims, runc state and shim sockets under
# /run/containerd, network namespaces and the CNI cache, mounts, kubepods cgroups,
# /var/lib/kubelet/device-plugins, /var/log/containers links, the bridge and iptables chains,
# and net.ipv4.ip_forward as it was. Works when the cluster is already gone and when the
# node's folder was removed. The folder itself (logs) stays unless --purge is given.
#
# Usage: hack/node-down.sh [--purge]
#        hack/node-down.sh --after-exit PID   (node-up's watchdog: waits for PID to exit)
set -euo pipefail

# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=hack/node-lib.sh
source "${KYBERNATE_ROOT}/hack/node-lib.sh"

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
((EUID == 0)) || die "needs root"

[[ -d "${DIR}" ]] && DIR="$(cd "${DIR}" && pwd -P)"

if [[ -n "${OWNER}" ]]; then
  owner_start="$(proc_start_time "${OWNER}")"
  while [[ -n "${owner_start}" && "$(proc_start_time "${OWNER}")" == "${owner_start}" &&
    "$(proc_state "${OWNER}")" != Z ]]; do
    sleep 1
  done
  log "owner ${OWNER} exited; stopping the node"
fi

mkdir -p "${NODE_HOST_DIR}"
exec 8>"${NODE_HOST_DIR}/lock"
flock 8

# The host's resources are this node's only while the machine's owner file names it.
OWNS_HOST=false
if [[ -s "${NODE_HOST_DIR}/owner" && "$(<"${NODE_HOST_DIR}/owner")" == "${DIR}" ]]; then
  OWNS_HOST=true
fi

# stop NAME BINARY [ARG]: stop_daemon for run/NAME.pid (ARG defaults to the node's folder).
stop() { stop_daemon "$1" "${DIR}/run/$1.pid" "$2" "${3:-${DIR}/}"; }

if [[ -z "${OWNER}" ]]; then
  stop watchdog "$(readlink -f "${BASH}")" "node-down.sh --after-exit"
else
  rm -f "${DIR}/run/watchdog.pid"
fi
stop kubelet "${KYBERNATE_BIN_DIR}/kubelet"

# The node's containers and pod sandboxes, by id, before anything forgets them.
ids=()
if [[ -d "${DIR}/containerd" ]]; then
  for d in "${DIR}"/containerd/state/io.containerd.runtime.v2.task/k8s.io/* \
    "${DIR}"/containerd/{root,state}/io.containerd.grpc.v1.cri/sandboxes/*; do
    [[ -d "${d}" ]] && ids+=("${d##*/}")
  done
fi

# Every container goes while containerd still knows it: its task killed and deleted (the shim
# exits and removes its socket and runc state), then the container and its snapshot.
SOCKET="${DIR}/containerd.sock"
CONTAINERD="$(command -v containerd || true)"
if [[ -n "${CONTAINERD}" ]] && daemon_running containerd "${CONTAINERD}"; then
  ctr_() { timeout 30 ctr --address "${SOCKET}" -n k8s.io "$@"; }
  for id in $(ctr_ tasks ls -q 2>/dev/null || true); do
    out="$(ctr_ tasks delete --force "${id}" 2>&1)" || log "could not delete task ${id}: ${out}"
  done
  for id in $(ctr_ containers ls -q 2>/dev/null || true); do
    out="$(ctr_ containers delete "${id}" 2>&1)" || log "could not delete container ${id}: ${out}"
  done
fi
[[ -n "${CONTAINERD}" ]] && stop containerd "${CONTAINERD}"

# Whatever survived: shims of this node's containerd and the processes in its pods' cgroups.
for proc in /proc/[0-9]*; do
  cmdline="$({ tr '\0' ' ' <"${proc}/cmdline"; } 2>/dev/null || true)"
  if [[ "${cmdline}" == *containerd-shim*"-address ${SOCKET} "* ]]; then
    log "killing leftover shim ${proc#/proc/}"
    kill -KILL "${proc#/proc/}" 2>/dev/null || true
  fi
done

# runc state and shim sockets of the node's containers (containerd 1.6 names a shim's socket
# by the sha256 of "<containerd address>/<namespace>/<id>").
for id in "${ids[@]}"; do
  rm -rf "${CONTAINERD_RUN_DIR}/runc/k8s.io/${id}"
  rm -f "${CONTAINERD_RUN_DIR}/s/$(printf '%s' "${SOCKET}/k8s.io/${id}" | sha256sum | cut -d' ' -f1)"
done
rmdir "${CONTAINERD_RUN_DIR}/runc/k8s.io" "${CONTAINERD_RUN_DIR}/runc" "${CONTAINERD_RUN_DIR}/s" \
  "${CONTAINERD_RUN_DIR}" 2>/dev/null || true

# Network namespaces the CRI plugin made for the node's pods, named in the CNI cache (entries
# <network>-<sandbox id>-<interface>, for our network and for CRI's loopback).
for id in "${ids[@]}"; do
  for cached in "${CNI_CACHE_DIR}"/*-"${id}"-*; do
    [[ -f "${cached}" ]] || continue
    while read -r netns; do
      if [[ "${netns}" == */netns/cni-* && -e "${netns}" ]]; then
        umount "${netns}" 2>/dev/null || umount -l "${netns}" 2>/dev/null || true
        rm -f "${netns}"
      fi
    done < <(grep -o '"sandbox":"[^"]*"' "${cached}" | cut -d'"' -f4 | sort -u)
    rm -f "${cached}"
  done
done

# Mounts under the node's folder (the kubelet's root and volumes, rootfs, shm), deepest first.
if [[ -d "${DIR}" ]]; then
  while read -r mnt; do
    umount "${mnt}" 2>/dev/null || umount -l "${mnt}" 2>/dev/null || log "could not unmount ${mnt}"
  done < <(awk -v d="${DIR}/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
fi

# mounted_under PATH: something is mounted at or below PATH.
mounted_under() { awk -v d="$1/" 'index($5 "/", d) == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo; }

if ${OWNS_HOST}; then
  # kubepods cgroups of every hierarchy: processes killed, then the folders, deepest first.
  for root in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
    [[ -d "${root}" ]] || continue
    while read -r pid; do
      kill -KILL "${pid}" 2>/dev/null || true
    done < <(find "${root}" -name cgroup.procs -exec cat {} + 2>/dev/null)
    for _ in 1 2 3 4 5 6 7 8 9 10; do
      find "${root}" -depth -type d -exec rmdir {} + 2>/dev/null || true
      [[ -d "${root}" ]] || break
      sleep 0.2
    done
    [[ -d "${root}" ]] && log "could not remove ${root}"
  done

  HAD_VAR_LIB_KUBELET=true HAD_DEVICE_PLUGINS=true HAD_VAR_LOG_CONTAINERS=true HAD_VAR_LOG_PODS=true
  HAD_VAR_LIB_CNI=true HAD_RUN_NETNS=true HAD_RUN_KYBERNATE=true IP_FORWARD=""
  # shellcheck source=/dev/null
  [[ -s "${NODE_HOST_DIR}/host.env" ]] && source "${NODE_HOST_DIR}/host.env"

  # The kubelet keeps its device plugin socket here whatever its root folder is.
  ${HAD_DEVICE_PLUGINS} || rm -rf /var/lib/kubelet/device-plugins
  if ! ${HAD_VAR_LIB_KUBELET} && ! mounted_under /var/lib/kubelet; then rm -rf /var/lib/kubelet; fi
  if [[ -d /var/log/containers ]]; then
    find /var/log/containers -maxdepth 1 -type l -lname "${DIR}/*" -delete 2>/dev/null || true
    ${HAD_VAR_LOG_CONTAINERS} || rmdir /var/log/containers 2>/dev/null || true
  fi
  ${HAD_VAR_LOG_PODS} || rmdir /var/log/pods 2>/dev/null || true
  if ! ${HAD_VAR_LIB_CNI}; then
    rmdir "${CNI_CACHE_DIR}" /var/lib/cni 2>/dev/null || true
  fi
  ${HAD_RUN_NETNS} || rmdir "${NETNS_DIR}" 2>/dev/null || true
  # The agent DaemonSet's socket folder (a hostPath), unless it was there before or someone
  # still serves on it.
  if ! ${HAD_RUN_KYBERNATE} && [[ -d /run/kybernate ]]; then
    if [[ -S /run/kybernate/agent.sock ]] && ! ss -Hxl | grep -qF /run/kybernate/agent.sock; then
      rm -f /run/kybernate/agent.sock
    fi
    rmdir /run/kybernate 2>/dev/null || true
  fi

  # The kubelet's own chains (KUBE-FIREWALL, KUBE-KUBELET-CANARY, KUBE-IPTABLES-HINT), unless
  # the host had such chains before the node.
  if ! ${HAD_KUBE_CHAINS:-true}; then
    for cmd in iptables ip6tables; do
      command -v "${cmd}" >/dev/null || continue
      for table in filter nat mangle; do
        while read -r rule; do
          # shellcheck disable=SC2086 # a rule as iptables -S prints it, split into its words
          "${cmd}" -w -t "${table}" -D ${rule#-A } 2>/dev/null || true
        done < <("${cmd}" -w -t "${table}" -S 2>/dev/null | grep -E '^-A [A-Z]+ .*-j KUBE-' || true)
        for chain in $("${cmd}" -w -t "${table}" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ { print $2 }'); do
          "${cmd}" -w -t "${table}" -F "${chain}" 2>/dev/null || true
        done
        for chain in $("${cmd}" -w -t "${table}" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ { print $2 }'); do
          "${cmd}" -w -t "${table}" -X "${chain}" 2>/dev/null || log "could not remove ${cmd} chain ${table}/${chain}"
        done
      done
    done
  fi

  ip link del "${NODE_BRIDGE}" 2>/dev/null || true
  for hook in PREROUTING OUTPUT; do
    while iptables -w -t nat -D "${hook}" -j "${NODE_CHAIN}" 2>/dev/null; do :; done
  done
  while iptables -w -t nat -D POSTROUTING -j "${NODE_CHAIN}-POST" 2>/dev/null; do :; done
  for chain in "${NODE_CHAIN}" "${NODE_CHAIN}-POST"; do
    if iptables -w -t nat -F "${chain}" 2>/dev/null; then iptables -w -t nat -X "${chain}"; fi
  done
  [[ -n "${IP_FORWARD}" ]] && sysctl -qw "net.ipv4.ip_forward=${IP_FORWARD}"

  rm -f "${NODE_HOST_DIR}/owner" "${NODE_HOST_DIR}/host.env"
fi
# No node owns the machine any more: the lock goes too.
if [[ ! -e "${NODE_HOST_DIR}/owner" ]]; then
  rm -f "${NODE_HOST_DIR}/lock"
  rmdir "${NODE_HOST_DIR}" 2>/dev/null || true
fi

if ${PURGE} && [[ -d "${DIR}" ]]; then
  mounted_under "${DIR}" && die "mounts remain under ${DIR}; not removing it"
  rm -rf "${DIR}"
  log "removed ${DIR}"
else
  log "node stopped${DIR:+; logs in ${DIR}/logs}"
fi
