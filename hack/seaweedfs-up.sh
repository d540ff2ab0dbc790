#!/usr/bin/env bash
# Starts a single-process SeaweedFS (`weed mini`: master, volume, filer and S3 gateway in one
# process) as an S3-compatible object store on loopback (or SEAWEEDFS_IP), with its data in
# DIR. Every port is picked free; the web UIs, WebDAV, the Iceberg and Lance endpoints and telemetry are off.
# Writes DIR/s3.env (S3_ENDPOINT, S3_BUCKET, S3_REGION, S3_ACCESS_KEY_ID,
# S3_SECRET_ACCESS_KEY; the keys are made up per start) and DIR/weed.pid, and returns once the
# S3 endpoint answers. Stop it with hack/seaweedfs-down.sh DIR.
#
# Usage: hack/seaweedfs-up.sh DIR
# Env:   KYBERNATE_BIN_DIR (weed from hack/build-seaweedfs.sh), S3_BUCKET (default kybernate),
#        SEAWEEDFS_IP (default 127.0.0.1: the address it binds and serves on; a real node's pods
#        reach the node's bridge address, not its loopback).
set -euo pipefail

# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $# -eq 1 ]] || die "usage: $0 DIR"
DIR="$(mkdir -p "$1" && cd "$1" && pwd -P)"
WEED="${KYBERNATE_BIN_DIR}/weed"
[[ -x "${WEED}" ]] || die "${WEED} missing: run hack/build-seaweedfs.sh"
if [[ -f "${DIR}/weed.pid" ]] && pid_matches "$(<"${DIR}/weed.pid")" "${WEED}" "${DIR}"; then
  die "a weed already runs for ${DIR} (pid $(<"${DIR}/weed.pid"))"
fi

bucket="${S3_BUCKET:-kybernate}"
ip="${SEAWEEDFS_IP:-127.0.0.1}"
access_key="kyb$(openssl rand -hex 8)"
secret_key="$(openssl rand -hex 20)"
mkdir -p "${DIR}/data"
umask 077
cat >"${DIR}/s3.json" <<JSON
{"identities": [{"name": "kybernate",
  "credentials": [{"accessKey": "${access_key}", "secretKey": "${secret_key}"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
JSON

# pick_port sets the variable it is given.
master='' master_grpc='' volume='' volume_grpc='' filer='' filer_grpc='' s3='' s3_grpc='' admin='' admin_grpc=''
pick_port master
pick_port master_grpc
pick_port volume
pick_port volume_grpc
pick_port filer
pick_port filer_grpc
pick_port s3
pick_port s3_grpc
pick_port admin
pick_port admin_grpc

# setsid: the store outlives this script and is not in the caller's process group.
setsid "${WEED}" mini -dir="${DIR}/data" -ip="${ip}" -ip.bind="${ip}" \
  -master.port="${master}" -master.port.grpc="${master_grpc}" -master.telemetry=false \
  -volume.port="${volume}" -volume.port.grpc="${volume_grpc}" \
  -filer.port="${filer}" -filer.port.grpc="${filer_grpc}" \
  -s3.port="${s3}" -s3.port.grpc="${s3_grpc}" -s3.port.iceberg=0 -s3.port.lance=0 \
  -s3.config="${DIR}/s3.json" -bucket="${bucket}" \
  -webdav=false -admin.ui=false \
  -admin.port="${admin}" -admin.port.grpc="${admin_grpc}" -admin.port.legacy=0 \
  </dev/null >"${DIR}/weed.log" 2>&1 &
pid=$!
echo "${pid}" >"${DIR}/weed.pid"
# seaweedfs-down.sh stops the binary that was started, whatever KYBERNATE_BIN_DIR says then.
echo "${WEED}" >"${DIR}/weed.bin"

cat >"${DIR}/s3.env" <<ENV
S3_ENDPOINT=${ip}:${s3}
S3_BUCKET=${bucket}
S3_REGION=us-east-1
S3_ACCESS_KEY_ID=${access_key}
S3_SECRET_ACCESS_KEY=${secret_key}
ENV

# http_status PORT PATH: the status code of a GET to weed, empty when nothing answers.
http_status() {
  local line
  { exec 3<>"/dev/tcp/${ip}/$1"; } 2>/dev/null || return 0
  printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$2" "${ip}" >&3
  IFS=' ' read -r -t 5 _ line _ <&3 || true
  exec 3>&-
  echo "${line}"
}

# Ready when the S3 gateway answers (an anonymous request is refused with 403; callers create
# the bucket if the startup has not yet).
deadline=$((SECONDS + ${SEAWEEDFS_START_TIMEOUT:-120}))
until [[ "$(http_status "${s3}" "/${bucket}")" =~ ^[2-4][0-9][0-9]$ ]]; do
  if ! pid_matches "${pid}" "${WEED}"; then
    tail -20 "${DIR}/weed.log" >&2 || true
    die "weed exited while starting (log: ${DIR}/weed.log)"
  fi
  if ((SECONDS > deadline)); then
    tail -20 "${DIR}/weed.log" >&2 || true
    die "weed's S3 endpoint did not answer within ${SEAWEEDFS_START_TIMEOUT:-120}s (log: ${DIR}/weed.log)"
  fi
  sleep 0.5
done
log "seaweedfs (pid ${pid}) serves S3 on ${ip}:${s3}, bucket ${bucket}; data in ${DIR}"
