#!/usr/bin/env bash
# Starts a real Kubernetes node on this machine and registers it with the cluster of
# hack/cluster-up.sh, next to its kwok nodes: Debian's containerd with the CRI plugin (private
# root, state and socket), runc, our shim as runtime handler kybernate with CRIU >= 4.1 from
# hack/install-runtime.sh, the CNI plugins bridge + host-local + loopback on a bridge of its
# own, the pause and busybox images of hack/images.sh, and the kubelet built by
# hack/build-controlplane.sh with its own client and serving certificates from the cluster's
# CA. Pods on it are real processes. Needs root. Prints the node's name on stdout.
#
# State, logs, certificates and the kubelet's root stay in KYBERNATE_NODE_DIR (default
# <cluster folder>/node); what the node must put elsewhere on the host (the bridge, iptables
# rules, runc state and shim sockets under /run/containerd, network namespaces, kubepods
# cgroups, /var/lib/kubelet/device-plugins) is removed again by hack/node-down.sh. One real
# node per machine: a second node-up for another cluster fails.
#
# Running it again while the node runs reuses the node.
#
# Env:
#   KYBERNATE_CLUSTER_DIR      the cluster to join (default .cache/cluster)
#   KYBERNATE_NODE_DIR         the node's folder (default <cluster folder>/node)
#   KYBERNATE_NODE_LABELS      extra node labels, comma separated (default
#                              kybernate.io/gpu-node=true: the agent DaemonSet runs here)
#   KYBERNATE_NODE_POD_CIDR    the pods' /24 on the node's bridge (default 10.123.0.0/24)
#   KYBERNATE_NODE_OWNER_PID   stop the node when this process exits (tests)
set -euo pipefail

# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=hack/node-lib.sh
source "${KYBERNATE_ROOT}/hack/node-lib.sh"

LABELS="${KYBERNATE_NODE_LABELS-kybernate.io/gpu-node=true}"
start=${SECONDS}

((EUID == 0)) || die "a real node needs root (containerd, runc, CNI, the kubelet)"
[[ -s "${KYBERNATE_CLUSTER_DIR}/cluster.env" ]] ||
  die "no cluster in ${KYBERNATE_CLUSTER_DIR}: start one with hack/cluster-up.sh"
CLUSTER="$(cd "${KYBERNATE_CLUSTER_DIR}" && pwd -P)"
# shellcheck source=/dev/null
source "${CLUSTER}/cluster.env"
NODE_NAME="${KUBELET_NODE_NAME:-$(hostname | tr '[:upper:]' '[:lower:]')}"
# The kubernetes Service's address (clusters started before cluster.env named it: the default).
SERVICE_IP="${SERVICE_IP:-10.96.0.1}"
KUBECTL=("${KYBERNATE_BIN_DIR}/kubectl" --kubeconfig "${CLUSTER}/admin.kubeconfig" --cache-dir "${CLUSTER}/kubectl-cache")

# ---------------------------------------------------------------------- prerequisites

missing=()
for tool in containerd ctr runc iptables ip sysctl openssl; do
  command -v "${tool}" >/dev/null || missing+=("${tool}")
done
for plugin in bridge host-local loopback; do
  [[ -x "${CNI_BIN_DIR}/${plugin}" ]] || missing+=("${CNI_BIN_DIR}/${plugin}")
