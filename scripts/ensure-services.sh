#!/usr/bin/env bash
# Make sure the local Postgres and RabbitMQ the tests use are up (they are preinstalled on
# this project's machines and usually running). Starts whichever is down, waits until ready.
set -euo pipefail

port_open() { (echo > "/dev/tcp/127.0.0.1/$1") >/dev/null 2>&1; }
wait_port() {
  for _ in $(seq 1 120); do port_open "$1" && return 0; sleep 0.5; done
  echo "ensure-services: nothing listens on 127.0.0.1:$1 after 60s" >&2; return 1
}

if ! port_open 5432; then
  echo "ensure-services: starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  wait_port 5432
fi
if ! port_open 5672; then
  echo "ensure-services: starting RabbitMQ"
  rabbitmq-server -detached
  wait_port 5672
  rabbitmqctl await_startup >/dev/null
fi
# RabbitMQ's own metrics endpoint (127.0.0.1:15692) for the dashboard tests
if ! (echo > /dev/tcp/127.0.0.1/15692) >/dev/null 2>&1; then
  rabbitmq-plugins enable rabbitmq_prometheus >/dev/null
  wait_port 15692
fi
echo "ensure-services: postgres 127.0.0.1:5432 and rabbitmq 127.0.0.1:5672 are up"
