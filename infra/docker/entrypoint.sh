#!/bin/sh
# Container entrypoint: optionally claim GPUs for this container (one, or SELFJUDGE_GPUS_PER_REPLICA
# of them), then `exec selfjudge "$@"`.
#
# Why: Docker does not schedule GPUs. A compose reservation with `count: 1` always hands out
# GPU 0, so `docker compose up --scale reasoner=4` would put all four replicas on one card.
# Instead each model stage names a pool of host GPUs (SELFJUDGE_GPU_IDS, from .env, e.g.
# REASONER_GPUS=0,1,2,3) and every replica claims one of them here: an exclusive flock on a
# lock file in a volume that all replicas share. The worker process itself holds the lock
# (the file descriptor survives `exec`) and the kernel drops it when the process dies, so a
# restarted replica can take its GPU again; stale lock files do no harm. Locks are per pool:
# different stages may share a GPU on purpose, replicas of one stage never do.
#
# Several GPUs per replica (SELFJUDGE_GPUS_PER_REPLICA=N, e.g. a trainer running FSDP on N
# processes through torchrun, or a vLLM engine with tensor_parallel_size N): the pool is cut
# into consecutive groups of N ids (0,1,2,3 with N=2: {0,1} and {2,3}) and a replica claims one
# whole group, so replicas never share a GPU. CUDA_VISIBLE_DEVICES lists the group; torchrun's
# rank r then uses cuda:r, i.e. the group's r-th GPU. Ids left over (a pool that is not a
# multiple of N) are not used.
#
# Environment:
#   SELFJUDGE_GPU_POOL      pool name (compose sets the service name). Unset or empty: claim
#                           nothing, run as is (launcher, filter, CPU runs).
#   SELFJUDGE_GPU_IDS       host GPU ids of the pool, comma separated: nvidia-smi indices or
#                           GPU UUIDs. Defaults to NVIDIA_VISIBLE_DEVICES when that is a list.
#   NVIDIA_VISIBLE_DEVICES  set by Docker from the GPU reservation: "all" (count: all) or the
#                           host ids the container sees (device_ids), renumbered 0..n-1 inside.
#   SELFJUDGE_GPU_LOCK_DIR  folder for the lock files (default /cache/gpu-locks).
#   SELFJUDGE_GPU_WAIT_S    seconds to wait for a free GPU before failing (default 60).
#   SELFJUDGE_GPUS_PER_REPLICA  GPUs one replica claims (default 1).
#   CUDA_VISIBLE_DEVICES    if already set, nothing is claimed.
#   SELFJUDGE_EXEC          program to exec (default selfjudge; tests use a stand-in).
set -eu

program="${SELFJUDGE_EXEC:-selfjudge}"
pool="${SELFJUDGE_GPU_POOL:-}"
visible="${NVIDIA_VISIBLE_DEVICES:-}"
case "$visible" in "" | all | void | none) visible_list="" ;; *) visible_list="$visible" ;; esac
ids="${SELFJUDGE_GPU_IDS:-$visible_list}"

if [ -z "$pool" ] || [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
    exec "$program" "$@"
fi
if [ -z "$ids" ]; then
    echo "entrypoint: GPU pool '$pool' lists no GPU ids; not claiming one" >&2
    exec "$program" "$@"
fi

# One id per line, blanks trimmed.
split() { printf '%s\n' "$1" | tr ',' '\n' | sed 's/^ *//; s/ *$//' | sed '/^$/d'; }

# The CUDA index of host GPU $1 inside this container. With every GPU visible (count: all)
# and CUDA_DEVICE_ORDER=PCI_BUS_ID it is the nvidia-smi index itself; with a subset visible
# (device_ids) CUDA renumbers them 0..n-1 in PCI bus order, i.e. by sorted host index.
# A UUID is passed to CUDA as it is.
cuda_index() {
    case "$1" in *[!0-9]*) echo "$1"; return 0 ;; esac
    if [ -z "$visible_list" ]; then echo "$1"; return 0; fi
    position=0
    for v in $(split "$visible_list" | sort -n); do
        if [ "$v" = "$1" ]; then echo "$position"; return 0; fi
        position=$((position + 1))
    done
    echo "entrypoint: GPU $1 of pool '$pool' is not visible in this container ($visible)" >&2
    return 1
}

per="${SELFJUDGE_GPUS_PER_REPLICA:-1}"
case "$per" in "" | *[!0-9]* | 0*)
    echo "entrypoint: SELFJUDGE_GPUS_PER_REPLICA must be a whole number >= 1, not '$per'" >&2
    exit 78 ;;   # EX_CONFIG
esac
# The pool's groups of $per ids, one per line, ids separated by commas.
groups=$(split "$ids" | awk -v n="$per" '{ g = g (NR % n == 1 || n == 1 ? "" : ",") $0 } NR % n == 0 { print g; g = "" }')
if [ -z "$groups" ]; then
    echo "entrypoint: pool '$pool' ($ids) has fewer than SELFJUDGE_GPUS_PER_REPLICA=$per GPUs" >&2
    exit 78
fi

lock_dir="${SELFJUDGE_GPU_LOCK_DIR:-/cache/gpu-locks}/$pool"
mkdir -p "$lock_dir"
wait_s="${SELFJUDGE_GPU_WAIT_S:-60}"
export CUDA_DEVICE_ORDER=PCI_BUS_ID

waited=0
while :; do
    for group in $groups; do
        exec 9>"$lock_dir/gpu-$(printf '%s' "$group" | tr ',' '_').lock"
        if flock -n 9; then
            CUDA_VISIBLE_DEVICES=""
            for id in $(split "$group"); do
                index=$(cuda_index "$id")
                CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:+$CUDA_VISIBLE_DEVICES,}$index"
            done
            export CUDA_VISIBLE_DEVICES
            echo "entrypoint: pool '$pool' claimed host GPU $group (CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES)" >&2
            exec "$program" "$@"
        fi
        exec 9>&-
    done
    if [ "$waited" -ge "$wait_s" ]; then
        echo "entrypoint: every GPU of pool '$pool' ($ids) is held by another replica;" \
             "run at most as many replicas of this service as GPUs in its pool" \
             "divided by SELFJUDGE_GPUS_PER_REPLICA ($per)" >&2
        exit 75   # EX_TEMPFAIL; `restart: unless-stopped` tries again later
    fi
    sleep 2
    waited=$((waited + 2))
done
