#!/usr/bin/env bash
# Prepares what run-agent.sh needs on the GPU machine (which has no Go) in
# .gpubin/agent-run/ (git-ignored; carry this one folder, not .gpubin):
#
#   etcd.xz kube-apiserver.xz kubectl.xz   control plane, from .cache/bin (hack/build-controlplane.sh)
#   kybernate-agent.xz agentctl.xz         built here (x86-64; the agent needs cgo)
#   cuda-test.xz                           the raw driver path of run-agent-bench.sh (cgo)
#   pki/                                   CA, apiserver serving cert, admin client cert
#                                          (O=system:masters), service-account key pair
#
# xz because the GPU machine may lack zstd; python3's lzma reads it there if xz is missing.
# The working tree plus this folder must stay under the 64 MiB a run carries (about 52 MiB).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
dst=$root/.gpubin/agent-run
cache=${KYBERNATE_CACHE_DIR:-$root/.cache}/bin
mkdir -p "$dst" "$root/.gpubin/build"

(
	cd "$root"
	CGO_ENABLED=1 go build -trimpath -ldflags='-s -w' -o .gpubin/build/kybernate-agent ./nodeagent/cmd/kybernate-agent
	CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o .gpubin/build/agentctl ./test/gpu/agentctl
	CGO_ENABLED=1 go build -trimpath -ldflags='-s -w' -o .gpubin/build/cuda-test ./cuda/cmd/cuda-test
)

# pack SRC: SRC -> $dst/NAME.xz unless that is newer.
pack() {
	local src=$1 out
	out=$dst/$(basename "$src").xz
	[[ -s $out && $out -nt $src ]] && return 0
	[[ -x $src ]] || { echo "pack-agent.sh: no $src (run hack/build-controlplane.sh)" >&2; exit 2; }
	xz -T2 -6 -c "$src" >"$out.tmp"
	mv -f "$out.tmp" "$out"
}
for b in "$cache/etcd" "$cache/kube-apiserver" "$cache/kubectl" "$root/.gpubin/build/kybernate-agent" "$root/.gpubin/build/agentctl" "$root/.gpubin/build/cuda-test"; do
	pack "$b"
done

# A throwaway PKI for an isolated machine that lives for minutes.
pki=$dst/pki
if [[ ! -s $pki/admin.crt ]]; then
	rm -rf "$pki"
	mkdir -p "$pki"
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$pki/ca.key" -out "$pki/ca.crt" \
		-days 30 -subj /CN=kybernate-gpu-test-ca -addext basicConstraints=critical,CA:TRUE \
		-addext keyUsage=critical,keyCertSign,cRLSign,digitalSignature 2>/dev/null
	cert() { # NAME SUBJECT EXTENSION...
		local name=$1 subj=$2
		shift 2
		openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$pki/$name.key" \
			-out "$pki/$name.csr" -subj "$subj" 2>/dev/null
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

ls -l "$dst"
du -sh "$dst"
