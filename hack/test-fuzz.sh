#!/usr/bin/env bash
# Runs every Go fuzz target of the repository (each `func FuzzX(f *testing.F)` in a _test.go
# file) for FUZZTIME beyond its seed corpus (testdata/fuzz/FuzzX next to it), one after the
# other, printing `go test -json` for `make test-fuzz`. A crash fails the target; go test writes
# the input that crashed to testdata/fuzz/FuzzX: commit it with the fix.
#
# Usage: hack/test-fuzz.sh      Env: FUZZTIME (default 15s)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
FUZZTIME="${FUZZTIME:-15s}"

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
