#!/usr/bin/env bash
# Prepares what run-container.sh needs on the GPU machine (no Go, no package registry, 64 MiB
# carried) in one folder, $GPU_CARRY (default .gpucarry; git-ignore it and carry it):
#
#   etcd.xz kube-apiserver.xz              control plane, from $KYBERNATE_CACHE_DIR/bin
#   kybernate-agent.xz agentctl.xz          built from this tree
#   containerd-shim-kybernate-v1.xz         built from this tree
#   containerd.xz                           containerd v1.7 (the module version go.mod pins),
#                                           built without CRI, btrfs, devmapper, zfs, aufs and
#                                           tracing: half the size of Debian's, and no CRI needed;
#                                           containers are created by agentctl ctr-run, not ctr
#   runc.xz libseccomp.so.2                 Debian's runc and the library it links
#   criu.tar.xz                             CRIU 4.1 from hack/install-runtime.sh with only the
#                                           libraries it loads, re-patched for /tmp/kyb/criu
#   pki/ crds.json scripts/                 throwaway PKI, the CRDs as JSON, test/gpu scripts
#
# Usage: KYBERNATE_CACHE_DIR=... test/gpu/pack-container.sh   (x86-64, Go, patchelf, xz)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cache=${KYBERNATE_CACHE_DIR:-$root/.cache}
dst=${GPU_CARRY:-$root/.gpucarry}
build=$dst.build
mkdir -p "$dst" "$build"

(
	cd "$root"
	CGO_ENABLED=1 go build -trimpath -ldflags='-s -w' -o "$build/kybernate-agent" ./nodeagent/cmd/kybernate-agent
	CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$build/agentctl" ./test/gpu/agentctl
	CGO_ENABLED=1 go build -trimpath -ldflags='-s -w' -o "$build/containerd-shim-kybernate-v1" ./shim/cmd/containerd-shim-kybernate-v1
)
if [[ ! -x $build/containerd ]]; then
	v=$(cd "$root" && go list -m -f '{{.Version}}' github.com/containerd/containerd)
	src=$(cd "$root" && go list -m -f '{{.Dir}}' github.com/containerd/containerd)
	tmp=$(mktemp -d)
	cp -r "$src/." "$tmp/" && chmod -R u+w "$tmp"
	(cd "$tmp" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags="-s -w -X github.com/containerd/containerd/version.Version=$v" \
		-tags 'no_aufs no_btrfs no_cri no_devmapper no_tracing no_zfs' -o "$build/containerd" ./cmd/containerd)
	rm -rf "$tmp"
fi
cp -f "$(command -v runc)" "$build/runc"
cp -fL "$(ldd "$(command -v runc)" | awk '/libseccomp/ {print $3}')" "$dst/libseccomp.so.2"

pack() { # SRC
	local out=$dst/$(basename "$1").xz
	[[ -s $out && $out -nt $1 ]] && return 0
	xz -T2 -9 -c "$1" >"$out.tmp" && mv -f "$out.tmp" "$out"
}
for b in "$cache/bin/etcd" "$cache/bin/kube-apiserver" "$build/kybernate-agent" "$build/agentctl" \
	"$build/containerd-shim-kybernate-v1" "$build/containerd" "$build/runc"; do
	pack "$b"
done

pack_criu "$cache/runtime/criu" "$build" "$dst"

python3 - "$root/manifests/crds" "$dst/crds.json" <<'PY'
import glob, json, sys, yaml
json.dump([yaml.safe_load(open(p)) for p in sorted(glob.glob(sys.argv[1] + "/*.yaml"))], open(sys.argv[2], "w"))
PY

pki=$dst/pki
if [[ ! -s $pki/admin.crt ]]; then
	rm -rf "$pki" && mkdir -p "$pki"
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$pki/ca.key" -out "$pki/ca.crt" \
		-days 30 -subj /CN=kybernate-gpu-test-ca -addext basicConstraints=critical,CA:TRUE \
		-addext keyUsage=critical,keyCertSign,cRLSign,digitalSignature 2>/dev/null
	cert() {
		local name=$1 subj=$2
		shift 2
		openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$pki/$name.key" -out "$pki/$name.csr" -subj "$subj" 2>/dev/null
		openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -set_serial "0x$(openssl rand -hex 16)" \
			-days 30 -out "$pki/$name.crt" -extfile <(printf '%s\n' basicConstraints=critical,CA:FALSE keyUsage=critical,digitalSignature "$@") 2>/dev/null
		rm -f "$pki/$name.csr"
	}
	cert apiserver /CN=kube-apiserver extendedKeyUsage=serverAuth subjectAltName=IP:127.0.0.1,DNS:localhost
	cert admin /O=system:masters/CN=kybernate-gpu-admin extendedKeyUsage=clientAuth
	openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$pki/sa.key" 2>/dev/null
	openssl pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
	rm -f "$pki/ca.key"
fi

mkdir -p "$dst/scripts"
cp -f "$root"/test/gpu/{run-container.sh,container_suite.py,train.py} "$dst/scripts/"
rm -rf "$build/criu"
ls -l "$dst"
du -sh "$dst"
