#!/usr/bin/env bash
# Pull + verify time of plugins from a CNCF distribution registry on
# loopback (docs/BENCHMARKS.md, "Plugins from an OCI registry").
#
#   integration-tests/bench/registry-pull.sh [RUNS] FILE.wasm...
#
# Starts docker-registry on a free port with a temporary storage, pushes
# each component with `kiln plugins push`, then RUNS times: empties the
# store (not the compiled cache) and runs `kiln plugins pull REF@DIGEST`,
# reading `pull_ms` (manifest + blobs fetched and every digest checked,
# compile excluded) from its log line. Prints min / median / max per file.
set -euo pipefail
KILN=${KILN:-target/release/kiln-under-test}
runs=5
if [[ ${1:-} =~ ^[0-9]+$ ]]; then runs=$1; shift; fi
[[ $# -gt 0 ]] || { echo "usage: $0 [RUNS] FILE.wasm..." >&2; exit 2; }
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$work/registry.yml" <<YAML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $work/storage
http:
  addr: 127.0.0.1:$port
YAML
docker-registry serve "$work/registry.yml" 2>"$work/registry.log" &
pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done
for file in "$@"; do
    name=$(basename "$file" .wasm | tr '_' '-')
    ref="oci://127.0.0.1:$port/bench/$name:1"
    digest=$("$KILN" plugins push "$file" "$ref")
    times=()
    for _ in $(seq "$runs"); do
        rm -rf "$work/cache/oci"
        line=$(RUST_LOG=kiln::oci=info KILN__LOG__FORMAT=json "$KILN" plugins pull "$ref@$digest" --out "$work/cache" 2>&1 >/dev/null \
            | grep -o '"pull_ms":[0-9]*' | head -1)
        times+=("${line#*:}")
    done
    sorted=$(printf '%s\n' "${times[@]}" | sort -n | paste -sd' ')
    read -r -a s <<<"$sorted"
    printf '%s (%s bytes): pull+verify ms min %s, median %s, max %s (runs: %s)\n' \
        "$(basename "$file")" "$(stat -c %s "$file")" "${s[0]}" "${s[$((runs / 2))]}" "${s[$((runs - 1))]}" "$sorted"
done
