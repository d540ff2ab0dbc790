#!/usr/bin/env bash
# Stops the SeaweedFS that hack/seaweedfs-up.sh started for DIR: SIGTERM, then SIGKILL after
# 15 s, and only when DIR/weed.pid names a weed whose command line has DIR. With --purge, DIR
# is removed too.
#
# Usage: hack/seaweedfs-down.sh DIR [--purge]
set -euo pipefail

# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $# -ge 1 ]] || die "usage: $0 DIR [--purge]"
[[ -d "$1" ]] || { log "no folder $1"; exit 0; }
DIR="$(cd "$1" && pwd -P)"
WEED="$(cat "${DIR}/weed.bin" 2>/dev/null || echo "${KYBERNATE_BIN_DIR}/weed")"

if [[ -f "${DIR}/weed.pid" ]]; then
  pid="$(<"${DIR}/weed.pid")"
  if pid_matches "${pid}" "${WEED}" "${DIR}"; then
    kill -TERM "${pid}" 2>/dev/null || true
    deadline=$((SECONDS + 15))
    while pid_matches "${pid}" "${WEED}" "${DIR}" && ((SECONDS < deadline)); do sleep 0.2; done
    if pid_matches "${pid}" "${WEED}" "${DIR}"; then
      log "weed (pid ${pid}) did not stop on SIGTERM; killing it"
      kill -KILL "${pid}" 2>/dev/null || true
    fi
  fi
  if pid_matches "${pid}" "${WEED}" "${DIR}"; then
    die "weed (pid ${pid}) is still running"
  fi
  rm -f "${DIR}/weed.pid"
fi
if [[ "${2:-}" == --purge ]]; then
  rm -rf "${DIR}"
fi
