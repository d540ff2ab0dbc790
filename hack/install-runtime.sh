#!/usr/bin/env bash
# Installs what the runtime e2e tests need on a Debian bookworm machine (as root): the Debian
# packages of hack/install-deps.sh (containerd, runc, iptables and iproute2 that CRIU calls,
# busybox-static for the test images, patchelf, ...), and CRIU >= 4.1. Bookworm's criu 3.17
# fails on kernels >= 6.13 ("Unexpected rt vDSO area bounds"), so CRIU comes from Debian trixie:
# fetched with an apt configuration of its own (sources, lists and downloads under the cache
# folder; the machine's apt is not touched),
# unpacked with dpkg -x together with the trixie libraries it needs (glibc included), and
# patched with patchelf to load those libraries through trixie's dynamic loader.
#
# Usage: hack/install-runtime.sh [--force]   prints the folder holding `criu` (put it first on
# PATH). A second run finds the cached CRIU and takes well under a second.
# Env:   KYBERNATE_CACHE_DIR, CRIU_SUITE (trixie), CRIU_MIRROR (http://deb.debian.org/debian).
set -euo pipefail

# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

parse_force "$@"

CRIU_SUITE="${CRIU_SUITE:-trixie}"
CRIU_MIRROR="${CRIU_MIRROR:-http://deb.debian.org/debian}"
CRIU_MIN="4.1"
RUNTIME_DIR="${KYBERNATE_CACHE_DIR}/runtime"
CRIU_DIR="${RUNTIME_DIR}/criu"
mkdir -p "${RUNTIME_DIR}"

# Two test runs may call this at once: one installs, the other waits.
exec 9>"${RUNTIME_DIR}/.lock"
flock 9

# Debian packages (containerd, runc, iptables, iproute2, busybox-static, patchelf, ...): the
# project's one list.
"$(dirname "${BASH_SOURCE[0]}")/install-deps.sh"

# criu_ok BINARY: true when BINARY runs and is at least CRIU_MIN.
criu_ok() {
  local v
  v="$("$1" --version 2>/dev/null | awk '/^Version:/ { print $2 }')" || return 1
  [[ -n "${v}" ]] && [[ "$(printf '%s\n%s\n' "${CRIU_MIN}" "${v}" | sort -V | head -n1)" == "${CRIU_MIN}" ]]
}

if ! ${FORCE} && criu_ok "${CRIU_DIR}/bin/criu"; then
  echo "${CRIU_DIR}/bin"
  exit 0
fi

log "fetching criu from Debian ${CRIU_SUITE} into ${CRIU_DIR}"
APT_DIR="${RUNTIME_DIR}/apt"
rm -rf "${APT_DIR}" "${CRIU_DIR}.new"
mkdir -p "${APT_DIR}"/{etc/sources.list.d,etc/preferences.d,etc/apt.conf.d,state/lists/partial,cache/archives/partial,debs}
touch "${APT_DIR}/state/status"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] ${CRIU_MIRROR} ${CRIU_SUITE} main" >"${APT_DIR}/etc/sources.list"
# Every path apt reads or writes points into APT_DIR; the status file is empty, so apt resolves
# the whole dependency closure as if nothing were installed.
apt_opts=(
  -o "Dir::Etc=${APT_DIR}/etc"
  -o "Dir::Etc::SourceList=${APT_DIR}/etc/sources.list"
  -o "Dir::Etc::SourceParts=${APT_DIR}/etc/sources.list.d"
  -o "Dir::Etc::Preferences=${APT_DIR}/etc/preferences"
  -o "Dir::Etc::PreferencesParts=${APT_DIR}/etc/preferences.d"
  -o "Dir::Etc::Parts=${APT_DIR}/etc/apt.conf.d"
  -o "Dir::State=${APT_DIR}/state"
  -o "Dir::State::status=${APT_DIR}/state/status"
  -o "Dir::Cache=${APT_DIR}/cache"
  -o "APT::Architecture=amd64"
  -o "APT::Architectures=amd64"
  -o "APT::Sandbox::User=root"
  -o "Debug::NoLocking=1"
)
apt-get "${apt_opts[@]}" update -qq
mapfile -t pkgs < <(apt-cache "${apt_opts[@]}" depends --recurse --no-recommends --no-suggests \
  --no-conflicts --no-breaks --no-replaces --no-enhances criu | grep -v -e '^ ' -e '^<' | sort -u)
((${#pkgs[@]})) || die "apt found no criu in ${CRIU_SUITE}"
(cd "${APT_DIR}/debs" && apt-get "${apt_opts[@]}" download "${pkgs[@]}" >/dev/null)

root="${CRIU_DIR}.new/root"
mkdir -p "${root}" "${CRIU_DIR}.new/bin"
for deb in "${APT_DIR}"/debs/*.deb; do dpkg -x "${deb}" "${root}"; done
libdir="${CRIU_DIR}/root/usr/lib/x86_64-linux-gnu"
cp "${root}/usr/sbin/criu" "${CRIU_DIR}.new/bin/criu"
# DT_RPATH (not RUNPATH) so that the libraries' own dependencies come from trixie too.
patchelf --set-interpreter "${libdir}/ld-linux-x86-64.so.2" --force-rpath --set-rpath "${libdir}" \
  "${CRIU_DIR}.new/bin/criu"
dpkg-deb -f "${APT_DIR}"/debs/criu_*.deb Version >"${CRIU_DIR}.new/VERSION"
rm -rf "${CRIU_DIR}" "${APT_DIR}"
mv "${CRIU_DIR}.new" "${CRIU_DIR}"
criu_ok "${CRIU_DIR}/bin/criu" || die "the unpacked criu does not run: $("${CRIU_DIR}/bin/criu" --version 2>&1 | head -n3)"
log "criu $(<"${CRIU_DIR}/VERSION") in ${CRIU_DIR}/bin"
echo "${CRIU_DIR}/bin"
