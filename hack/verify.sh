#!/usr/bin/env bash
# Fails when the tree is not formatted, vet complains, go.mod/go.sum are not tidy, a generated
# file differs from what `make generate` writes, or a GPU results report is not its suite's
# output. With VERIFY_JSON=FILE it also writes each check's result there as `go test -json`
# events, for the summary of `make test`.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
failed=0
[[ -z "${VERIFY_JSON:-}" ]] || : >"${VERIFY_JSON}"

# check NAME: starts a check; fail marks it (and the script) failed; done records its result.
check() { name="$1" this=0; echo ">> ${name}"; }
fail() { this=1 failed=1; }
done_check() {
  local action=pass
  ((this == 0)) || action=fail
  [[ -z "${VERIFY_JSON:-}" ]] ||
    printf '{"Action":"%s","Package":"hack/verify.sh","Test":"%s"}\n' "${action}" "${name}" >>"${VERIFY_JSON}"
}

check gofmt
unformatted=$(git ls-files -z --cached --others --exclude-standard '*.go' | xargs -0 -r gofmt -l 2>&1 || true)
if [[ -n "$unformatted" ]]; then
	echo "not gofmt-formatted (run gofmt -w):"; echo "$unformatted"; fail
fi
done_check

check "go vet"
go vet ./... || fail
done_check

check "go mod tidy"
if ! go mod tidy -diff; then
	echo "go.mod/go.sum are not tidy (run go mod tidy)"; fail
fi
done_check

check "generated files"
# Generate into a copy of the tree, so that verify never changes the working tree.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git ls-files --cached --others --exclude-standard -z | xargs -0 cp --parents -t "$work"
if ! (cd "$work" && hack/update-codegen.sh >/dev/null); then
	echo "hack/update-codegen.sh failed"; fail
elif ! diff -r -q --exclude=.git "$ROOT/apis" "$work/apis" || ! diff -r -q "$ROOT/manifests/crds" "$work/manifests/crds"; then
	echo "generated files are out of date (run make generate)"; fail
fi
done_check

check "GPU results reports"
# Every committed test/gpu/results report is its suite's output from the measured JSON beside it.
python3 -m unittest discover -s test/gpu -p '*_test.py' || fail
done_check

check "model server (CPU variant)"
# test/modelserver: the inference server of the scale-to-zero tests loads, serves and streams.
python3 -m unittest discover -s test/modelserver -p '*_test.py' || fail
done_check

exit "$failed"
