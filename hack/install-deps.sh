#!/usr/bin/env bash
# Installs the Debian packages that `make test` and the hack/ scripts need, on Debian bookworm:
# the one list of them, each with what needs it. As root, missing packages are installed with
# apt-get; as another user, the script names them, prints the command to install them and fails.
# Go itself (go.mod's version, from go.dev) is not a Debian package here. CRIU >= 4.1 is not in
# bookworm: hack/install-runtime.sh fetches it after calling this script.
#
# Usage: hack/install-deps.sh        (a second run finds everything and takes well under a second)
set -euo pipefail

# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# package                       what needs it
PACKAGES=(
  "make                         the Makefile"
  "git                          hack/verify.sh (git ls-files), go build's version stamps"
  "gcc                          cgo (go-nvml, cuda/) and go test -race"
  "libc6-dev                    cgo and go test -race (C headers, crt files)"
  "ca-certificates              the Go module proxy over HTTPS (go mod download, go run module@version)"
  "protobuf-compiler            protoc: hack/update-codegen.sh, make generate, make verify"
  "libprotobuf-dev              google/protobuf/*.proto that apis/agent/v1/agent.proto imports (protoc)"
  "jq                           hack/build-controlplane.sh (module metadata)"
  "python3                      hack/verify.sh (test/gpu/report_test.py: the GPU results reports)"
  "curl                         hack/cluster-up.sh (health checks of etcd and the control plane)"
  "openssl                      hack/cluster-up.sh and hack/node-up.sh (the cluster's PKI), hack/seaweedfs-up.sh (S3 keys)"
  "iproute2                     hack/lib.sh (ss: free ports), hack/node-up.sh (ip), CRIU (ip)"
  "iptables                     hack/node-up.sh (service routing), CRIU (iptables-restore: network locks)"
  "procps                       hack/node-up.sh (sysctl)"
  "containerd                   test/e2e (hack/containerd.sh), the real node of test/integration/node"
  "runc                         test/e2e, the real node (containerd's runtime; it calls CRIU)"
  "containernetworking-plugins  the real node's CNI (bridge, host-local, loopback)"
  "busybox-static               the test images (hack/build-image.sh, hack/images.sh)"
  "patchelf                     hack/install-runtime.sh (CRIU from trixie, run with trixie's loader)"
  "debian-archive-keyring       hack/install-runtime.sh (verifies the trixie archive CRIU comes from)"
)

need=()
for entry in "${PACKAGES[@]}"; do
  pkg="${entry%% *}"
  [[ "$(dpkg-query -W -f='${Status}' "${pkg}" 2>/dev/null)" == "install ok installed" ]] || need+=("${pkg}")
done
((${#need[@]})) || exit 0

if [[ "$(id -u)" != 0 ]]; then
  log "missing Debian packages:"
  for entry in "${PACKAGES[@]}"; do
    [[ " ${need[*]} " == *" ${entry%% *} "* ]] && printf '  %s\n' "${entry}" >&2
  done
  die "install them as root, then run this again: apt-get install --no-install-recommends ${need[*]}"
fi
log "apt-get install ${need[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
