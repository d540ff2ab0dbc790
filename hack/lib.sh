# shellcheck shell=bash disable=SC2034 # variables here are used by the scripts that source this file
# Shared settings and helpers for the hack/ scripts. Source it; do not run it.
#
# Everything the scripts build or start lives under one git-ignored cache folder
# (default: <repo>/.cache) so that a checkout can be cleaned with one rm -rf.

KYBERNATE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
KYBERNATE_CACHE_DIR="${KYBERNATE_CACHE_DIR:-${KYBERNATE_ROOT}/.cache}"
KYBERNATE_BIN_DIR="${KYBERNATE_BIN_DIR:-${KYBERNATE_CACHE_DIR}/bin}"
KYBERNATE_BUILD_DIR="${KYBERNATE_CACHE_DIR}/build"
KYBERNATE_CLUSTER_DIR="${KYBERNATE_CLUSTER_DIR:-${KYBERNATE_CACHE_DIR}/cluster}"
# The real node of hack/node-up.sh lives in its cluster's folder and goes with it.
KYBERNATE_NODE_DIR="${KYBERNATE_NODE_DIR:-${KYBERNATE_CLUSTER_DIR}/node}"
# Images of the working tree (hack/images.sh) belong to the checkout, not to the shared cache.
KYBERNATE_IMAGES_DIR="${KYBERNATE_IMAGES_DIR:-${KYBERNATE_ROOT}/.cache/images}"

# Component versions. Kubernetes follows the k8s.io/kubernetes requirement of the
# root go.mod so that the control plane in the tests is the release our scheduler
# is compiled against.
kube::root_version() {
  awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v1\./ { print $2; exit }' "${KYBERNATE_ROOT}/go.mod"
}
KUBE_VERSION="${KUBE_VERSION:-$(kube::root_version)}"
KUBE_VERSION="${KUBE_VERSION:-v1.34.10}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
# SeaweedFS tags no Go module versions; this pseudo-version is its commit of 2026-11-09.
SEAWEEDFS_VERSION="${SEAWEEDFS_VERSION:-v0.0.0-20261109003541-7506e5f91cd6}"

log() { printf '%s [%s] %s\n' "$(date -u +%H:%M:%S)" "${0##*/}" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The build scripts (build-controlplane.sh, build-helm.sh, build-seaweedfs.sh) share these: a
# cached binary carries a stamp file saying what it was built from, and is built again only when
# the stamp differs or FORCE=true.
STAMP_DIR="${KYBERNATE_BIN_DIR}/.stamps"

# parse_force ARG: sets FORCE from the build scripts' one optional argument, --force.
parse_force() {
  FORCE=false
  case "${1:-}" in
    "") ;;
    --force) FORCE=true ;;
    *) die "usage: $0 [--force]" ;;
  esac
}

# build_lock NAME: creates the cache folders and takes the build lock NAME (fd 9) for the rest
# of the script: two test packages may build at once; one builds, the other waits.
build_lock() {
  mkdir -p "${KYBERNATE_BIN_DIR}" "${STAMP_DIR}" "${KYBERNATE_BUILD_DIR}"
  exec 9>"${KYBERNATE_BUILD_DIR}/$1"
  flock 9
}

# missing STAMP BINARY...: prints the binaries that are absent or were built from something
# other than STAMP (all of them with FORCE=true).
missing() {
  local stamp="$1" bin
  shift
  for bin in "$@"; do
    if ${FORCE:-false} || [[ ! -x "${KYBERNATE_BIN_DIR}/${bin}" || "$(cat "${STAMP_DIR}/${bin}" 2>/dev/null)" != "${stamp}" ]]; then
      echo "${bin}"
    fi
  done
}

# install_from OUTDIR STAMP BINARY...: moves freshly built binaries into place, stamps them and
# removes OUTDIR; the renames keep a concurrent reader from seeing half a file.
install_from() {
  local out="$1" stamp="$2" bin
  shift 2
  for bin in "$@"; do
    [[ -x "${out}/${bin}" ]] || die "${bin} was not built"
    mv -f "${out}/${bin}" "${KYBERNATE_BIN_DIR}/${bin}"
    echo "${stamp}" >"${STAMP_DIR}/${bin}.tmp"
    mv -f "${STAMP_DIR}/${bin}.tmp" "${STAMP_DIR}/${bin}"
  done
  rm -rf "${out}"
}

# pid_matches PID BINARY [ARG]: true when PID is alive (not a zombie), runs BINARY
# (the path of its executable or its argv[0]) and, when ARG is given, has ARG in
# its command line. Guards every kill against pids that were reused by others.
pid_matches() {
  local pid="$1" binary="$2" arg="${3:-}" exe cmdline
  [[ "${pid}" =~ ^[0-9]+$ ]] || return 1
  [[ "$(proc_state "${pid}")" =~ ^[^ZX]$ ]] || return 1
  exe="$(readlink "/proc/${pid}/exe" 2>/dev/null || true)"
  exe="${exe% (deleted)}"
  cmdline="$(tr '\0' ' ' <"/proc/${pid}/cmdline" 2>/dev/null || true)"
  [[ "${exe}" == "${binary}" || "${cmdline%% *}" == "${binary}" ]] || return 1
  [[ -z "${arg}" || "${cmdline}" == *"${arg}"* ]]
}

