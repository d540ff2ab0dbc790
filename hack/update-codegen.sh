#!/usr/bin/env bash
# Regenerates every generated file of the repository: deepcopy, conversion and defaults of the
# scheduler plugin args; deepcopy, CRD manifests and the typed client (clientset, listers,
# informers) of kybernate.io/v1alpha1; the Go code of the node agent's gRPC API.
# Generators are pinned here and run with `go run module@version`, so they need nothing installed
# but Go and protoc (Debian's protobuf-compiler).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

CODEGEN_VERSION=v0.34.10
CONTROLLER_TOOLS_VERSION=v0.23.0
PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_GO_GRPC_VERSION=v1.6.2

MODULE=github.com/kybernate/kybernate
BOILERPLATE=hack/boilerplate.go.txt
gen() { go run "k8s.io/code-generator/cmd/$1@${CODEGEN_VERSION}" "${@:2}"; }

echo ">> scheduler plugin args (deepcopy, defaults, conversion)"
gen deepcopy-gen --go-header-file "$BOILERPLATE" --output-file zz_generated.deepcopy.go \
	./apis/config ./apis/config/v1
gen defaulter-gen --go-header-file "$BOILERPLATE" --output-file zz_generated.defaults.go \
	./apis/config/v1
gen conversion-gen --go-header-file "$BOILERPLATE" --output-file zz_generated.conversion.go \
	--extra-peer-dirs k8s.io/apimachinery/pkg/apis/meta/v1,k8s.io/apimachinery/pkg/conversion,k8s.io/apimachinery/pkg/runtime \
	./apis/config/v1

echo ">> kybernate.io/v1alpha1 (deepcopy, CRDs)"
go run "sigs.k8s.io/controller-tools/cmd/controller-gen@${CONTROLLER_TOOLS_VERSION}" \
	object:headerFile="$BOILERPLATE" \
	crd:crdVersions=v1 output:crd:artifacts:config=manifests/crds \
	paths=./apis/kybernate/...

echo ">> kybernate.io/v1alpha1 (clientset, listers, informers)"
CLIENT=apis/kybernate/client
rm -rf "$CLIENT"
gen client-gen --go-header-file "$BOILERPLATE" --clientset-name versioned \
	--input-base "" --input "$MODULE/apis/kybernate/v1alpha1" \
	--output-dir "$CLIENT/clientset" --output-pkg "$MODULE/$CLIENT/clientset"
gen lister-gen --go-header-file "$BOILERPLATE" \
	--output-dir "$CLIENT/listers" --output-pkg "$MODULE/$CLIENT/listers" \
	./apis/kybernate/v1alpha1
gen informer-gen --go-header-file "$BOILERPLATE" \
	--versioned-clientset-package "$MODULE/$CLIENT/clientset/versioned" \
	--listers-package "$MODULE/$CLIENT/listers" \
	--output-dir "$CLIENT/informers" --output-pkg "$MODULE/$CLIENT/informers" \
	./apis/kybernate/v1alpha1

echo ">> agent gRPC API"
BIN=$(mktemp -d)
trap 'rm -rf "$BIN"' EXIT
GOBIN="$BIN" go install "google.golang.org/protobuf/cmd/protoc-gen-go@${PROTOC_GEN_GO_VERSION}"
GOBIN="$BIN" go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@${PROTOC_GEN_GO_GRPC_VERSION}"
PATH="$BIN:$PATH" protoc --proto_path=. \
	--go_out=. --go_opt=paths=source_relative \
	--go-grpc_out=. --go-grpc_opt=paths=source_relative \
	apis/agent/v1/agent.proto
