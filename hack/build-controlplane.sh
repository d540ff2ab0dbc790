#!/usr/bin/env bash
# Builds the control-plane binaries the integration tests run (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubectl, kubelet, kwok) from the Go module
# proxy into .cache/bin. Each binary gets a stamp file with what it was built from;
# a binary whose stamp matches is not built again, so a second run takes seconds.
#
# Usage: hack/build-controlplane.sh [--force]
# Env:   KUBE_VERSION (default: k8s.io/kubernetes in go.mod), ETCD_VERSION,
#        KWOK_VERSION, KYBERNATE_CACHE_DIR, KYBERNATE_BIN_DIR.
set -euo pipefail

# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

parse_force "$@"

build_lock .lock

# Every Go command here works on a build module under .cache/build (or on a
# module@version): never on the repository's own module or a go.work around it.
export GOWORK=off
export CGO_ENABLED=0

# render TEMPLATE DEST KEY=VALUE...: replaces @KEY@ in TEMPLATE. DEST is only
# rewritten when it changes, so the go.sum next to it stays valid.
render() {
  local template="$1" dest="$2" content kv
  shift 2
  # bash 5.2 would otherwise read & in a replacement as the matched text.
  shopt -u patsub_replacement 2>/dev/null || true
  content="$(<"${template}")"
  for kv in "$@"; do
    content="${content//@${kv%%=*}@/${kv#*=}}"
  done
  mkdir -p "$(dirname "${dest}")"
  if [[ ! -f "${dest}" || "$(<"${dest}")" != "${content}" ]]; then
    printf '%s\n' "${content}" >"${dest}"
  fi
}

build_kubernetes() {
  local -a bins
  local stamp="k8s.io/kubernetes@${KUBE_VERSION} cgo=0"
  mapfile -t bins < <(missing "${stamp}" kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet)
  ((${#bins[@]})) || { log "kubernetes ${KUBE_VERSION}: up to date"; return 0; }

  local mod="${KYBERNATE_BUILD_DIR}/k8s"
  local info upstream_mod build_date
  # v1.34.10 -> staging modules v0.34.10
  local staging_version="v0.${KUBE_VERSION#v1.}"
  local major minor
  major="${KUBE_VERSION#v}"; major="${major%%.*}"
  minor="${KUBE_VERSION#v*.}"; minor="${minor%%.*}"

  info="$(go mod download -json "k8s.io/kubernetes@${KUBE_VERSION}")"
  upstream_mod="$(jq -r .GoMod <<<"${info}")"
  # The release's own timestamp, not now: rebuilding gives the same binary.
  build_date="$(jq -r .Time "$(dirname "${upstream_mod}")/${KUBE_VERSION}.info")"

  local replaces
  replaces="$(sed -n '/^replace (/,/^)/p' "${upstream_mod}" |
    sed -n "s#^[[:space:]]*\(k8s.io/[^ ]*\) => ./staging/src/.*#\t\1 => \1 ${staging_version}#p")"
  [[ -n "${replaces}" ]] || die "no staging replace block found in ${upstream_mod}"

  render "${KYBERNATE_ROOT}/hack/controlplane/k8s.go.mod.tmpl" "${mod}/go.mod" \
    "KUBE_VERSION=${KUBE_VERSION}" "STAGING_VERSION=${staging_version}" "STAGING_REPLACES=${replaces}"

  local ldflags="-s -w" pkg kv key value
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    for kv in "gitVersion=${KUBE_VERSION}" "gitMajor=${major}" "gitMinor=${minor}" \
      "gitTreeState=clean" "buildDate=${build_date}"; do
      key="${kv%%=*}" value="${kv#*=}"
      ldflags+=" -X ${pkg}.${key}=${value}"
    done
  done

  local -a pkgs=()
  local bin
  for bin in "${bins[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/${bin}"); done
  log "kubernetes ${KUBE_VERSION}: building ${bins[*]} (cold: about 10 min on 2 cores)"
  local out
  out="$(mktemp -d "${KYBERNATE_BUILD_DIR}/out.XXXXXX")"
  (cd "${mod}" && GOFLAGS="-mod=mod -buildvcs=false" go build -trimpath -ldflags "${ldflags}" -o "${out}/" "${pkgs[@]}")
  install_from "${out}" "${stamp}" "${bins[@]}"
}

build_etcd() {
  local stamp="go.etcd.io/etcd/server/v3@${ETCD_VERSION} cgo=0"
  [[ -n "$(missing "${stamp}" etcd)" ]] || { log "etcd ${ETCD_VERSION}: up to date"; return 0; }

  local mod="${KYBERNATE_BUILD_DIR}/etcd" out
  render "${KYBERNATE_ROOT}/hack/controlplane/etcd.go.mod.tmpl" "${mod}/go.mod" "ETCD_VERSION=${ETCD_VERSION}"
  log "etcd ${ETCD_VERSION}: building"
  out="$(mktemp -d "${KYBERNATE_BUILD_DIR}/out.XXXXXX")"
  # The server module's root package is etcd's main.
  (cd "${mod}" && GOFLAGS="-mod=mod -buildvcs=false" go build -trimpath \
    -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=${ETCD_VERSION}" \
    -o "${out}/etcd" go.etcd.io/etcd/server/v3)
  install_from "${out}" "${stamp}" etcd
}

build_kwok() {
  local stamp="sigs.k8s.io/kwok@${KWOK_VERSION} cgo=0"
  [[ -n "$(missing "${stamp}" kwok)" ]] || { log "kwok ${KWOK_VERSION}: up to date"; return 0; }

  local out
  log "kwok ${KWOK_VERSION}: building"
  out="$(mktemp -d "${KYBERNATE_BUILD_DIR}/out.XXXXXX")"
  # go install module@version ignores any go.mod, so no build module is needed;
  # -mod must not be set for it.
  GOFLAGS='' GOBIN="${out}" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@${KWOK_VERSION}"
  install_from "${out}" "${stamp}" kwok
}

start=${SECONDS}
build_etcd
build_kwok
build_kubernetes
log "binaries in ${KYBERNATE_BIN_DIR} ($((SECONDS - start))s)"