# stop_daemon NAME PIDFILE BINARY [ARG]: SIGTERM, then SIGKILL after 15 s, for the process in
# PIDFILE if it is BINARY (with ARG in its command line); removes PIDFILE.
stop_daemon() {
  local name="$1" pidfile="$2" binary="$3" arg="${4:-}" pid deadline
  [[ -f "${pidfile}" ]] || return 0
  pid="$(<"${pidfile}")"
  if ! pid_matches "${pid}" "${binary}" "${arg}"; then
    log "${name}: not running"
    rm -f "${pidfile}"
    return 0
  fi
  log "stopping ${name} (pid ${pid})"
  kill -TERM "${pid}" 2>/dev/null || true
  deadline=$((SECONDS + 15))
  while pid_matches "${pid}" "${binary}" "${arg}"; do
    if ((SECONDS >= deadline)); then
      log "${name} did not exit on SIGTERM; killing it"
      kill -KILL "${pid}" 2>/dev/null || true
      deadline=$((SECONDS + 15))
    fi
    sleep 0.1
  done
  rm -f "${pidfile}"
}

# await_exec PID BINARY: waits (5 s at most) until the background child PID, started as
# `setsid BINARY ... &`, runs BINARY with its arguments in place, or is gone. Until setsid
# execs it, PID runs the shell or setsid, and pid_matches would read a starting daemon as one
# that exited. Inside the exec /proc/PID/exe names BINARY a moment before /proc/PID/cmdline
# holds its arguments (empty meanwhile): wait for argv0, or pid_matches, which looks for an
# argument, reads it as gone (CI saw "kube-apiserver exited" with an empty log that way).
await_exec() {
  local pid="$1" binary="$2" argv0 i
  for ((i = 0; i < 100; i++)); do
    # Gone or a zombie: the caller finds it exited. A failed read alone is no proof: it can
    # fail while the exec is under way.
    [[ "$(proc_state "${pid}")" =~ ^[^ZX]$ ]] || return 0
    argv0="$(tr '\0' '\n' <"/proc/${pid}/cmdline" 2>/dev/null | head -1 || true)"
    [[ "${argv0}" != "${binary}" ]] || return 0
    sleep 0.05
  done
}

# proc_state PID: the one-letter state of PID (R, S, Z, ...), empty when gone.
proc_state() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 0
  stat="${stat##*) }"
  echo "${stat%% *}"
}

# proc_start_time PID: when PID started, in clock ticks since boot; with the pid it
# identifies a process for good.
proc_start_time() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 0
  stat="${stat##*) }"
  # Field 22 of stat; the 20th after the command name.
  awk '{ print $20 }' <<<"${stat}"
}

# port_listening PORT: whether something listens on 127.0.0.1:PORT (ss where it is installed,
# else a connect through bash's /dev/tcp, as on the GPU machine).
port_listening() {
  if command -v ss >/dev/null; then
    [[ -n "$(ss -Htln "sport = :$1")" ]]
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
  fi
}

# pick_port VAR: sets VAR to a TCP port on 127.0.0.1 that nothing listens on now,
# drawn at random below the kernel's ephemeral range (so outgoing connections do not
# take it) and never one handed out before in this shell. Not run in a subshell, so
# that it remembers what it handed out.
PORTS_TAKEN=" "
pick_port() {
  local port i
  for ((i = 0; i < 100; i++)); do
    port=$((20000 + RANDOM % 12000))
    [[ "${PORTS_TAKEN}" != *" ${port} "* ]] || continue
    if ! port_listening "${port}"; then
      PORTS_TAKEN+="${port} "
      printf -v "$1" '%s' "${port}"
      return 0
    fi
  done
  die "no free port found"
}

# pack_criu CRIU_PREFIX BUILD DST: DST/criu.tar.xz holds criu (from CRIU_PREFIX/bin, as
# hack/install-runtime.sh installs it) with only the libraries it loads, re-patched to run from
# /tmp/kyb/criu on the GPU machine (test/gpu: run-container.sh, run-cluster.sh unpack it there).
pack_criu() {
	local criu=$1 build=$2 dst=$3 c l
	[[ -s $dst/criu.tar.xz && $dst/criu.tar.xz -nt $criu/bin/criu ]] && return 0
	c=$build/criu
	rm -rf "$c" && mkdir -p "$c/bin" "$c/lib"
	cp "$criu/bin/criu" "$c/bin/criu"
	for l in $(ldd "$criu/bin/criu" | awk '$3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do cp -L "$l" "$c/lib/"; done
	patchelf --set-interpreter /tmp/kyb/criu/lib/ld-linux-x86-64.so.2 --force-rpath --set-rpath /tmp/kyb/criu/lib "$c/bin/criu"
	tar -C "$build" -cJf "$dst/criu.tar.xz" criu
}
