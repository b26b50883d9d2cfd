#!/usr/bin/env bash
# Build the container image without a registry and smoke-test it, with podman.
#
#   sudo bash deploy/build-image.sh          # as root: podman, buildah and debootstrap from Debian
#
# 1. base: Debian bookworm (python3, python3-venv) made by debootstrap, imported as
#    localhost/mlserver-mme-base (built once, reused);
# 2. image: the Dockerfile on that base, tagged localhost/mlserver-mme:latest;
# 3. smoke test: `serve` on loopback, /ping, one invocation of a bundled example, the HEALTHCHECK, and
#    SIGTERM stopping it within SageMaker's 30 s; prints the image size.
#
# Environment: WORK (default /var/tmp/mlserver-mme-image), PORT (default 18080), and CA_BUNDLE: a CA file
# mounted into the build for pip when HTTPS goes through an intercepting proxy (default: the host's
# /etc/ssl/certs/ca-certificates.crt).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${WORK:-/var/tmp/mlserver-mme-image}"
PORT="${PORT:-18080}"
CA_BUNDLE="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
BASE=localhost/mlserver-mme-base:bookworm-slim
IMAGE=localhost/mlserver-mme:latest

for tool in podman debootstrap; do
  command -v "$tool" >/dev/null || { echo "needs $tool: apt-get install podman buildah debootstrap runc" >&2; exit 1; }
done
# Sandboxed hosts (hybrid cgroups, capped rlimits) need runc rather than crun, and modest ulimits.
podman=(podman)
command -v runc >/dev/null && podman=(podman --runtime runc)
limits=(--ulimit nofile=8192:8192 --ulimit nproc=4096:4096)
started=$(date +%s)

if ! "${podman[@]}" image exists "$BASE"; then
  mkdir -p "$WORK"
  if [ ! -x "$WORK/rootfs/usr/bin/python3" ]; then
    rm -rf "$WORK/rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$WORK/rootfs"
  fi
  # debootstrap leaves its package cache and apt's lists behind: not in the image's base layer
  rm -rf "$WORK/rootfs/var/cache/apt/archives/"*.deb "$WORK/rootfs/var/cache/apt/"*.bin "$WORK/rootfs/var/lib/apt/lists/"*
  tar -C "$WORK/rootfs" -c . | "${podman[@]}" import --change 'CMD ["/bin/bash"]' - "$BASE"
fi

mounts=()
build_args=(--build-arg "BASE=$BASE")
if [ -f "$CA_BUNDLE" ]; then
  mounts=(--volume "$CA_BUNDLE:/run/host-ca.crt:ro")
  build_args+=(--build-arg PIP_CERT=/run/host-ca.crt)
fi
"${podman[@]}" build --format docker --network=host "${limits[@]}" "${mounts[@]}" "${build_args[@]}" -t "$IMAGE" "$HERE"
built=$(date +%s)

name="mlserver-mme-smoke-$$"
cleanup() { "${podman[@]}" rm -f "$name" >/dev/null 2>&1 || true; }
trap cleanup EXIT
"${podman[@]}" run -d --name "$name" --network=host "${limits[@]}" -e MLSERVER_HOST=127.0.0.1 -e MLSERVER_HTTP_PORT="$PORT" \
  -e MLSERVER_GRPC_PORT=$((PORT + 1)) -e MLSERVER_METRICS_PORT=$((PORT + 2)) "$IMAGE" serve >/dev/null
for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:$PORT/ping" >/dev/null && break
  sleep 0.5
done
curl -sf "http://127.0.0.1:$PORT/ping" >/dev/null || { "${podman[@]}" logs "$name"; echo "FAIL: /ping" >&2; exit 1; }
answer=$(curl -sf "http://127.0.0.1:$PORT/invocations" -H 'Content-Type: text/csv' \
  -H 'X-Amzn-SageMaker-Target-Model: Houston_TX.tar.gz' --data-binary $'1995,3000,3,2,1.0,2\n')
[ "$answer" = "[387599.09375]" ] || { "${podman[@]}" logs "$name"; echo "FAIL: invocation answered '$answer'" >&2; exit 1; }
"${podman[@]}" healthcheck run "$name" >/dev/null || { echo "FAIL: HEALTHCHECK" >&2; exit 1; }
[ "$("${podman[@]}" image inspect --format '{{ index .Config.Labels "com.amazonaws.sagemaker.capabilities.multi-models" }}' "$IMAGE")" = true ]
[ "$("${podman[@]}" image inspect --format '{{.Config.User}}' "$IMAGE")" = mme ]
stop_started=$(date +%s)
"${podman[@]}" stop --time 30 "$name" >/dev/null
stopped_in=$(( $(date +%s) - stop_started ))
status=$("${podman[@]}" inspect --format '{{.State.ExitCode}}' "$name")
[ "$stopped_in" -lt 30 ] || { echo "FAIL: SIGTERM took ${stopped_in}s" >&2; exit 1; }

echo "OK: $IMAGE answered $answer; stopped by SIGTERM in ${stopped_in}s (exit $status)"
echo "image size: $("${podman[@]}" image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"
echo "build: $((built - started)) s, total: $(( $(date +%s) - started )) s"
