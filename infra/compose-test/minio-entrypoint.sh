#!/bin/bash
# `minio server DIR [...]` for the SeaweedFS stand-in: `weed mini` with S3 on :9000, the root
# account from MINIO_ROOT_USER / MINIO_ROOT_PASSWORD (an Admin identity), and the liveness URL
# that compose's healthcheck asks for, /minio/health/live: an object `health/live` in a bucket
# `minio` that anonymous clients may read. SeaweedFS allows anonymous requests until the first
# identity exists, so that object is written first. Safe to run again on the same DIR.
set -euo pipefail
if [ "${1:-}" != server ] || [ -z "${2:-}" ]; then
    echo "minio stand-in: usage: minio server DIR [--console-address ADDR]" >&2
    exit 2
fi
dir=$2
: "${MINIO_ROOT_USER:?MINIO_ROOT_USER is required}" "${MINIO_ROOT_PASSWORD:?MINIO_ROOT_PASSWORD is required}"
mkdir -p "$dir"
ip=$(hostname -i | awk '{print $1}')

weed mini -dir="$dir" -ip="$ip" -ip.bind=0.0.0.0 -s3.port=9000 -master.telemetry=false \
    -webdav=false -admin.ui=false &
weed_pid=$!
trap 'kill -TERM "$weed_pid" 2>/dev/null; wait "$weed_pid"; exit 0' TERM INT

# HTTP/1.0 request to the local S3 port; prints the status line.
http() {  # METHOD PATH [BODY]
    local body="${3:-}" status
    exec 3<>/dev/tcp/127.0.0.1/9000 || return 1
    printf '%s %s HTTP/1.0\r\nHost: 127.0.0.1:9000\r\nContent-Length: %s\r\n\r\n%s' \
        "$1" "$2" "${#body}" "$body" >&3
    read -r status <&3 || status=""
    exec 3>&-
    echo "$status"
}

for _ in $(seq 1 240); do
    [[ "$(http GET /healthz 2>/dev/null || true)" == *" 200 "* ]] && break
    kill -0 "$weed_pid" 2>/dev/null || { echo "minio stand-in: weed exited" >&2; exit 1; }
    sleep 0.5
done
http PUT /minio "" >/dev/null || true
http PUT /minio/health/live ok >/dev/null || true
weed shell -master="$ip:9333" >/dev/null <<SHELL
s3.configure -user=anonymous -actions=Read:minio -apply
s3.configure -user=minio-root -access_key=${MINIO_ROOT_USER} -secret_key=${MINIO_ROOT_PASSWORD} -actions=Admin -apply
SHELL
echo "minio stand-in: S3 on :9000, root account ${MINIO_ROOT_USER}"
wait "$weed_pid"
