#!/usr/bin/env bash
# Resume time per storage tier of a container holding BALLAST_MIB (default 8192) MiB of random
# bytes, against its cold start in the same run: test/e2e's BenchmarkResumePerTier on real
# containerd, runc, CRIU, the shim, the agent's disk tier and SeaweedFS (root). Writes
# test/bench/results/tiers-<date>.md from the benchmark's own output and exits non-zero when
# the benchmark failed (a restore that was not the same process fails it).
#
# Usage: hack/bench-tiers.sh   (make bench-tiers)
set -euo pipefail

# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "${KYBERNATE_ROOT}"

mib="${BALLAST_MIB:-8192}"
day="$(date -u +%Y-%m-%d)"
out="test/bench/results/tiers-${day}.md"
raw="$(mktemp)"
trap 'rm -f "${raw}"' EXIT
load_before="$(cut -d' ' -f1 /proc/loadavg)"
cmd=(go test -run '^$' -bench '^BenchmarkResumePerTier$' -benchtime 1x -timeout 90m -v ./test/e2e)
log "BALLAST_MIB=${mib} ${cmd[*]}"
KYBERNATE_BENCH_BALLAST_MIB="${mib}" "${cmd[@]}" 2>&1 | tee "${raw}" ||
  die "the benchmark failed (output above); no results written"
load_after="$(cut -d' ' -f1 /proc/loadavg)"

# metric UNIT: the benchmark's figure for UNIT.
metric() {
  awk -v unit="$1" '/^BenchmarkResumePerTier/ { for (i = 3; i < NF; i++) if ($(i + 1) == unit) print $i }' "${raw}"
}
cold="$(metric cold-start-s)"
[[ -n "${cold}" ]] || die "the benchmark printed no figures"
# row TIER SPILL_UNIT RESUME_UNIT: a table row with the rates and the ratio to the cold start.
row() {
  local spill resume
  spill="$(metric "$2")" resume="$(metric "$3")"
  awk -v t="$1" -v s="${spill}" -v r="${resume}" -v c="${cold}" -v mib="${mib}" 'BEGIN {
    gb = mib * 1048576 / 1e9
    printf "| %s | %.1f s (%.2f GB/s) | %.1f s (%.2f GB/s) | %.2fx |\n", t, s, gb / s, r, gb / r, c / r }'
}

{
  echo "# Resume time per storage tier: a ${mib} MiB container (${day}; written by hack/bench-tiers.sh)"
  echo
  echo "\`BALLAST_MIB=${mib} make bench-tiers\`: \`${cmd[*]}\`. One round on real containerd, runc and CRIU with"
  echo "containerd-shim-kybernate-v1 and the agent (test/e2e/agent), its disk tier in a folder of the test and"
  echo "SeaweedFS (\`weed mini\` on loopback) as the object store. The container holds ${mib} MiB of random bytes in"
  echo "its anonymous memory (a dd of one block, COUNTER_BALLAST_MIB). Machine: $(nproc) CPUs, $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo),"
  echo "kernel $(uname -r); load average ${load_before} before, ${load_after} after."
  echo
  echo "Baseline: the same container's cold start, until its memory is filled again: **$(printf '%.1f' "${cold}") s**. That"
  echo "is the cheapest cold start there is (random bytes from the kernel); a real workload reloads or recomputes what"
  echo "it held. Spill: from the running container to the tier (CRIU dump, SHA-256, AES-256-GCM, fsync; for the"
  echo "object store the disk spill, then the upload, then the disk copy deleted); the container stops. Resume: from"
  echo "the create of the container again to the restored process counting on (fetch, verify, decrypt, CRIU"
  echo "restore); each was checked to be the same process (its token) going on at N+1."
  echo
  echo "| tier | spill | resume | cold start / resume (above 1: the resume is faster) |"
  echo "|---|---|---|---|"
  row "local disk" spill-disk-s resume-disk-s
  row "object store (SeaweedFS)" spill-objectstore-s resume-objectstore-s
  echo
  echo "A GPU pod's parked memory takes the same path inside its processes' memory; resuming it from host memory"
  echo "instead is the driver's restore alone (DESIGN.md: about 7 GB/s on an H200). The benchmark's log:"
  echo
  echo '```'
  grep -E '^(Benchmark|    tiers_bench_test)' "${raw}" | sed 's/^ *//'
  echo '```'
} >"${out}"
log "wrote ${out}"
