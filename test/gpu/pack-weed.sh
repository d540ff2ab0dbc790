#!/usr/bin/env bash
# Packs SeaweedFS's weed (hack/build-seaweedfs.sh, pinned) for the object-store leg of the GPU
# cluster run (scenario 9): GPU_WEED_CARRY (default .gpubin/weed)/weed.xz, about 35 MB. It does
# not fit one call beside the cluster carry (64 MiB in all), so it goes in a call of its own
# just before, on the same warm machine: ignored paths a call brought stay there, and
# run-cluster.sh unpacks .gpubin/weed/weed.xz when it finds it beside its own folder.
#
# Usage: KYBERNATE_CACHE_DIR=... test/gpu/pack-weed.sh   (x86-64, Go, xz)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
dst=${GPU_WEED_CARRY:-$root/.gpubin/weed}
"$root/hack/build-seaweedfs.sh" >&2
bin="${KYBERNATE_BIN_DIR:-${KYBERNATE_CACHE_DIR:-$root/.cache}/bin}/weed"
mkdir -p "$dst"
if [[ ! -s $dst/weed.xz || $dst/weed.xz -ot $bin ]]; then
	xz --lzma2=preset=${XZ_PRESET:-9},dict=192MiB -T2 -c "$bin" >"$dst/weed.xz.tmp" && mv -f "$dst/weed.xz.tmp" "$dst/weed.xz"
fi
echo "pack-weed: $(du -h "$dst/weed.xz" | cut -f1) in $dst (carry it in the call before run-cluster.sh's)"