done
[[ -x "${KYBERNATE_BIN_DIR}/kubelet" ]] || missing+=("${KYBERNATE_BIN_DIR}/kubelet (hack/build-controlplane.sh)")
((${#missing[@]} == 0)) || die "missing ${missing[*]} (Debian: apt-get install containerd runc containernetworking-plugins iptables iproute2 busybox-static)"

# ---------------------------------------------------------------- one node per machine

mkdir -p "${NODE_HOST_DIR}" "${DIR}"
DIR="$(cd "${DIR}" && pwd -P)"
exec 8>"${NODE_HOST_DIR}/lock"
flock 8

if [[ -s "${NODE_HOST_DIR}/owner" && "$(<"${NODE_HOST_DIR}/owner")" != "${DIR}" ]]; then
  other="$(<"${NODE_HOST_DIR}/owner")"
  if node_running_in "${other}"; then
    die "a real node of another cluster runs on this machine (${other}); stop it first: KYBERNATE_NODE_DIR=${other} hack/node-down.sh"
  fi
  log "the node in ${other} is gone but left things behind: cleaning up after it"
  flock -u 8
  KYBERNATE_NODE_DIR="${other}" "${KYBERNATE_ROOT}/hack/node-down.sh"
  flock 8
fi

if node_running_in "${DIR}"; then
  log "reusing the running node ${NODE_NAME} in ${DIR}"
  echo "${NODE_NAME}"
  exit 0
fi
if [[ -s "${NODE_HOST_DIR}/owner" ]]; then
  log "the node in ${DIR} is partly running: restarting it"
  flock -u 8
  "${KYBERNATE_ROOT}/hack/node-down.sh"
  flock 8
fi

cleanup_on_failure() {
  log "node-up failed; stopping what it started (logs stay in ${DIR}/logs)"
  flock -u 8
  "${KYBERNATE_ROOT}/hack/node-down.sh" || true
}
trap cleanup_on_failure EXIT

echo "${DIR}" >"${NODE_HOST_DIR}/owner"
mkdir -p "${DIR}/logs" "${DIR}/run" "${DIR}/pki" "${DIR}/cni/net.d" "${DIR}/bin"
rm -f "${DIR}"/logs/*.log

# What node-down restores or removes depends on what the host had before.
{
  echo "IP_FORWARD=$(sysctl -n net.ipv4.ip_forward)"
  echo "HAD_VAR_LIB_KUBELET=$([[ -e /var/lib/kubelet ]] && echo true || echo false)"
  echo "HAD_DEVICE_PLUGINS=$([[ -e /var/lib/kubelet/device-plugins ]] && echo true || echo false)"
  echo "HAD_VAR_LOG_CONTAINERS=$([[ -e /var/log/containers ]] && echo true || echo false)"
  echo "HAD_VAR_LOG_PODS=$([[ -e /var/log/pods ]] && echo true || echo false)"
  echo "HAD_VAR_LIB_CNI=$([[ -e /var/lib/cni ]] && echo true || echo false)"
  echo "HAD_RUN_NETNS=$([[ -e /run/netns ]] && echo true || echo false)"
  echo "HAD_RUN_KYBERNATE=$([[ -e /run/kybernate ]] && echo true || echo false)"
  echo "HAD_KUBE_CHAINS=$(iptables-save 2>/dev/null | grep -q '^:KUBE-' && echo true || echo false)"
} >"${NODE_HOST_DIR}/host.env"

# ---------------------------------------------------------------------------- network

# The pods' bridge; its address is the node's InternalIP, where the API server reaches the
# kubelet. The default route stays the host's business.
POD_CIDR="${KYBERNATE_NODE_POD_CIDR:-10.123.0.0/24}"
[[ "${POD_CIDR}" =~ ^([0-9]+\.[0-9]+\.[0-9]+)\.0/24$ ]] || die "KYBERNATE_NODE_POD_CIDR must be a /24 (a.b.c.0/24), not ${POD_CIDR}"
NODE_IP="${BASH_REMATCH[1]}.1"
ip link add "${NODE_BRIDGE}" type bridge 2>/dev/null || true
ip addr replace "${NODE_IP}/24" dev "${NODE_BRIDGE}"
ip link set "${NODE_BRIDGE}" up
sysctl -qw net.ipv4.ip_forward=1
# Pods reach the API server (127.0.0.1 only) at the kubernetes Service's address, the one
# in-cluster clients use: DNAT to the loopback address, which the bridge must route.
sysctl -qw "net.ipv4.conf.${NODE_BRIDGE}.route_localnet=1"
iptables -w -t nat -N "${NODE_CHAIN}" 2>/dev/null || iptables -w -t nat -F "${NODE_CHAIN}"
iptables -w -t nat -A "${NODE_CHAIN}" -d "${SERVICE_IP}/32" -p tcp --dport 443 \
  -j DNAT --to-destination "127.0.0.1:${APISERVER_PORT}"
for hook in PREROUTING OUTPUT; do
  iptables -w -t nat -C "${hook}" -j "${NODE_CHAIN}" 2>/dev/null || iptables -w -t nat -I "${hook}" -j "${NODE_CHAIN}"
done
# Replies from 127.0.0.1 leave through the bridge with the loopback source address unless
# they are masqueraded back to the node's address.
iptables -w -t nat -N "${NODE_CHAIN}-POST" 2>/dev/null || iptables -w -t nat -F "${NODE_CHAIN}-POST"
iptables -w -t nat -A "${NODE_CHAIN}-POST" -s 127.0.0.0/8 -o "${NODE_BRIDGE}" -j MASQUERADE
iptables -w -t nat -C POSTROUTING -j "${NODE_CHAIN}-POST" 2>/dev/null || iptables -w -t nat -I POSTROUTING -j "${NODE_CHAIN}-POST"

# bridge + host-local; CRI adds the loopback plugin for lo itself. host-local keeps its leases
# in the node's folder.
cat >"${DIR}/cni/net.d/10-kybernate.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "${CNI_NETWORK}",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "${NODE_BRIDGE}",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "${DIR}/cni/ipam",
        "ranges": [[{"subnet": "${POD_CIDR}", "gateway": "${NODE_IP}"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
EOF

# ------------------------------------------------------------------------- containerd

# Our shim (runtime handler kybernate) and CRIU >= 4.1 go first on containerd's PATH, which
# its shims inherit: containerd finds containerd-shim-kybernate-v1 there, runc finds criu.
(cd "${KYBERNATE_ROOT}" && go build -o "${DIR}/bin/containerd-shim-kybernate-v1" ./shim/cmd/containerd-shim-kybernate-v1)
CRIU_DIR="$("${KYBERNATE_ROOT}/hack/install-runtime.sh")"
[[ -x "${CRIU_DIR}/criu" ]] || die "hack/install-runtime.sh printed no folder with criu"

CONTAINERD="$(command -v containerd)"
cat >"${DIR}/containerd.toml" <<EOF
# Written by hack/node-up.sh.
version = 2
root = "${DIR}/containerd/root"
state = "${DIR}/containerd/state"
# Plugins that would touch the host outside the node's folder, or that the node never uses.
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "${DIR}/containerd.sock"
[ttrpc]
  address = "${DIR}/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "${DIR}/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  # Built by hack/images.sh and imported before the kubelet starts: nothing is pulled.
  sandbox_image = "${PAUSE_IMAGE}"
  # runc cannot lower oom_score_adj here ("nsexec: failed to update /proc/self/oom_score_adj:
  # Permission denied"); this keeps containers at or above containerd's own.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        SystemdCgroup = false
    # RuntimeClass kybernate: our shim. Pod annotations kybernate.io/* reach the OCI spec, where
    # the shim reads kybernate.io/gpus and kybernate.io/restore-from. No options table: CRI
    # would send the shim its own option type instead of runc's.
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kybernate]
      runtime_type = "io.containerd.kybernate.v1"
      pod_annotations = ["kybernate.io/*"]
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "${CNI_BIN_DIR}"
    conf_dir = "${DIR}/cni/net.d"
    max_conf_num = 1
EOF

# launch NAME ARGS...: starts NAME in its own session, detached, output in logs/NAME.log.
launch() {
  local name="$1" binary="$2"
  shift 2
  log "starting ${name}"
  # 8>&-: the daemon must not hold the machine's node lock after node-up exits.
  PATH="${DIR}/bin:${CRIU_DIR}:${PATH}" setsid "${binary}" "$@" </dev/null >>"${DIR}/logs/${name}.log" 2>&1 8>&- &
  echo "$!" >"${DIR}/run/${name}.pid"
  await_exec "$!" "${binary}"
}

# The shim restores only from images under the agent's --checkpoint-dir, which the node tests
# give as ${DIR}/checkpoints.
cat >"${DIR}/shim.yaml" <<EOF
# Written by hack/node-up.sh.
checkpointDir: ${DIR}/checkpoints
EOF
KYBERNATE_SHIM_CONFIG="${DIR}/shim.yaml" launch containerd "${CONTAINERD}" --config "${DIR}/containerd.toml"
deadline=$((SECONDS + 30))
until ctr --address "${DIR}/containerd.sock" version >/dev/null 2>&1; do
  if ! daemon_running containerd "${CONTAINERD}" || ((SECONDS >= deadline)); then
    tail -n 30 "${DIR}/logs/containerd.log" >&2 || true
    die "containerd did not come up"
  fi
  sleep 0.1
done

# The sandbox image before the first pod, and the test workload image.
KYBERNATE_NODE_DIR="${DIR}" "${KYBERNATE_ROOT}/hack/images.sh" --import pause busybox >/dev/null

# -------------------------------------------------------------------------------- PKI

CA_CRT="${CLUSTER}/pki/ca.crt" CA_KEY="${CLUSTER}/pki/ca.key"
[[ -s "${CA_CRT}" && -s "${CA_KEY}" ]] || die "no CA in ${CLUSTER}/pki"
chmod 700 "${DIR}/pki"

# cert NAME SUBJECT EXTENSIONS: a fresh EC P-256 key and certificate signed by the cluster CA.
cert() {
  local name="$1" subject="$2" ext="$3"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "${DIR}/pki/${name}.key" -out "${DIR}/pki/${name}.csr" -subj "${subject}" 2>/dev/null
  openssl x509 -req -in "${DIR}/pki/${name}.csr" -CA "${CA_CRT}" -CAkey "${CA_KEY}" \
    -set_serial "0x$(openssl rand -hex 16)" -days 365 -out "${DIR}/pki/${name}.crt" \
    -extfile <(printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" "${ext}") \
    2>/dev/null
  rm -f "${DIR}/pki/${name}.csr"
}
# The Node authorizer and NodeRestriction know a kubelet by this name and group.
cert kubelet-client "/O=system:nodes/CN=system:node:${NODE_NAME}" "extendedKeyUsage=clientAuth"
cert kubelet-serving "/O=system:nodes/CN=system:node:${NODE_NAME}" \
  "$(printf '%s\n' "extendedKeyUsage=serverAuth" "subjectAltName=IP:${NODE_IP},DNS:${NODE_NAME}")"
cat >"${DIR}/kubelet.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kybernate
  cluster:
    server: https://127.0.0.1:${APISERVER_PORT}
    certificate-authority: ${CA_CRT}
users:
- name: kubelet
  user:
    client-certificate: ${DIR}/pki/kubelet-client.crt
    client-key: ${DIR}/pki/kubelet-client.key
contexts:
- name: kybernate
  context: {cluster: kybernate, user: kubelet}
current-context: kybernate
EOF
chmod 600 "${DIR}/kubelet.kubeconfig"

# ---------------------------------------------------------------------------- kubelet

pick_port KUBELET_PORT
pick_port KUBELET_HEALTHZ_PORT
cat >"${DIR}/kubelet.yaml" <<EOF
# Written by hack/node-up.sh.
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine has hybrid cgroup v1, which kubelet 1.34 refuses unless told otherwise.
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
containerRuntimeEndpoint: unix://${DIR}/containerd.sock
address: ${NODE_IP}
port: ${KUBELET_PORT}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: ${KUBELET_HEALTHZ_PORT}
tlsCertFile: ${DIR}/pki/kubelet-serving.crt
tlsPrivateKeyFile: ${DIR}/pki/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: ${CA_CRT}}
authorization:
  mode: Webhook
podLogsDir: ${DIR}/pod-logs
resolvConf: /etc/resolv.conf
# The images are imported by hand and cannot be pulled again: image garbage collection never
# runs (usage never exceeds 100%), and a nearly full disk does not evict the test pods.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
# Status changes reach the API server promptly; the tests wait on them.
nodeStatusUpdateFrequency: 4s
syncFrequency: 10s
serializeImagePulls: false
EOF

KUBELET="${KYBERNATE_BIN_DIR}/kubelet"
launch kubelet "${KUBELET}" \
  --config="${DIR}/kubelet.yaml" \
  --kubeconfig="${DIR}/kubelet.kubeconfig" \
  --root-dir="${DIR}/kubelet" \
  --cert-dir="${DIR}/pki" \
  --hostname-override="${NODE_NAME}" \
  --node-ip="${NODE_IP}" \
  --node-labels="${LABELS}" \
  --v=2

# Registered and Ready, and no longer tainted not-ready by the node lifecycle controller.
deadline=$((SECONDS + 90))
while :; do
  state="$("${KUBECTL[@]}" get node "${NODE_NAME}" --ignore-not-found \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status} {.spec.taints[*].key}' 2>/dev/null || true)"
  [[ "${state}" == "True " ]] && break
  if ! daemon_running kubelet "${KUBELET}"; then
    tail -n 30 "${DIR}/logs/kubelet.log" >&2 || true
    die "the kubelet exited"
  fi
  if ((SECONDS >= deadline)); then
    tail -n 30 "${DIR}/logs/kubelet.log" >&2 || true
    die "node ${NODE_NAME} not Ready after 90s (state: ${state:-not registered})"
  fi
  sleep 0.2
done

if [[ -n "${KYBERNATE_NODE_OWNER_PID:-}" ]]; then
  KYBERNATE_NODE_DIR="${DIR}" setsid "${KYBERNATE_ROOT}/hack/node-down.sh" \
    --after-exit "${KYBERNATE_NODE_OWNER_PID}" </dev/null >>"${DIR}/logs/watchdog.log" 2>&1 8>&- &
  echo "$!" >"${DIR}/run/watchdog.pid"
fi

trap - EXIT
log "node ${NODE_NAME} Ready in $((SECONDS - start))s (kubelet log ${DIR}/logs/kubelet.log)"
echo "${NODE_NAME}"
