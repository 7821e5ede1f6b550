#!/usr/bin/env bash
# Build every image the chart uses, without Docker and without a container registry:
#
#   kubefal         the operator, the gateway and the admission webhook (Dockerfile)
#   kubefal-runner  the generic runner, with the fal SDK (runner/Dockerfile)
#   kubefal-builder buildah on the runner image: the build Jobs of spec.containerImage apps
#                   (images/builder/Dockerfile; built after kubefal-runner, FROM it)
#
# 1. A Debian bookworm root filesystem with python3 from Debian's archive (mmdebstrap; merged
#    /usr, no man pages, docs or locales), committed as the base image localhost/kubefal-base:<key>.
#    The installed package set is checked against images/debian.lock.
# 2. The pinned wheels of images/requirements-*.txt, downloaded once into a local wheelhouse, so
#    pip inside the image builds never uses the network (--no-index; no CA bundle needed).
# 3. `buildah bud` of the two Dockerfiles on that base (they build with `docker build` too, on
#    python:3.11-slim-bookworm and PyPI), with fixed timestamps (SOURCE_DATE_EPOCH).
# 4. Each image is tagged as the chart expects (<registry>/<name>:<chart appVersion>) in the local
#    containers store and written to dist/images/<name>.oci.tar.
#
# The base root filesystem and the wheels are cached in ~/.cache/kubefal/images (KUBEFAL_CACHE).
#
#   images/build.sh                 build both images
#   images/build.sh kubefal-runner  build one
# Environment: IMAGE_REGISTRY (default ghcr.io/kubefal), IMAGE_TAG (default: the chart's
# appVersion), KUBEFAL_IMAGES_STRICT=1 (a package set differing from images/debian.lock is an
# error, not a warning), KUBEFAL_IMAGES_RELOCK=1 (rewrite images/debian.lock from this build).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
CACHE=${KUBEFAL_CACHE:-$HOME/.cache/kubefal}/images
DIST=$ROOT/dist/images
SUITE=bookworm
# Fixed timestamps in the root filesystem, the layers and the byte-compiled files.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1767225600}
REGISTRY=${IMAGE_REGISTRY:-ghcr.io/kubefal}
TAG=${IMAGE_TAG:-$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$ROOT/charts/kubefal/Chart.yaml")}
[ -n "$TAG" ] || { echo "images: no appVersion in charts/kubefal/Chart.yaml" >&2; exit 1; }
declare -A DOCKERFILE=([kubefal]=Dockerfile [kubefal-runner]=runner/Dockerfile [kubefal-builder]=images/builder/Dockerfile)
declare -A LOCKFILE=([kubefal]=requirements-kubefal.txt [kubefal-runner]=requirements-runner.txt [kubefal-builder]=requirements-runner.txt)
IMAGES=("$@")
[ ${#IMAGES[@]} -gt 0 ] || IMAGES=(kubefal kubefal-runner kubefal-builder)
for image in "${IMAGES[@]}"; do
  [ -n "${DOCKERFILE[$image]:-}" ] || { echo "images: unknown image $image (kubefal, kubefal-runner, kubefal-builder)" >&2; exit 2; }
done

log() { printf '[images %s] %s\n' "$(date +%T)" "$*" >&2; }
need() { command -v "$1" >/dev/null || { echo "images: $1 is required (apt-get install $2)" >&2; exit 1; }; }
need mmdebstrap mmdebstrap
need buildah buildah
need skopeo skopeo
mkdir -p "$CACHE" "$DIST"

# buildah runs RUN steps with runc: crun refuses hybrid cgroup hosts ("cgroups in hybrid mode not
# supported"), and a sandbox without CAP_SYS_RESOURCE cannot raise rlimits past 16384.
export CONTAINERS_CONF=${CONTAINERS_CONF:-$CACHE/containers.conf}
if [ ! -s "$CONTAINERS_CONF" ]; then
  cat > "$CONTAINERS_CONF" <<'CONF'
[containers]
default_ulimits = ["nofile=16384:16384", "nproc=16384:16384"]
[engine]
runtime = "runc"
CONF
fi

# --- 1. the base image --------------------------------------------------------------------------
INCLUDE=python3,python3-venv,ca-certificates
MMDEBSTRAP_ARGS=(
  --variant=apt --format=tar "--include=$INCLUDE"
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/lintian/*'
)
KEY=$(printf '%s\n' "$SUITE" "$SOURCE_DATE_EPOCH" "${MMDEBSTRAP_ARGS[@]}" | cat - "$HERE/debian.lock" | sha256sum | cut -c1-12)
BASE_TAR=$CACHE/base-$SUITE-$KEY.tar
BASE_IMAGE=localhost/kubefal-base:$KEY
if [ ! -s "$BASE_TAR" ]; then
  log "base: mmdebstrap $SUITE ($INCLUDE)"
  mmdebstrap "${MMDEBSTRAP_ARGS[@]}" \
    --customize-hook='chroot "$1" dpkg-query -W -f="\${Package}=\${Version}\n" | LC_ALL=C sort > '"$(printf %q "$CACHE/base-$SUITE-$KEY.packages")" \
    "$SUITE" "$BASE_TAR.part" >"$CACHE/mmdebstrap.log" 2>&1 \
    || { tail -30 "$CACHE/mmdebstrap.log" >&2; exit 1; }
  if [ "${KUBEFAL_IMAGES_RELOCK:-}" = 1 ]; then
    { echo "# Debian $SUITE packages of the base image; KUBEFAL_IMAGES_RELOCK=1 images/build.sh rewrites it."
      cat "$CACHE/base-$SUITE-$KEY.packages"; } > "$HERE/debian.lock"
    log "base: images/debian.lock rewritten; run again to build with it"
    rm -f "$BASE_TAR.part"
    exit 0
  fi
  if ! drift=$(diff <(grep -v '^#' "$HERE/debian.lock") "$CACHE/base-$SUITE-$KEY.packages"); then
    echo "images: Debian's archive now has other package versions than images/debian.lock:" >&2
    echo "$drift" >&2
    if [ "${KUBEFAL_IMAGES_STRICT:-}" = 1 ]; then
      rm -f "$BASE_TAR.part"
      echo "images: KUBEFAL_IMAGES_STRICT=1: refusing; KUBEFAL_IMAGES_RELOCK=1 images/build.sh accepts them" >&2
      exit 1
    fi
    echo "images: continuing (KUBEFAL_IMAGES_STRICT=1 makes this an error)" >&2
  fi
  mv "$BASE_TAR.part" "$BASE_TAR"
fi
if ! buildah inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then
  log "base: $BASE_IMAGE from $(basename "$BASE_TAR")"
  ctr=$(buildah from --pull=never scratch)
  buildah add --quiet "$ctr" "$BASE_TAR" / >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd /bin/bash --created-by "images/build.sh: mmdebstrap $SUITE" "$ctr"
  buildah commit --quiet --timestamp "$SOURCE_DATE_EPOCH" --rm "$ctr" "$BASE_IMAGE" >/dev/null
fi

# --- 2. the wheelhouse --------------------------------------------------------------------------
WHEELS=$CACHE/wheels
mkdir -p "$WHEELS"
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PY=$ROOT/.venv/bin/python; else PY=python3; fi
fi
"$PY" - <<'PY' || { echo "images: the wheels are fetched for CPython 3.11 on Linux x86_64 (the images' Python)" >&2; exit 1; }
import platform, sys
assert sys.version_info[:2] == (3, 11) and platform.machine() == "x86_64" and sys.platform == "linux"
PY
# Print the pins (name==version) of the given lock files that have no wheel in the wheelhouse.
missing_wheels() {
  "$PY" - "$WHEELS" "$@" <<'PY'
import pathlib, re, sys
def norm(name): return re.sub(r"[-_.]+", "_", name).lower()
have = set()
for wheel in pathlib.Path(sys.argv[1]).glob("*.whl"):
    name, version = wheel.name.split("-")[:2]
    have.add((norm(name), version))
for lock in sys.argv[2:]:
    for line in pathlib.Path(lock).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, version = line.split("==")
            if (norm(name), version) not in have:
                print(line)
PY
}
LOCKS=("$HERE/requirements-build.txt")
for image in "${IMAGES[@]}"; do LOCKS+=("$HERE/${LOCKFILE[$image]}"); done
for lock in "${LOCKS[@]}"; do
  # One lock at a time: the images may pin different versions of a package.
  MISSING=$(missing_wheels "$lock")
  if [ -n "$MISSING" ]; then
    log "wheels: downloading $(echo "$MISSING" | wc -l) of $(basename "$lock") into $WHEELS"
    echo "$MISSING" > "$CACHE/missing.txt"
    "$PY" -m pip download -q --no-deps --only-binary=:all: --dest "$WHEELS" -r "$CACHE/missing.txt"
    MISSING=$(missing_wheels "$lock")
    [ -z "$MISSING" ] || { echo "images: no wheel for: $MISSING" >&2; exit 1; }
  fi
done

# --- 3. and 4. the images -----------------------------------------------------------------------
for image in "${IMAGES[@]}"; do
  ref=$REGISTRY/$image:$TAG
  log "$image: buildah bud -f ${DOCKERFILE[$image]} -> $ref"
  started=$(date +%s)
  buildah bud --quiet --pull=never --isolation chroot --network host --layers \
    --timestamp "$SOURCE_DATE_EPOCH" \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg WHEELS=/wheels \
    --build-arg "RUNNER_IMAGE=$REGISTRY/kubefal-runner:$TAG" \
    --build-arg "SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH" \
    --volume "$WHEELS:/wheels:ro" \
    -f "$ROOT/${DOCKERFILE[$image]}" -t "$ref" "$ROOT" >"$CACHE/$image.build.log" 2>&1 \
    || { tail -40 "$CACHE/$image.build.log" >&2; exit 1; }
  rm -f "$DIST/$image.oci.tar"
  skopeo copy --quiet "containers-storage:$ref" "oci-archive:$DIST/$image.oci.tar:$ref"
  size=$(buildah images --format '{{.Size}}' "$ref" | head -1)
  log "$image: $ref, $size in the store, $(du -h "$DIST/$image.oci.tar" | cut -f1) as $DIST/$image.oci.tar, $(( $(date +%s) - started ))s"
done
