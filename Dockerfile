# The kubefal image: the operator, the queue gateway and the admission webhook (one image, the
# chart picks the process with its command: python -m kubefal_operator | kubefal_gateway |
# kubefal_webhook). Runners use their own image (runner/Dockerfile), which carries the fal SDK.
#
# `make images` builds it without Docker (images/build.sh). With Docker, from the repository root:
#   docker build -t kubefal .
# Python packages are exactly images/requirements-kubefal.txt (images/lock.sh writes it).
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
# WHEELS: a directory of wheels mounted into the build (images/build.sh); empty: PyPI.
ARG WHEELS=""
# Fixes the timestamps pip writes into the byte-compiled files (reproducible layers).
ARG SOURCE_DATE_EPOCH
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY images/requirements-build.txt images/requirements-kubefal.txt /src/images/
RUN python3 -m venv /opt/kubefal \
    && /opt/kubefal/bin/pip install --no-deps ${WHEELS:+--no-index --find-links "$WHEELS"} \
        -r /src/images/requirements-kubefal.txt
# Everything pyproject.toml builds from (.dockerignore leaves out tests, caches and outputs).
COPY . /src/
# The constraint pins hatchling, which pip installs to build the kubefal wheel from /src.
RUN PIP_CONSTRAINT=/src/images/requirements-build.txt \
    /opt/kubefal/bin/pip install --no-deps ${WHEELS:+--no-index --find-links "$WHEELS"} /src \
    && /opt/kubefal/bin/pip uninstall -q -y pip setuptools
# Size: nothing here installs packages at run time (no pip), and the kubernetes client's asyncio
# copy of its generated API (kubernetes/aio, 67 MB of the image's 110 MB of kubernetes) is never
# imported by kubefal, which uses the synchronous client and kopf's own aiohttp client.
RUN rm -rf /opt/kubefal/lib/python3.11/site-packages/kubernetes/aio

FROM ${BASE_IMAGE}
COPY --from=build /opt/kubefal /opt/kubefal
ENV PATH=/opt/kubefal/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/tmp \
    USER=kubefal \
    LOGNAME=kubefal \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# USER/LOGNAME: the uid has no passwd entry, and getpass.getuser() (kopf's peering identity)
# reads them before it would fail looking one up.
# Numeric, so that runAsNonRoot can check it; the chart runs every process as 65532.
USER 65532:65532
CMD ["python", "-m", "kubefal_operator"]
