#!/usr/bin/env bash
# A Docker engine for `make compose-test`, on a Debian machine without systemd (run as root).
#
#   scripts/docker-engine.sh install   install what is missing: Debian's docker.io, iptables,
#                                      debootstrap (the compose plugin: scripts/install-tools.sh)
#   scripts/docker-engine.sh start     start dockerd (niced, setsid, log file) unless a daemon
#                                      already answers; wait until `docker info` answers
#   scripts/docker-engine.sh stop      stop the dockerd that `start` started, and only that one
#
# State (PID file, log) lives in $SELFJUDGE_DOCKER_STATE (default .selfjudge/docker). Images
# stay in /var/lib/docker after `stop`, so the next run finds them built.
set -euo pipefail
cd "$(dirname "$0")/.."
state="${SELFJUDGE_DOCKER_STATE:-.selfjudge/docker}"
pidfile="$state/dockerd.pid"
log="$state/dockerd.log"

answers() { timeout 10 docker info >/dev/null 2>&1; }
# A live dockerd whose PID we recorded (a stale file with a reused PID names another program).
ours() { [ -s "$pidfile" ] && [ "$(cat "/proc/$(cat "$pidfile")/comm" 2>/dev/null)" = dockerd ]; }

install() {
    local missing=()
    command -v dockerd >/dev/null || missing+=(docker.io)
    command -v iptables >/dev/null || missing+=(iptables)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    if [ ${#missing[@]} -eq 0 ]; then
        echo "docker-engine: docker.io, iptables and debootstrap are installed"
        return
    fi
    [ "$(id -u)" = 0 ] || { echo "docker-engine: installing ${missing[*]} needs root (run as root or install them)" >&2; exit 1; }
    echo "docker-engine: installing ${missing[*]} (Debian packages)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

start() {
    if answers; then
        echo "docker-engine: a Docker daemon already answers; using it (not ours to stop)"
        return
    fi
    command -v dockerd >/dev/null || { echo "docker-engine: no dockerd: run 'scripts/docker-engine.sh install' first" >&2; exit 1; }
    [ "$(id -u)" = 0 ] || { echo "docker-engine: dockerd needs root; start it as root or point DOCKER_HOST at a running engine" >&2; exit 1; }
    mkdir -p "$state"
    # niced (SELFJUDGE_DOCKERD_NICE, default 10): image builds and the stack run as its children
    setsid nice -n "${SELFJUDGE_DOCKERD_NICE:-10}" dockerd >"$log" 2>&1 </dev/null &
    echo $! > "$pidfile"
    for _ in $(seq 1 120); do
        if answers; then
            echo "docker-engine: dockerd started (pid $(cat "$pidfile"), log $log)"
            return
        fi
        kill -0 "$(cat "$pidfile")" 2>/dev/null || break     # it exited
        sleep 0.5
    done
    echo "docker-engine: dockerd did not answer within 60 s; the end of $log:" >&2
    tail -n 20 "$log" >&2 || true
    stop
    exit 1
}

stop() {
    if ! [ -s "$pidfile" ]; then
        echo "docker-engine: no dockerd of ours to stop"
        return
    fi
    local pid
    pid=$(cat "$pidfile")
    if ours; then
        kill -TERM "$pid"
        for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        if kill -0 "$pid" 2>/dev/null; then
            echo "docker-engine: dockerd $pid ignored SIGTERM for 30 s; killing it" >&2
            kill -KILL "$pid"
        fi
        echo "docker-engine: dockerd $pid stopped"
    fi
    rm -f "$pidfile"
}

case "${1:-}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 install|start|stop" >&2; exit 2 ;;
esac
