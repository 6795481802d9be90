# Stand-in for python:3.11-slim-bookworm (test-only): Debian bookworm's Python 3.11 in a venv
# that is first on PATH (so `python` and `pip` mean what they mean in the upstream image).
# torch's CPU wheel and the project's dependencies are preinstalled so that the project's
# Dockerfile finds them satisfied; the host's CA bundle lets pip reach PyPI from inside a build
# on machines that intercept HTTPS. Users never build this image.
ARG DEBIAN_IMAGE
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /usr/local/python
ENV PATH=/usr/local/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PIP_CERT=/usr/local/share/selfjudge-test/ca-bundle.crt \
    SSL_CERT_FILE=/usr/local/share/selfjudge-test/ca-bundle.crt \
    REQUESTS_CA_BUNDLE=/usr/local/share/selfjudge-test/ca-bundle.crt \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY ca-bundle.crt /usr/local/share/selfjudge-test/ca-bundle.crt
COPY wheels/ /tmp/wheels/
RUN pip install /tmp/wheels/torch-*.whl \
 && pip install -r /tmp/wheels/requirements.txt \
 && rm -rf /tmp/wheels
CMD ["python3"]
