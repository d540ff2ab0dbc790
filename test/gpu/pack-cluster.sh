#!/usr/bin/env bash
# Prepares what run-cluster.sh needs on the lent GPU machine (no Go, no package registry, 64 MiB
# carried) in one folder, $GPU_CLUSTER_CARRY (default .gpubin/cluster; git-ignored: carry it):
#
#   kyb.xz              one multi-call binary (test/gpu/cluster/multicall): etcd, kube-apiserver,
#                       kube-controller-manager, kube-scheduler, kubelet, kubectl, kybernate-scheduler,
#                       kybernate-agent, kybernate-activator, containerd-shim-kybernate-v1, ctr-import; Kubernetes and etcd
#                       at the versions hack/lib.sh names, this tree for the rest. Separate binaries
#                       would not fit the 64 MiB; linked once, shared dependencies are stored once
#   containerd.xz       containerd 1.7 (the module go.mod pins) with CRI, without aufs, btrfs,
#                       devmapper, zfs and tracing
#   runc.xz, libseccomp.so.2, pause.xz (test/images/pause)
#   criu.tar.xz         CRIU from hack/install-runtime.sh with the libraries it loads, for
#                       /tmp/kyb/criu (the storage tiers spill containers with it: scenario 8)
#   pki/                a throwaway CA (with its key: kube-controller-manager signs with it) and the
#                       certificates of the control plane, the admin and the kubelet (node kyb-gpu-node)
#   repo/               manifests/, test/gpu/*.py and hack/'s SeaweedFS scripts of this tree: what the
#                       run installs and runs (SeaweedFS itself: pack-weed.sh, a call of its own)
#   run-cluster.sh
#
# Usage: KYBERNATE_CACHE_DIR=... test/gpu/pack-cluster.sh   (x86-64, Go, xz, openssl)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=hack/lib.sh
source "$root/hack/lib.sh"
dst=${GPU_CLUSTER_CARRY:-$root/.gpubin/cluster}
# Its own build folder per checkout (GPU_CLUSTER_BUILD): the build module names this tree.
build=${GPU_CLUSTER_BUILD:-$KYBERNATE_CACHE_DIR/build/gpu-cluster}
mkdir -p "$dst" "$build"

# ---------------------------------------------------------------- the multi-call binary
mod=$build/multicall
mkdir -p "$mod"
staging="v0.${KUBE_VERSION#v1.}"
replaces="$(sed -n '/^replace (/,/^)/p' "$root/go.mod" | grep '=>')"
shopt -u patsub_replacement 2>/dev/null || true
c="$(<"$root/test/gpu/cluster/multicall/go.mod.txt")"
c="${c//@KUBE_VERSION@/$KUBE_VERSION}"
c="${c//@STAGING_VERSION@/$staging}"
c="${c//@ETCD_VERSION@/$ETCD_VERSION}"
c="${c//@ROOT@/$root}"
c="${c//@STAGING_REPLACES@/$replaces}"
cp -f "$root/test/gpu/cluster/multicall/main.go.txt" "$mod/main.go"
if [[ ! -f $mod/go.mod.rendered || "$(<"$mod/go.mod.rendered")" != "$c" ]]; then
	printf '%s\n' "$c" >"$mod/go.mod"
	(cd "$mod" && GOWORK=off GOFLAGS="-mod=mod -buildvcs=false" go mod tidy)
	printf '%s\n' "$c" >"$mod/go.mod.rendered"
fi
major="${KUBE_VERSION#v}" && major="${major%%.*}"
minor="${KUBE_VERSION#v*.}" && minor="${minor%%.*}"
# -z lazy: kubectl's kustomize imports Go's plugin package, for which the Go linker asks for
# immediate binding (-z now); go-nvml (the agent's NVML) leaves NVML's symbols undefined and
# binds them lazily after its dlopen of libnvidia-ml.so.1, so with -z now kyb would not start
# ("undefined symbol: nvmlGpmMetricsGet"). The last -z wins; kyb loads no plugin.
ld="-s -w -extldflags=-Wl,-z,lazy"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ld+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done
log "building kyb (cold: about 20 min on 2 cores)"
(cd "$mod" && GOWORK=off GOFLAGS="-mod=mod -buildvcs=false" CGO_ENABLED=1 CGO_CFLAGS=-Wno-deprecated-declarations \
	go build -trimpath -ldflags "$ld" -o "$build/kyb" .)

