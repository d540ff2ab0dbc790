#!/usr/bin/env bash
# Builds Kybernate's container images without a registry or an image builder: each image is
# one layer (a root file system assembled here) written as an OCI image layout and packed into
# a tarball that `ctr images import` reads. When the real node of hack/node-up.sh runs, the
# images are imported into its containerd (namespace k8s.io, where the kubelet finds them).
#
#   kybernate-agent      docker.io/kybernate/kybernate-agent:dev      the node agent
#   kybernate-scheduler  docker.io/kybernate/kybernate-scheduler:dev  kybernate-scheduler (and
#                        kybernate-extender, kybernate-activator)
#                        (both with the glibc they link against: the agent loads NVML and the
#                        CUDA driver with dlopen)
#   pause                docker.io/kybernate/pause:dev                the real node's sandbox
#                                                                     image (test/images/pause)
#   busybox              docker.io/kybernate/busybox:dev              Debian's busybox-static, for
#                                                                     test workloads
#   modelserver-cpu      docker.io/kybernate/modelserver-cpu:dev      the CPU model server of
#                                                                     test/modelserver on Debian's
#                                                                     python3 (standard library only)
#
# Usage: hack/images.sh [--import | --no-import] [IMAGE...]   (default: every image)
#   --import     import into the node's containerd; fail when the node does not run
#   --no-import  only build
#   (neither)    import when the node runs
# Prints the tarballs' paths on stdout.
# Env: KYBERNATE_IMAGES_DIR (default .cache/images of the checkout), KYBERNATE_NODE_DIR (see hack/node-up.sh),
#      KYBERNATE_IMAGE_TAG (default dev).
set -euo pipefail

# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

IMPORT=auto
ALL=(kybernate-agent kybernate-scheduler pause busybox modelserver-cpu)
images=()
for arg in "$@"; do
  case "${arg}" in
    --import) IMPORT=always ;;
    --no-import) IMPORT=never ;;
    kybernate-agent | kybernate-scheduler | pause | busybox | modelserver-cpu) images+=("${arg}") ;;
    *) die "usage: $0 [--import | --no-import] [${ALL[*]}]" ;;
  esac
