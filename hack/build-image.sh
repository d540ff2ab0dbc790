#!/usr/bin/env bash
# Builds an OCI image tarball (OCI image layout, one uncompressed layer) by hand, without a
# registry or a container builder: busybox-static with its applets as symlinks in /bin, and the
# e2e counter program (test/e2e/images/counter) as /bin/counter. The result is byte-for-byte
# reproducible; containerd imports it (`ctr images import`, the Go client's Import).
#
# Usage: hack/build-image.sh OUT.tar REF [CMD...]
#   REF   the image name recorded in the tarball, e.g. docker.io/kybernate/counter:e2e
#   CMD   the image's command (default /bin/counter)
set -euo pipefail

# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

(($# >= 2)) || die "usage: $0 OUT.tar REF [CMD...]"
OUT="$1"
REF="$2"
shift 2
CMD=("$@")
((${#CMD[@]})) || CMD=(/bin/counter)

BUSYBOX="${BUSYBOX:-/bin/busybox}"
# The image has no libraries: busybox must be the static build (Debian's busybox-static).
[[ -x "${BUSYBOX}" ]] && { [[ -n "${BUSYBOX_STATIC_OK:-}" ]] || dpkg -s busybox-static >/dev/null 2>&1; } ||
  die "${BUSYBOX} is not a static busybox (Debian: apt-get install busybox-static; another one: BUSYBOX=path BUSYBOX_STATIC_OK=1)"

work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT
rootfs="${work}/rootfs"
mkdir -p "${rootfs}"/{bin,dev,proc,sys,etc,tmp,root}
chmod 1777 "${rootfs}/tmp"
cp "${BUSYBOX}" "${rootfs}/bin/busybox"
for applet in $("${BUSYBOX}" --list); do
  [[ "${applet}" == busybox || -e "${rootfs}/bin/${applet}" ]] || ln -s busybox "${rootfs}/bin/${applet}"
done
install -m 0755 "${KYBERNATE_ROOT}/test/e2e/images/counter" "${rootfs}/bin/counter"
echo 'root:x:0:0:root:/root:/bin/sh' >"${rootfs}/etc/passwd"
echo 'root:x:0:' >"${rootfs}/etc/group"

blobs="${work}/layout/blobs/sha256"
mkdir -p "${blobs}"
# blob FILE: moves FILE into the blob store and prints "DIGEST SIZE".
blob() {
  local sum size
  sum="$(sha256sum "$1" | cut -d' ' -f1)"
  size="$(stat -c %s "$1")"
  mv "$1" "${blobs}/${sum}"
  echo "${sum} ${size}"
}

tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=posix \
  --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
  -C "${rootfs}" -cf "${work}/layer.tar" .
read -r layer_sum layer_size < <(blob "${work}/layer.tar")

cmd_json="$(printf '"%s",' "${CMD[@]}")"
cmd_json="[${cmd_json%,}]"
printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":%s,"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created_by":"hack/build-image.sh"}]}' \
  "${cmd_json}" "${layer_sum}" >"${work}/config.json"
read -r config_sum config_size < <(blob "${work}/config.json")

printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
  "${config_sum}" "${config_size}" "${layer_sum}" "${layer_size}" >"${work}/manifest.json"
read -r manifest_sum manifest_size < <(blob "${work}/manifest.json")

printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
  "${manifest_sum}" "${manifest_size}" "${REF}" "${REF##*:}" >"${work}/layout/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' >"${work}/layout/oci-layout"

mkdir -p "$(dirname "${OUT}")"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "${work}/layout" -cf "${OUT}.tmp" .
mv "${OUT}.tmp" "${OUT}"
log "${REF} -> ${OUT} (manifest sha256:${manifest_sum})"
