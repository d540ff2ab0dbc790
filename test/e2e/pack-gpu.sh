#!/usr/bin/env bash
# Prepares the e2e suite for the lent GPU machine (no Go, no package registry, 64 MiB carried)
# in one folder, $E2E_CARRY (default .gpucarry/e2e; git-ignore it and carry it). The suite needs
# no GPU there, only a kernel where CRIU works:
#
#   e2e.test.xz                             this package's test binary (go test -c)
#   containerd-shim-kybernate-v1.xz         built from this tree
#   e2e-agent.xz counter.tar.xz             test/e2e/agent and the counter image (hack/build-image.sh)
#   containerd-shim-runc-v2.xz              containerd v1.7's runc shim (the module go.mod pins),
#                                           for the tests that compare our shim with runc v2
#   containerd.xz runc.xz libseccomp.so.2   taken from test/gpu/pack-container.sh's folder
#   criu.tar.xz                             (run that first), CRIU re-patched for /tmp/kyb/criu
#   iptables.tar.xz                         Debian's iptables (nft and legacy) with its libraries
#                                           and extensions: CRIU locks a container's network
#                                           with iptables-restore, which the machine may lack
#   root/                                   hack/containerd.sh, hack/lib.sh and go.mod: what
#                                           TestMain runs from the source tree
#   run-e2e.sh                              runs it there
#
# Usage: KYBERNATE_CACHE_DIR=... test/e2e/pack-gpu.sh   (x86-64, Go, xz, busybox-static)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
gpucarry=${GPU_CARRY:-$root/.gpucarry}
dst=${E2E_CARRY:-$gpucarry/e2e}
build=$dst.build
for f in containerd.xz runc.xz libseccomp.so.2 criu.tar.xz; do
	[[ -s $gpucarry/$f ]] || { echo "pack-gpu: $gpucarry/$f missing: run test/gpu/pack-container.sh first" >&2; exit 1; }
done
rm -rf "$dst" && mkdir -p "$dst/root/hack" "$build"

(
	cd "$root"
	CGO_ENABLED=1 go build -trimpath -ldflags='-s -w' -o "$build/containerd-shim-kybernate-v1" ./shim/cmd/containerd-shim-kybernate-v1
	CGO_ENABLED=1 go build -trimpath -ldflags='-s -w' -o "$build/e2e-agent" ./test/e2e/agent
	CGO_ENABLED=1 go test -c -trimpath -ldflags='-s -w' -o "$build/e2e.test" ./test/e2e
	hack/build-image.sh "$build/counter.tar" docker.io/kybernate/counter:e2e
)
if [[ ! -x $build/containerd-shim-runc-v2 ]]; then
	v=$(cd "$root" && go list -m -f '{{.Version}}' github.com/containerd/containerd)
	src=$(cd "$root" && go list -m -f '{{.Dir}}' github.com/containerd/containerd)
	tmp=$(mktemp -d)
	cp -r "$src/." "$tmp/" && chmod -R u+w "$tmp"
	(cd "$tmp" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags="-s -w -X github.com/containerd/containerd/version.Version=$v" \
		-o "$build/containerd-shim-runc-v2" ./cmd/containerd-shim-runc-v2)
	rm -rf "$tmp"
fi
for b in containerd-shim-kybernate-v1 e2e-agent e2e.test counter.tar containerd-shim-runc-v2; do
	xz -T2 -9 -c "$build/$b" >"$dst/$b.xz"
done
ipt=$build/iptables
rm -rf "$ipt" && mkdir -p "$ipt/sbin" "$ipt/lib"
cp -L /usr/sbin/xtables-nft-multi /usr/sbin/xtables-legacy-multi "$ipt/sbin/"
cp -rL /usr/lib/x86_64-linux-gnu/xtables "$ipt/xtables"
for l in $(ldd /usr/sbin/xtables-nft-multi /usr/sbin/xtables-legacy-multi | awk '$3 ~ /^\// && $1 !~ /^(libc|ld-linux)/ {print $3}' | sort -u); do
	cp -L "$l" "$ipt/lib/"
done
tar -C "$build" -cJf "$dst/iptables.tar.xz" iptables
cp -f "$gpucarry"/{containerd.xz,runc.xz,libseccomp.so.2,criu.tar.xz} "$dst/"
cp -f "$root"/hack/{containerd.sh,lib.sh} "$dst/root/hack/"
cp -f "$root/go.mod" "$dst/root/"
cp -f "$root/test/e2e/run-gpu.sh" "$dst/run-e2e.sh"
ls -l "$dst"
du -sh "$dst"
