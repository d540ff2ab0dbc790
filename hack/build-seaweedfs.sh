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

FORCE=false
case "${1:-}" in
  "") ;;
  --force) FORCE=true ;;
  *) die "usage: $0 [--force]" ;;
esac

STAMP_DIR="${KYBERNATE_BIN_DIR}/.stamps"
mkdir -p "${KYBERNATE_BIN_DIR}" "${STAMP_DIR}" "${KYBERNATE_BUILD_DIR}"

# Several test packages may call this script at once: one builds, the others wait.
exec 9>"${KYBERNATE_BUILD_DIR}/.lock-seaweedfs"
flock 9

export GOWORK=off
export CGO_ENABLED=0

stamp="github.com/seaweedfs/seaweedfs@${SEAWEEDFS_VERSION} cgo=0"
if ! ${FORCE} && [[ -x "${KYBERNATE_BIN_DIR}/weed" && "$(cat "${STAMP_DIR}/weed" 2>/dev/null)" == "${stamp}" ]]; then
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
[[ -x "${out}/weed" ]] || die "weed was not built"
# The rename keeps a concurrent reader from seeing half a file.
mv -f "${out}/weed" "${KYBERNATE_BIN_DIR}/weed"
echo "${stamp}" >"${STAMP_DIR}/weed.tmp"
mv -f "${STAMP_DIR}/weed.tmp" "${STAMP_DIR}/weed"
rm -rf "${out}"
log "weed in ${KYBERNATE_BIN_DIR} ($((SECONDS - start))s)"
