#!/usr/bin/env bash
# Fails when the tree is not formatted, vet complains, go.mod/go.sum are not tidy, or a generated
# file differs from what `make generate` writes.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
failed=0

echo ">> gofmt"
unformatted=$(git ls-files -z --cached --others --exclude-standard '*.go' | xargs -0 -r gofmt -l 2>&1 || true)
if [[ -n "$unformatted" ]]; then
	echo "not gofmt-formatted (run gofmt -w):"; echo "$unformatted"; failed=1
fi

echo ">> go vet"
go vet ./... || failed=1

echo ">> go mod tidy"
if ! go mod tidy -diff; then
	echo "go.mod/go.sum are not tidy (run go mod tidy)"; failed=1
fi

echo ">> generated files"
# Generate into a copy of the tree, so that verify never changes the working tree.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git ls-files --cached --others --exclude-standard -z | xargs -0 cp --parents -t "$work"
(cd "$work" && hack/update-codegen.sh >/dev/null)
if ! diff -r -q --exclude=.git "$ROOT/apis" "$work/apis" || ! diff -r -q "$ROOT/manifests/crds" "$work/manifests/crds"; then
	echo "generated files are out of date (run make generate)"; failed=1
fi

exit "$failed"
