#!/usr/bin/env bash
# Starts a private Kubernetes control plane in one folder: etcd, kube-apiserver,
# kube-controller-manager, the default kube-scheduler and kwok serving fake GPU
# nodes. Everything binds to 127.0.0.1 on free ports; state, PKI, kubeconfigs, logs
# and pid files stay in the folder. Prints the admin kubeconfig path on stdout.
#
# Running it again while the cluster runs reuses the cluster (and re-applies CRDs and
# nodes). A cluster that is only partly running is stopped and started fresh.
#
# Env:
#   KYBERNATE_CLUSTER_DIR       folder of the cluster (default .cache/cluster)
#   KYBERNATE_NODES             kwok GPU nodes (default 4)
#   KYBERNATE_GPUS_PER_NODE     GPUs per node (default 8)
#   KYBERNATE_GPU_MODELS        comma-separated GPU models, assigned round robin
#                               (default NVIDIA-H100-80GB-HBM3)
#   KYBERNATE_ETCD_PORT, KYBERNATE_ETCD_PEER_PORT, KYBERNATE_APISERVER_PORT,
#   KYBERNATE_CONTROLLER_MANAGER_PORT, KYBERNATE_SCHEDULER_PORT
#                               fixed ports instead of free ones
#   KYBERNATE_APISERVER_PROFILING true serves kube-apiserver's /debug/pprof (default false)
#   KYBERNATE_CLUSTER_OWNER_PID stop the cluster when this process exits (tests)
set -euo pipefail

# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NODES="${KYBERNATE_NODES:-4}"
GPUS_PER_NODE="${KYBERNATE_GPUS_PER_NODE:-8}"
GPU_MODELS="${KYBERNATE_GPU_MODELS:-NVIDIA-H100-80GB-HBM3}"
[[ "${NODES}" =~ ^[0-9]+$ ]] || die "KYBERNATE_NODES must be a number, not ${NODES}"
[[ "${GPUS_PER_NODE}" =~ ^[0-9]+$ ]] || die "KYBERNATE_GPUS_PER_NODE must be a number, not ${GPUS_PER_NODE}"

# Service and pod ranges of the fake cluster; nothing routes them.
SERVICE_CIDR=10.96.0.0/16
SERVICE_IP=10.96.0.1
POD_CIDR=10.244.0.1/16

start=${SECONDS}
"${KYBERNATE_ROOT}/hack/build-controlplane.sh"

mkdir -p "${KYBERNATE_CLUSTER_DIR}"
DIR="$(cd "${KYBERNATE_CLUSTER_DIR}" && pwd -P)"
PKI="${DIR}/pki" RUN="${DIR}/run" LOGS="${DIR}/logs"
KUBECTL=("${KYBERNATE_BIN_DIR}/kubectl" --kubeconfig "${DIR}/admin.kubeconfig" --cache-dir "${DIR}/kubectl-cache")

# One cluster-up or cluster-down at a time per folder.
exec 8>"${DIR}/.lock"
flock 8

# ---------------------------------------------------------------------------- PKI

# cert NAME SUBJECT EXTENSIONS: an EC P-256 key and a certificate signed by the CA.
cert() {
  local name="$1" subject="$2" ext="$3"
  [[ -s "${PKI}/${name}.crt" && -s "${PKI}/${name}.key" ]] && return 0
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "${PKI}/${name}.key" -out "${PKI}/${name}.csr" -subj "${subject}" 2>/dev/null
  openssl x509 -req -in "${PKI}/${name}.csr" -CA "${PKI}/ca.crt" -CAkey "${PKI}/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 3650 -out "${PKI}/${name}.crt" \
    -extfile <(printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" "${ext}") \
    2>/dev/null
  rm -f "${PKI}/${name}.csr"
}