# ---------------------------------------------------------------- containerd 1.7 with CRI
if [[ ! -x $build/containerd ]]; then
	v=$(cd "$root" && go list -m -f '{{.Version}}' github.com/containerd/containerd)
	src=$(cd "$root" && go list -m -f '{{.Dir}}' github.com/containerd/containerd)
	tmp=$(mktemp -d)
	cp -r "$src/." "$tmp/" && chmod -R u+w "$tmp"
	(cd "$tmp" && GOWORK=off GOFLAGS="-mod=mod -buildvcs=false" CGO_ENABLED=0 go build -trimpath \
		-ldflags="-s -w -X github.com/containerd/containerd/version.Version=$v" \
		-tags 'no_aufs no_btrfs no_devmapper no_tracing no_zfs' -o "$build/containerd" ./cmd/containerd)
	rm -rf "$tmp"
fi
(cd "$root" && CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$build/pause" ./test/images/pause)
cp -fp "$(command -v runc)" "$build/runc"
cp -fL "$(ldd "$(command -v runc)" | awk '/libseccomp/ {print $3}')" "$dst/libseccomp.so.2"

pack_criu "$KYBERNATE_CACHE_DIR/runtime/criu" "$build" "$dst"

for b in kyb containerd runc pause; do
	if [[ ! -s $dst/$b.xz || $dst/$b.xz -ot $build/$b ]]; then
		# One dictionary over the whole binary: its parts share much.
		xz --lzma2=preset=${XZ_PRESET:-9},dict=192MiB -c "$build/$b" >"$dst/$b.xz.tmp" && mv -f "$dst/$b.xz.tmp" "$dst/$b.xz"
	fi
done

# ---------------------------------------------------------------------------------- PKI
pki=$dst/pki
if [[ ! -s $pki/kubelet.crt ]]; then
	rm -rf "$pki" && mkdir -p "$pki"
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$pki/ca.key" -out "$pki/ca.crt" \
		-days 30 -subj /CN=kybernate-gpu-cluster-ca -addext basicConstraints=critical,CA:TRUE \
		-addext keyUsage=critical,keyCertSign,cRLSign,digitalSignature 2>/dev/null
	cert() {
		local name=$1 subj=$2
		shift 2
		openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$pki/$name.key" \
			-out "$pki/$name.csr" -subj "$subj" 2>/dev/null
		openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -set_serial "0x$(openssl rand -hex 16)" \
			-days 30 -out "$pki/$name.crt" \
			-extfile <(printf '%s\n' basicConstraints=critical,CA:FALSE keyUsage=critical,digitalSignature "$@") 2>/dev/null
		rm -f "$pki/$name.csr"
	}
	cert apiserver /CN=kube-apiserver extendedKeyUsage=serverAuth \
		subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc
	cert admin /O=system:masters/CN=kybernate-gpu-admin extendedKeyUsage=clientAuth
	cert kube-controller-manager /CN=system:kube-controller-manager extendedKeyUsage=clientAuth
	cert kube-scheduler /CN=system:kube-scheduler extendedKeyUsage=clientAuth
	cert kubelet /O=system:nodes/CN=system:node:kyb-gpu-node extendedKeyUsage=clientAuth
	openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$pki/sa.key" 2>/dev/null
	openssl pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
fi

# ------------------------------------------------------------------ scripts and manifests
rm -rf "$dst/repo" && mkdir -p "$dst/repo/test/gpu" "$dst/repo/test/modelserver" "$dst/repo/hack"
cp -r "$root/manifests" "$dst/repo/"
cp -f "$root"/test/gpu/{cluster_suite.py,cluster_node.py,cluster_images.py,cluster_scenarios.py,cluster_report.py,report_common.py,losses.py,train.py} \
	"$dst/repo/test/gpu/"
cp -f "$root"/test/gpu/{cluster_wake.py,cluster_wake_report.py,cluster_tiers.py} "$dst/repo/test/gpu/"
cp -f "$root"/test/modelserver/modelserver.py "$dst/repo/test/modelserver/"
# Scenario 9 starts SeaweedFS (pack-weed.sh) with the project's own scripts.
cp -f "$root"/hack/{lib.sh,seaweedfs-up.sh,seaweedfs-down.sh} "$dst/repo/hack/"
cp -f "$root/test/gpu/run-cluster.sh" "$dst/"
echo "$(cd "$root" && git describe --always --dirty 2>/dev/null || echo unknown) ($(cd "$root" && git log -1 --format=%s 2>/dev/null))" >"$dst/repo/BUILD"
ls -l "$dst"
du -sh "$dst"
