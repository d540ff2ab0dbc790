#!/usr/bin/env bash
# Builds SeaweedFS's weed binary (the S3-compatible object store the storage tests
# run against) from the Go module proxy into .cache/bin, with a stamp file like
# hack/build-controlplane.sh: a binary whose stamp matches is not built again.
#
# Usage: hack/build-seaweedfs.sh [--force]
# Env:   SEAWEEDFS_VERSION, KYBERNATE_CACHE_DIR, KYBERNATE_BIN_DIR.
set -euo pipefail

# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

parse_force "$@"

build_lock .lock-seaweedfs

export GOWORK=off
export CGO_ENABLED=0

stamp="github.com/seaweedfs/seaweedfs@${SEAWEEDFS_VERSION} cgo=0"
if [[ -z "$(missing "${stamp}" weed)" ]]; then
  log "seaweedfs ${SEAWEEDFS_VERSION}: up to date"
  exit 0
fi

mod="${KYBERNATE_BUILD_DIR}/seaweedfs"
mkdir -p "${mod}"
content="$(<"${KYBERNATE_ROOT}/hack/seaweedfs/go.mod.tmpl")"
content="${content//@SEAWEEDFS_VERSION@/${SEAWEEDFS_VERSION}}"
# Only rewritten when it changes, so the go.sum next to it stays valid.
if [[ ! -f "${mod}/go.mod" || "$(<"${mod}/go.mod")" != "${content}" ]]; then
  printf '%s\n' "${content}" >"${mod}/go.mod"
fi

start=${SECONDS}
log "seaweedfs ${SEAWEEDFS_VERSION}: building weed (cold: about 30 min on a busy 2-core machine)"
out="$(mktemp -d "${KYBERNATE_BUILD_DIR}/out.XXXXXX")"
# Moderate parallelism: the build machine is shared.
(cd "${mod}" && GOFLAGS="-mod=mod -buildvcs=false" go build -p "${SEAWEEDFS_BUILD_JOBS:-2}" -trimpath \
  -ldflags "-s -w" -o "${out}/weed" github.com/seaweedfs/seaweedfs/weed)
install_from "${out}" "${stamp}" weed
log "weed in ${KYBERNATE_BIN_DIR} ($((SECONDS - start))s)"