make_pki() {
  mkdir -p "${PKI}"
  chmod 700 "${PKI}"
  if [[ ! -s "${PKI}/ca.crt" || ! -s "${PKI}/ca.key" ]]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -keyout "${PKI}/ca.key" -out "${PKI}/ca.crt" -days 3650 -subj "/CN=kybernate-ca" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
  fi
  local client="extendedKeyUsage=clientAuth"
  cert apiserver "/CN=kube-apiserver" \
    "$(printf '%s\n' "extendedKeyUsage=serverAuth" \
      "subjectAltName=IP:127.0.0.1,IP:${SERVICE_IP},DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local")"
  cert admin "/O=system:masters/CN=kybernate-admin" "${client}"
  cert kube-scheduler "/CN=system:kube-scheduler" "${client}"
  cert kube-controller-manager "/CN=system:kube-controller-manager" "${client}"
  # kwok plays every kubelet of every fake node, so it cannot be one system:node.
  cert kwok "/O=system:masters/CN=kybernate-kwok" "${client}"
  # The API server's identity towards kubelets (logs, exec) of real nodes.
  cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "${client}"
  # A real kubelet on this machine (the real-node tier) registers as this node.
  cert kubelet "/O=system:nodes/CN=system:node:${KUBELET_NODE_NAME}" "${client}"
  if [[ ! -s "${PKI}/sa.key" ]]; then
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "${PKI}/sa.key" 2>/dev/null
    openssl pkey -in "${PKI}/sa.key" -pubout -out "${PKI}/sa.pub" 2>/dev/null
  fi
}

# kubeconfig NAME CERT: ${DIR}/NAME.kubeconfig authenticating with CERT.
kubeconfig() {
  local name="$1" cert="$2" tmp="${DIR}/.$1.kubeconfig"
  cat >"${tmp}" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kybernate
  cluster:
    server: https://127.0.0.1:${APISERVER_PORT}
    certificate-authority-data: $(base64 -w0 "${PKI}/ca.crt")
users:
- name: ${cert}
  user:
    client-certificate-data: $(base64 -w0 "${PKI}/${cert}.crt")
    client-key-data: $(base64 -w0 "${PKI}/${cert}.key")
contexts:
- name: kybernate
  context:
    cluster: kybernate
    user: ${cert}
current-context: kybernate
EOF
  chmod 600 "${tmp}"
  mv -f "${tmp}" "${DIR}/${name}.kubeconfig"
}

# ---------------------------------------------------------------------- processes

COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

running() {
  local name="$1" pid
  pid="$(cat "${RUN}/${name}.pid" 2>/dev/null)" || return 1
  pid_matches "${pid}" "${KYBERNATE_BIN_DIR}/${name}" "${DIR}/"
}

# launch NAME ARGS...: starts the binary NAME in its own session, detached from the
# caller's terminal and pipes, with its output in logs/NAME.log.
launch() {
  local name="$1"
  shift
  log "starting ${name}"
  # 8>&-: the daemon must not hold this folder's lock after cluster-up exits.
  setsid "${KYBERNATE_BIN_DIR}/${name}" "$@" </dev/null >>"${LOGS}/${name}.log" 2>&1 8>&- &
  echo "$!" >"${RUN}/${name}.pid"
  await_exec "$!" "${KYBERNATE_BIN_DIR}/${name}"
}

