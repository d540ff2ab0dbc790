#!/usr/bin/env bash
# Runs every Go fuzz target of the repository (each `func FuzzX(f *testing.F)` in a _test.go
# file) for FUZZTIME beyond its seed corpus (testdata/fuzz/FuzzX next to it), one after the
# other, printing `go test -json` for `make test-fuzz`. A crash fails the target; go test writes
# the input that crashed to testdata/fuzz/FuzzX: commit it with the fix.
#
# Go 1.26's fuzz coordinator can fail a target that found nothing with a bare "context deadline
# exceeded" when -fuzztime runs out while a worker is busy (go.dev/issue/75804; fixed in Go
# 1.27.0, not backported to 1.26). The targets are therefore fuzzed with FUZZ_GOTOOLCHAIN, which
# the go command fetches from the Go module proxy once (about 76 MB); the rest of the build stays
# on go.mod's Go.
#
# Usage: hack/test-fuzz.sh      Env: FUZZTIME (default 15s), FUZZ_GOTOOLCHAIN (default go1.27.3)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
FUZZTIME="${FUZZTIME:-15s}"
export GOTOOLCHAIN="${FUZZ_GOTOOLCHAIN:-go1.27.3}"
echo "hack/test-fuzz.sh: fuzzing with $(go version)" >&2

rc=0
n=0
while IFS=: read -r file target; do
  pkg="./$(dirname "${file}")"
  n=$((n + 1))
  echo ">> ${target} (${pkg})" >&2
  go test -json -run '^$' -fuzz "^${target}\$" -fuzztime "${FUZZTIME}" "${pkg}" || rc=1
done < <(git ls-files --cached --others --exclude-standard '*_test.go' |
  xargs -r grep -HoE '^func Fuzz[A-Za-z0-9_]*\(f \*testing\.F\)' |
  sed -E 's/^(.*):func (Fuzz[A-Za-z0-9_]*)\(.*/\1:\2/' | sort -u)
echo "hack/test-fuzz.sh: ${n} fuzz targets, ${FUZZTIME} each" >&2
exit "${rc}"
