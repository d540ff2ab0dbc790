#!/usr/bin/env bash
# Builds the helm binary the chart tests use (helm lint, helm template, helm install on the
# local cluster) from the Go module proxy into the cache's bin folder, next to the
# control-plane binaries of build-controlplane.sh and with the same stamp file: a binary whose
# stamp matches is not built again. Prints the binary's path.
#
# Usage: hack/build-helm.sh [--force]
# Env:   HELM_VERSION, KYBERNATE_CACHE_DIR, KYBERNATE_BIN_DIR.
set -euo pipefail

# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Helm 3.19 is built on the Kubernetes 1.34 libraries, the release of our go.mod. helm
# template and lint take the Kubernetes version they check kubeVersion against from ldflags
# (helm's Makefile sets them; go install does not): 1.34 here.
HELM_VERSION="${HELM_VERSION:-v3.19.5}"
HELM_KUBE_MINOR="${HELM_KUBE_MINOR:-34}"

parse_force "$@"

bin="${KYBERNATE_BIN_DIR}/helm"
stamp="helm.sh/helm/v3@${HELM_VERSION} kube=1.${HELM_KUBE_MINOR} cgo=0"

# Its own lock, so that it does not wait for a control-plane build.
build_lock .lock-helm

if [[ -z "$(missing "${stamp}" helm)" ]]; then
  log "helm ${HELM_VERSION}: up to date"
  echo "${bin}"
  exit 0
fi

log "helm ${HELM_VERSION}: building (cold: a few minutes on 2 cores)"
out="$(mktemp -d "${KYBERNATE_BUILD_DIR}/out.XXXXXX")"
trap 'rm -rf "${out}"' EXIT
# go install module@version ignores any go.mod around it; GOWORK and -mod must not interfere.
GOWORK=off GOFLAGS='' CGO_ENABLED=0 GOBIN="${out}" go install -trimpath \
  -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION} \
    -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=${HELM_KUBE_MINOR} \
    -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=${HELM_KUBE_MINOR}" \
  "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}"
install_from "${out}" "${stamp}" helm
log "helm ${HELM_VERSION}: ${bin}"
echo "${bin}"