# healthy NAME: the component answers its health endpoint.
healthy() {
  case "$1" in
    etcd) curl -sf --max-time 2 "http://127.0.0.1:${ETCD_PORT}/health" | grep -q '"health":"true"' ;;
    kube-apiserver)
      [[ "$(curl -s --max-time 2 --cacert "${PKI}/ca.crt" --cert "${PKI}/admin.crt" --key "${PKI}/admin.key" \
        "https://127.0.0.1:${APISERVER_PORT}/readyz")" == ok ]] ;;
    kube-controller-manager) [[ "$(curl -sk --max-time 2 "https://127.0.0.1:${CONTROLLER_MANAGER_PORT}/healthz")" == ok ]] ;;
    kube-scheduler) [[ "$(curl -sk --max-time 2 "https://127.0.0.1:${SCHEDULER_PORT}/healthz")" == ok ]] ;;
    *) running "$1" ;;
  esac
}

# await NAME: waits for NAME to become healthy; fails early when it exits.
await() {
  local name="$1" deadline=$((SECONDS + 120))
  until healthy "${name}"; do
    if ! running "${name}"; then
      local pid
      pid="$(cat "${RUN}/${name}.pid" 2>/dev/null || true)"
      log "${name} exited (pid ${pid}: state '$(proc_state "${pid}")', exe '$(readlink "/proc/${pid}/exe" 2>/dev/null || true)'," \
        "argv0 '$(tr '\0' '\n' <"/proc/${pid}/cmdline" 2>/dev/null | head -1 || true)'); last lines of ${LOGS}/${name}.log:"
      tail -n 30 "${LOGS}/${name}.log" >&2 || true
      return 1
    fi
    if ((SECONDS >= deadline)); then
      log "${name} not healthy after 120s; last lines of ${LOGS}/${name}.log:"
      tail -n 30 "${LOGS}/${name}.log" >&2 || true
      return 1
    fi
    sleep 0.2
  done
}

start_etcd() {
  rm -rf "${DIR}/etcd-data"
  # No fsync: the data is thrown away with the cluster, and tests run much faster.
  launch etcd \
    --name=kybernate \
    --data-dir="${DIR}/etcd-data" \
    --listen-client-urls="http://127.0.0.1:${ETCD_PORT}" \
    --advertise-client-urls="http://127.0.0.1:${ETCD_PORT}" \
    --listen-peer-urls="http://127.0.0.1:${ETCD_PEER_PORT}" \
    --initial-advertise-peer-urls="http://127.0.0.1:${ETCD_PEER_PORT}" \
    --initial-cluster="kybernate=http://127.0.0.1:${ETCD_PEER_PORT}" \
    --unsafe-no-fsync=true \
    --log-level=warn
  await etcd
}

start_apiserver() {
  # --endpoint-reconciler-type=none: the kubernetes Service cannot point at a
  # loopback address; pods on the real node (hack/node-up.sh) reach the API server
  # at the Service's address through a DNAT rule of the node.
  # A real kubelet is reached at its InternalIP (its hostname may resolve to
  # 127.0.0.1) and must present a serving certificate from the cluster CA.
  launch kube-apiserver \
    --etcd-servers="http://127.0.0.1:${ETCD_PORT}" \
    --bind-address=127.0.0.1 \
    --advertise-address=127.0.0.1 \
    --secure-port="${APISERVER_PORT}" \
    --cert-dir="${DIR}/apiserver" \
    --tls-cert-file="${PKI}/apiserver.crt" \
    --tls-private-key-file="${PKI}/apiserver.key" \
    --client-ca-file="${PKI}/ca.crt" \
    --authorization-mode=Node,RBAC \
    --enable-admission-plugins=NodeRestriction \
    --allow-privileged=true \
    --service-cluster-ip-range="${SERVICE_CIDR}" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="${PKI}/sa.pub" \
    --service-account-signing-key-file="${PKI}/sa.key" \
    --kubelet-client-certificate="${PKI}/apiserver-kubelet-client.crt" \
    --kubelet-client-key="${PKI}/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority="${PKI}/ca.crt" \
    --kubelet-preferred-address-types=InternalIP,Hostname \
    --endpoint-reconciler-type=none \
    --profiling="${KYBERNATE_APISERVER_PROFILING:-false}"
  await kube-apiserver
}

start_controller_manager() {
  # Every default controller except those that need a cloud provider or node CIDRs.
  # A 1 s node monitor period (default 5 s) lifts the not-ready taint of new nodes
  # sooner; the grace periods that decide when a node is lost stay the default.
  launch kube-controller-manager \
    --kubeconfig="${DIR}/kube-controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 \
    --secure-port="${CONTROLLER_MANAGER_PORT}" \
    --leader-elect=false \
    --controllers='*,-cloud-node-lifecycle-controller,-service-lb-controller,-node-route-controller,-node-ipam-controller' \
    --use-service-account-credentials=true \
    --service-account-private-key-file="${PKI}/sa.key" \
    --root-ca-file="${PKI}/ca.crt" \
    --cluster-signing-cert-file="${PKI}/ca.crt" \
    --cluster-signing-key-file="${PKI}/ca.key" \
    --flex-volume-plugin-dir="${DIR}/flexvolume" \
    --node-monitor-period=1s \
    --profiling=false
}

start_scheduler() {
  launch kube-scheduler \
    --kubeconfig="${DIR}/kube-scheduler.kubeconfig" \
    --bind-address=127.0.0.1 \
    --secure-port="${SCHEDULER_PORT}" \
    --leader-elect=false \
    --profiling=false
}

start_kwok() {
  local stage
  local -a configs=()
  for stage in "${KYBERNATE_ROOT}"/manifests/kwok/stages/*.yaml; do
    configs+=(--config="${stage}")
  done
  # kwok also reads ~/.kwok/kwok.yaml when it exists: a private HOME keeps a
  # developer's own kwok configuration out of the tests.
  # Node leases, renewed by kwok as a kubelet does, are what keeps the nodes Ready:
  # standalone kwok has them off by default, and then the node lifecycle
  # controller marks every node NotReady after its 50 s grace period. kwok renews a
  # lease every quarter of its duration: 30 s, inside the grace period, and a third of
  # a kubelet's rate, which matters with a thousand nodes on two cores. Per-lease
  # logging at INFO would cost as much CPU as the renewals themselves.
  mkdir -p "${DIR}/kwok"
  HOME="${DIR}/kwok" launch kwok \
    "${configs[@]}" \
    --kubeconfig="${DIR}/kwok.kubeconfig" \
    --manage-all-nodes=false \
    --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --node-lease-duration-seconds=120 \
    -v=WARN \
    --cidr="${POD_CIDR}" \
    --node-ip=10.255.0.1
}

# ------------------------------------------------------------------ cluster content

apply_crds() {
  local crds="${KYBERNATE_ROOT}/manifests/crds"
  if [[ -f "${crds}/kustomization.yaml" ]]; then
    "${KUBECTL[@]}" apply --server-side -k "${crds}" >/dev/null
  elif compgen -G "${crds}/*.yaml" >/dev/null || compgen -G "${crds}/*.yml" >/dev/null; then
    "${KUBECTL[@]}" apply --server-side -f "${crds}" >/dev/null
  else
    return 0
  fi
  log "applied CRDs from manifests/crds"
  "${KUBECTL[@]}" wait --for=condition=Established --timeout=60s crd --all >/dev/null
}

apply_nodes() {
  ((NODES > 0)) || return 0
  local template docs="" doc i name
  local -a models
  template="$(<"${KYBERNATE_ROOT}/manifests/kwok/node.yaml")"
  IFS=, read -ra models <<<"${GPU_MODELS}"
  ((${#models[@]})) || die "KYBERNATE_GPU_MODELS is empty"
  for ((i = 0; i < NODES; i++)); do
    name="kwok-gpu-${i}"
    doc="${template//@NODE_NAME@/${name}}"
    doc="${doc//@GPU_MODEL@/${models[i % ${#models[@]}]}}"
    docs+="${doc//@GPU_COUNT@/${GPUS_PER_NODE}}"$'\n---\n'
  done
  "${KUBECTL[@]}" apply -f - <<<"${docs}" >/dev/null
  log "created ${NODES} kwok nodes with ${GPUS_PER_NODE} GPUs each"
  # Every node Ready, and untainted: the node lifecycle controller taints a node
  # not-ready until it has seen it Ready, which takes up to its monitor period;
  # pods cannot land before. One list per round, however many nodes there are
  # (kubectl wait would ask for each node in turn).
  local deadline=$((SECONDS + 60 + NODES * 3 / 10)) state ready
  while :; do
    state="$("${KUBECTL[@]}" get nodes -l type=kwok -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status} {.spec.taints[*].key}{"\n"}{end}')"
    ready="$(grep -c '^True *$' <<<"${state}" || true)"
    ((ready >= NODES)) && break
    ((SECONDS < deadline)) || die "only ${ready} of ${NODES} kwok nodes Ready and untainted after $((60 + NODES * 3 / 10))s"
    sleep 0.2
  done
}

# -------------------------------------------------------------------------- main

cleanup_on_failure() {
  log "cluster-up failed; stopping what it started (logs stay in ${LOGS})"
  flock -u 8
  "${KYBERNATE_ROOT}/hack/cluster-down.sh" || true
}

shopt -u patsub_replacement 2>/dev/null || true
mkdir -p "${RUN}" "${LOGS}"

alive=0
for name in "${COMPONENTS[@]}"; do
  if running "${name}"; then alive=$((alive + 1)); fi
done

if ((alive == ${#COMPONENTS[@]})); then
  # shellcheck source=/dev/null
  source "${DIR}/cluster.env"
  for name in "${COMPONENTS[@]}"; do await "${name}"; done
  log "reusing the running cluster in ${DIR}"
else
  if ((alive > 0)); then
    log "cluster in ${DIR} is partly running: restarting it"
    flock -u 8
    "${KYBERNATE_ROOT}/hack/cluster-down.sh"
    flock 8
  fi
  for port in ETCD_PORT ETCD_PEER_PORT APISERVER_PORT CONTROLLER_MANAGER_PORT SCHEDULER_PORT; do
    override="KYBERNATE_${port}"
    if [[ -n "${!override:-}" ]]; then
      printf -v "${port}" '%s' "${!override}"
    else
      pick_port "${port}"
    fi
  done
  KUBELET_NODE_NAME="$(hostname | tr '[:upper:]' '[:lower:]')"
  cat >"${DIR}/cluster.env" <<EOF
# Written by hack/cluster-up.sh; read by the hack scripts and the test framework.
KUBECONFIG=${DIR}/admin.kubeconfig
ETCD_PORT=${ETCD_PORT}
ETCD_PEER_PORT=${ETCD_PEER_PORT}
APISERVER_PORT=${APISERVER_PORT}
CONTROLLER_MANAGER_PORT=${CONTROLLER_MANAGER_PORT}
SCHEDULER_PORT=${SCHEDULER_PORT}
KUBELET_NODE_NAME=${KUBELET_NODE_NAME}
SERVICE_IP=${SERVICE_IP}
EOF

  # Whatever fails from here on leaves nothing running.
  trap 'cleanup_on_failure' EXIT

  rm -f "${LOGS}"/*.log
  make_pki
  kubeconfig admin admin
  kubeconfig kube-scheduler kube-scheduler
  kubeconfig kube-controller-manager kube-controller-manager
  kubeconfig kwok kwok
  kubeconfig kubelet kubelet

  start_etcd
  start_apiserver
  start_controller_manager
  start_scheduler
  start_kwok
  await kube-controller-manager
  await kube-scheduler

  if [[ -n "${KYBERNATE_CLUSTER_OWNER_PID:-}" ]]; then
    KYBERNATE_CLUSTER_DIR="${DIR}" setsid "${KYBERNATE_ROOT}/hack/cluster-down.sh" \
      --after-exit "${KYBERNATE_CLUSTER_OWNER_PID}" </dev/null >>"${LOGS}/watchdog.log" 2>&1 8>&- &
    echo "$!" >"${RUN}/watchdog.pid"
  fi
fi

apply_crds
apply_nodes
trap - EXIT
log "cluster ready in $((SECONDS - start))s; kubeconfig:"
echo "${DIR}/admin.kubeconfig"
