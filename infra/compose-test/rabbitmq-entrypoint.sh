#!/bin/sh
# The upstream image's RABBITMQ_DEFAULT_USER / RABBITMQ_DEFAULT_PASS, written as config, then
# the server in the foreground (Debian's wrapper runs it as the rabbitmq user).
set -eu
: "${RABBITMQ_DEFAULT_USER:=guest}" "${RABBITMQ_DEFAULT_PASS:=guest}"
cat > /etc/rabbitmq/conf.d/10-defaults.conf <<CONF
default_user = ${RABBITMQ_DEFAULT_USER}
default_pass = ${RABBITMQ_DEFAULT_PASS}
loopback_users = none
CONF
chown -R rabbitmq:rabbitmq /var/lib/rabbitmq
exec rabbitmq-server