done
((${#images[@]})) || images=("${ALL[@]}")

TAG="${KYBERNATE_IMAGE_TAG:-dev}"
OUT="${KYBERNATE_IMAGES_DIR}"
mkdir -p "${OUT}/build"
OUT="$(cd "${OUT}" && pwd -P)"

# Two callers (a test and make images) must not write the same tarball at once.
exec 7>"${OUT}/.lock"
flock 7

# gobuild PKG OUTPUT [CGO]: a stripped binary of the working tree. Built as the tests build
# them (cgo on, no -trimpath), so that the packages compiled for one serve the other.
gobuild() {
  (cd "${KYBERNATE_ROOT}" && CGO_ENABLED="${3:-1}" GOFLAGS=-buildvcs=false go build -ldflags='-s -w' -o "$2" "$1")
}

# add_libs ROOTFS BINARY: copies the shared libraries BINARY loads (and the loader) to the
# same paths under ROOTFS.
add_libs() {
  local rootfs="$1" lib
  while read -r lib; do
    [[ -f "${lib}" ]] || continue
    mkdir -p "${rootfs}$(dirname "${lib}")"
    cp -L "${lib}" "${rootfs}${lib}"
  done < <(ldd "$2" | grep -o '/[^ ]*')
}

# add_driver_deps ROOTFS BINARY: copies the glibc libraries that the NVIDIA driver's libcuda.so.1
# and libnvidia-ml.so.1 load (libm, libdl, libpthread, librt) from beside BINARY's libc. The
# driver's folder that the NVIDIA container toolkit (or a hostPath) brings into the container holds
# only the driver's own libraries; without these, dlopen of the driver fails on libm.so.6.
add_driver_deps() {
  local rootfs="$1" libc dir lib
  libc="$(ldd "$2" | grep -o '/[^ ]*/libc\.so\.6')"
  dir="$(dirname "${libc}")"
  for lib in libm.so.6 libdl.so.2 libpthread.so.0 librt.so.1; do
    cp -L "${dir}/${lib}" "${rootfs}${dir}/${lib}"
  done
}

# sha FILE: the hex sha256 of FILE.
sha() { sha256sum "$1" | cut -d' ' -f1; }

# blob LAYOUT FILE: moves FILE into LAYOUT's blobs and prints "DIGEST SIZE".
blob() {
  local digest size
  digest="$(sha "$2")"
  size="$(stat -c %s "$2")"
  mv -f "$2" "$1/blobs/sha256/${digest}"
  echo "sha256:${digest} ${size}"
}

# pack NAME ROOTFS ENTRYPOINT_JSON: writes ${OUT}/NAME.tar, an OCI image layout holding the
# image docker.io/kybernate/NAME:TAG with ROOTFS as its only layer.
pack() {
  local name="$1" rootfs="$2" entrypoint="$3" layout ref layer config manifest
  ref="docker.io/kybernate/${name}:${TAG}"
  layout="$(mktemp -d "${OUT}/build/${name}.XXXXXX")"
  mkdir -p "${layout}/blobs/sha256"
  # A reproducible layer: sorted, owned by root, no timestamps.
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "${rootfs}" -cf "${layout}/layer" .
  read -r layer layer_size < <(blob "${layout}" "${layout}/layer")
  cat >"${layout}/config" <<EOF
{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Entrypoint":${entrypoint},"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["${layer}"]},"history":[{"created_by":"hack/images.sh"}]}
EOF
  read -r config config_size < <(blob "${layout}" "${layout}/config")
  cat >"${layout}/manifest" <<EOF
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"${config}","size":${config_size}},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"${layer}","size":${layer_size}}]}
EOF
  read -r manifest manifest_size < <(blob "${layout}" "${layout}/manifest")
  # io.containerd.image.name is the name ctr import gives the image.
  cat >"${layout}/index.json" <<EOF
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"${manifest}","size":${manifest_size},"annotations":{"io.containerd.image.name":"${ref}","org.opencontainers.image.ref.name":"${TAG}"}}]}
EOF
  echo '{"imageLayoutVersion":"1.0.0"}' >"${layout}/oci-layout"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "${layout}" -cf "${OUT}/${name}.tar.tmp" oci-layout index.json blobs
  mv -f "${OUT}/${name}.tar.tmp" "${OUT}/${name}.tar"
  rm -rf "${layout}"
  log "built ${ref} (${OUT}/${name}.tar, $((layer_size / 1024 / 1024)) MiB)"
}

