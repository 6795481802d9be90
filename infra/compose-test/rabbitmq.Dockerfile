# Stand-in for rabbitmq:4.1-management (test-only): Debian's rabbitmq-server with the
# management and prometheus plugins it ships. Config: /etc/rabbitmq/enabled_plugins and
# /etc/rabbitmq/conf.d/*.conf, as in the upstream image.
ARG DEBIAN_IMAGE
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends rabbitmq-server \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /etc/rabbitmq/conf.d
COPY rabbitmq-entrypoint.sh /usr/local/bin/rabbitmq-entrypoint
EXPOSE 5672 15672 15692
ENTRYPOINT ["rabbitmq-entrypoint"]
