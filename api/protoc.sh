#!/usr/bin/env bash
# protoc.sh compiles .proto files under api/ into Go beside them. It is run by the //go:generate
# lines in api/*/v1/doc.go. The protoc plugins are the module's Go tools (versions pinned in go.mod),
# built into a temporary directory, so nothing depends on what is installed in $PATH apart from
# protoc itself (Debian's protobuf-compiler).
#
# Usage (from any directory): protoc.sh <path relative to api/>...
set -euo pipefail

api="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
command -v protoc >/dev/null || { echo "protoc not found: apt-get install protobuf-compiler" >&2; exit 1; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$api" && go build -o "$tmp/" google.golang.org/protobuf/cmd/protoc-gen-go google.golang.org/grpc/cmd/protoc-gen-go-grpc)

cd "$api"
protoc -I . \
	--plugin=protoc-gen-go="$tmp/protoc-gen-go" --go_out=. --go_opt=paths=source_relative \
	--plugin=protoc-gen-go-grpc="$tmp/protoc-gen-go-grpc" --go-grpc_out=. --go-grpc_opt=paths=source_relative \
	"$@"

# The generated headers name the protoc version. Debian releases ship different protoc versions;
# the output is otherwise identical, so the version line is normalised to keep regeneration byte for
# byte reproducible on every machine.
for f in "$@"; do
	base="${f%.proto}"
	for g in "$base.pb.go" "$base"_grpc.pb.go; do
		[ -f "$g" ] || continue
		sed -i -E 's#^// (\t|- )protoc( +)v[0-9.]+$#// \1protoc\2(version normalised by api/protoc.sh)#' "$g"
	done
done
