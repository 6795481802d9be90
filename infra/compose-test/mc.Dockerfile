# Stand-in for minio/mc (test-only): an `mc` that runs the commands of compose's minio-init
# job against the SeaweedFS stand-in (through `weed shell`).
ARG DEBIAN_IMAGE
FROM ${DEBIAN_IMAGE}
COPY weed /usr/local/bin/weed
COPY mc.sh /usr/local/bin/mc
ENTRYPOINT ["mc"]