build_image() {
  local name="$1" rootfs
  rootfs="$(mktemp -d "${OUT}/build/${name}-rootfs.XXXXXX")"
  case "${name}" in
    kybernate-agent)
      # cgo: the agent loads NVML and the CUDA driver with dlopen, so it runs on glibc.
      gobuild ./nodeagent/cmd/kybernate-agent "${rootfs}/kybernate-agent"
      add_libs "${rootfs}" "${rootfs}/kybernate-agent"
      add_driver_deps "${rootfs}" "${rootfs}/kybernate-agent"
      mkdir -p "${rootfs}/tmp" "${rootfs}/run/kybernate"
      chmod 1777 "${rootfs}/tmp"
      pack "${name}" "${rootfs}" '["/kybernate-agent"]'
      ;;
    kybernate-scheduler)
      gobuild ./scheduler/cmd/kybernate-scheduler "${rootfs}/kybernate-scheduler"
      add_libs "${rootfs}" "${rootfs}/kybernate-scheduler"
      # The same image serves extender mode (docs/extender.md).
      gobuild ./scheduler/cmd/kybernate-extender "${rootfs}/kybernate-extender"
      add_libs "${rootfs}" "${rootfs}/kybernate-extender"
      # And the activator of scale to zero (docs/scale-to-zero.md).
      gobuild ./activator/cmd/kybernate-activator "${rootfs}/kybernate-activator"
      add_libs "${rootfs}" "${rootfs}/kybernate-activator"
      mkdir -p "${rootfs}/tmp"
      chmod 1777 "${rootfs}/tmp"
      pack "${name}" "${rootfs}" '["/kybernate-scheduler"]'
      ;;
    pause)
      gobuild ./test/images/pause "${rootfs}/pause" 0
      pack "${name}" "${rootfs}" '["/pause"]'
      ;;
    busybox)
      local busybox=/bin/busybox applet
      if [[ ! -x "${busybox}" ]] || ldd "${busybox}" >/dev/null 2>&1; then
        die "busybox image: ${busybox} is not Debian's static busybox (apt-get install busybox-static)"
      fi
      mkdir -p "${rootfs}/bin" "${rootfs}/tmp"
      chmod 1777 "${rootfs}/tmp"
      cp -L "${busybox}" "${rootfs}/bin/busybox"
      for applet in $("${busybox}" --list); do
        [[ "${applet}" == busybox ]] || ln -sf busybox "${rootfs}/bin/${applet}"
      done
      pack "${name}" "${rootfs}" '["/bin/sh"]'
      ;;
    modelserver-cpu)
      # Debian's python3 with its standard library (without the tests, the build files and
      # the GUI), the shared libraries it and its extension modules load, and the server.
      local python stdlib so
      python="$(readlink -f /usr/bin/python3)"
      [[ -x "${python}" && "${python}" == /usr/bin/python3.* ]] || die "modelserver-cpu image: no Debian python3 at /usr/bin/python3 (apt-get install python3)"
      stdlib="/usr/lib/$(basename "${python}")"
      mkdir -p "${rootfs}/usr/bin" "${rootfs}/usr/lib" "${rootfs}/tmp" "${rootfs}/srv"
      chmod 1777 "${rootfs}/tmp"
      cp -L "${python}" "${rootfs}${python}"
      ln -s "$(basename "${python}")" "${rootfs}/usr/bin/python3"
      add_libs "${rootfs}" "${python}"
      tar -C /usr/lib --exclude='__pycache__' --exclude="$(basename "${stdlib}")/test" --exclude="$(basename "${stdlib}")/config-*" \
        --exclude="$(basename "${stdlib}")/idlelib" --exclude="$(basename "${stdlib}")/tkinter" \
        --exclude="$(basename "${stdlib}")/dist-packages" --exclude="$(basename "${stdlib}")/site-packages" \
        -cf - "$(basename "${stdlib}")" | tar -C "${rootfs}/usr/lib" -xf -
      for so in "${rootfs}${stdlib}"/lib-dynload/*.so; do add_libs "${rootfs}" "${so}"; done
      cp "${KYBERNATE_ROOT}/test/modelserver/modelserver.py" "${rootfs}/srv/modelserver.py"
      pack "${name}" "${rootfs}" '["/usr/bin/python3", "-u", "/srv/modelserver.py"]'
      ;;
  esac
  rm -rf "${rootfs}"
}

start=${SECONDS}
for name in "${images[@]}"; do build_image "${name}"; done

NODE_SOCKET="${KYBERNATE_NODE_DIR}/containerd.sock"
if [[ "${IMPORT}" != never ]]; then
  if [[ -S "${NODE_SOCKET}" ]] && ctr --address "${NODE_SOCKET}" version >/dev/null 2>&1; then
    for name in "${images[@]}"; do
      ctr --address "${NODE_SOCKET}" -n k8s.io images import "${OUT}/${name}.tar" >/dev/null
      log "imported docker.io/kybernate/${name}:${TAG} into the node's containerd"
    done
  elif [[ "${IMPORT}" == always ]]; then
    die "no node containerd at ${NODE_SOCKET} (hack/node-up.sh starts it)"
  fi
fi
log "images ready in $((SECONDS - start))s"
for name in "${images[@]}"; do echo "${OUT}/${name}.tar"; done
