#!/usr/bin/env bash
# Builds the two container images with podman, from base images made here (no registry needed):
#
#   localhost/waitroom:<version>        every service (python -m waitroom_ticketing|reaper|stats|notifier)
#   localhost/waitroom-kafka:<kafka>    a single-node KRaft Apache Kafka
#   localhost/waitroom-moto:<moto>      moto's server (fake AWS), for the container tests only (`moto`)
#
# Their bases are root filesystems made with debootstrap from the Debian mirror apt uses here and
# imported with `podman import`; both are cached under $WAITROOM_CACHE_DIR/images (the rootfs
# tarballs, keyed by their package lists) and in podman's own storage (base images, layers), so only
# the first run is slow. Where a registry can be pulled from, WAITROOM_BASE / WAITROOM_KAFKA_BASE
# name other bases (e.g. python:3.11-slim, eclipse-temurin:17-jre) and debootstrap is skipped.
#
# Usage: images/build.sh [app|kafka|moto|all]...   (default: app kafka; all: the three; see docs/images.md)
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
targets=()
for what in "${@:-app kafka}"; do
  for one in $what; do
    case $one in
      app | kafka | moto) targets+=("$one") ;;
      all) targets+=(app kafka moto) ;;
      *) echo "usage: $0 [app|kafka|moto|all]..." >&2; exit 2 ;;
    esac
  done
done

CACHE_DIR=${WAITROOM_CACHE_DIR:-$HOME/.cache/waitroom}
IMAGES_CACHE=$CACHE_DIR/images
SUITE=bookworm
KAFKA_VERSION=3.9.1
VERSION=$(sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -n1)
APP_IMAGE=${WAITROOM_APP_IMAGE:-localhost/waitroom:$VERSION}
KAFKA_IMAGE=${WAITROOM_KAFKA_IMAGE:-localhost/waitroom-kafka:$KAFKA_VERSION}
# moto for the container tests: the version the tests were written against (pyproject's dev extra).
MOTO_VERSION=${WAITROOM_MOTO_VERSION:-5.2.1}
MOTO_IMAGE=${WAITROOM_MOTO_IMAGE:-localhost/waitroom-moto:$MOTO_VERSION}
PY_BASE_IMAGE=localhost/waitroom-base:$SUITE
JRE_BASE_IMAGE=localhost/waitroom-base:$SUITE-jre
# Bump when the way a rootfs is made changes, so cached tarballs are remade.
ROOTFS_RECIPE=1
PY_PACKAGES="python3 ca-certificates"
JRE_PACKAGES="openjdk-17-jre-headless ca-certificates"

say() { echo "images: $*"; }
die() { echo "images: $*" >&2; exit 1; }
since() { echo "$(($(date +%s) - $1)) s"; }

# --- podman on this machine ----------------------------------------------------------------------

ensure_tools() {
  local missing=()
  command -v podman >/dev/null || missing+=(podman)
  command -v runc >/dev/null || missing+=(runc)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v newuidmap >/dev/null || missing+=(uidmap)
  command -v fuse-overlayfs >/dev/null || missing+=(fuse-overlayfs)
  command -v slirp4netns >/dev/null || missing+=(slirp4netns)
  if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing ${missing[*]}; install them (apt-get install ${missing[*]})"
    say "installing ${missing[*]} with apt"
    apt-get update -qq
    # runc with podman in one request: apt then takes runc for podman's "crun | runc" dependency.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# crun fails on this machine's cgroup setup and runc refuses the host's open-files limit as the
# containers' default: every podman call here says which runtime and limits to use, and a machine
# without a containers.conf gets one saying the same, for the podman service and other callers.
PODMAN=(podman --runtime runc)
LIMITS=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)

configure_podman() {
  local conf=/etc/containers/containers.conf
  if [ "$(id -u)" = 0 ] && [ ! -e $conf ]; then
    mkdir -p /etc/containers
    cat >$conf <<'EOF'
# Written by waitroom's images/build.sh: crun fails on this machine's cgroup setup, and runc
# needs explicit limits (the host's are higher than a container may get). See docs/images.md.
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "runc"
EOF
    say "wrote $conf (runtime runc, ulimits)"
  fi
  # Overlay is podman's default driver; where it does not work, fall back to vfs (slower, bigger).
  if ! "${PODMAN[@]}" info >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && [ ! -e /etc/containers/storage.conf ]; then
      say "podman's overlay storage does not work here; switching to vfs"
      printf '[storage]\ndriver = "vfs"\nrunroot = "/run/containers/storage"\ngraphroot = "/var/lib/containers/storage"\n' \
        >/etc/containers/storage.conf
    fi
    "${PODMAN[@]}" info >/dev/null || die "podman does not work here (see the error above)"
  fi
}

# --- base images from debootstrap ----------------------------------------------------------------

# The Debian mirror apt uses on this machine (deb822 .sources or one-line sources.list), so the base
# images come from where this machine's packages come from.
apt_mirror() { # $1 = "main" or "security"
  local want=$1 found
  found=$(
    {
      cat /etc/apt/sources.list.d/*.sources 2>/dev/null
      echo
    } | awk -v want="$want" '
      function flush() {
        if (!done && types ~ /(^| )deb( |$)/ && uris != "" && (want == "security") == (suites ~ /-security/) && suites ~ /bookworm/) {
          split(uris, u, " "); print u[1]; done = 1; exit
        }
        types = ""; uris = ""; suites = ""
      }
      /^[[:space:]]*$/ { flush(); next }
      /^Types:/ { sub(/^Types:[[:space:]]*/, ""); types = $0 }
      /^URIs:/ { sub(/^URIs:[[:space:]]*/, ""); uris = $0 }
      /^Suites:/ { sub(/^Suites:[[:space:]]*/, ""); suites = $0 }
      END { flush() }'
  )
  if [ -z "$found" ]; then
    found=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | sed 's/\[[^]]*\]//' | awk -v want="$want" '
      $1 == "deb" && $3 ~ /^bookworm/ && (want == "security") == ($3 ~ /-security/) { print $2; exit }')
  fi
  if [ -z "$found" ]; then
    [ "$want" = security ] && found=http://deb.debian.org/debian-security || found=http://deb.debian.org/debian
  fi
  echo "${found%/}"
}

# make_rootfs NAME "PACKAGES": prints the path of a cached tarball of a minbase rootfs with them.
make_rootfs() {
  local name=$1 packages=$2 mirror security key tarball
  mirror=${WAITROOM_DEBIAN_MIRROR:-$(apt_mirror main)}
  security=${WAITROOM_DEBIAN_SECURITY_MIRROR:-$(apt_mirror security)}
  key=$(printf '%s\n' "$ROOTFS_RECIPE" "$SUITE" "$mirror" "$security" "$(tr ' ' '\n' <<<"$packages" | sort)" |
    sha256sum | cut -c1-12)
  tarball=$IMAGES_CACHE/rootfs-$name-$SUITE-$key.tar
  if [ -s "$tarball" ]; then
    echo "$tarball"
    return
  fi
  mkdir -p "$IMAGES_CACHE/debs"
  local t0
  t0=$(date +%s)
  # Globals, not locals: the trap runs after this function (and its subshell) has ended.
  work=$(mktemp -d "$IMAGES_CACHE/.rootfs-$name.XXXXXX")
  root=$work/root
  trap 'umount "$root/proc" 2>/dev/null || true; rm -rf --one-file-system "$work"' EXIT
  say "debootstrap $name base: minbase $SUITE + $packages from $mirror (first time, ~1 min)..." >&2
  if ! debootstrap --variant=minbase --include="${packages// /,}" --cache-dir="$IMAGES_CACHE/debs" \
    "$SUITE" "$root" "$mirror" >"$work/debootstrap.log" 2>&1; then
    tail -n 30 "$work/debootstrap.log" >&2
    die "debootstrap failed (log above)"
  fi
  # Images keep no documentation, and apt inside them installs no recommends and keeps no lists.
  cat >"$root/etc/dpkg/dpkg.cfg.d/waitroom-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
  printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' >"$root/etc/apt/apt.conf.d/90waitroom"
  printf 'deb %s %s main\ndeb %s %s-updates main\ndeb %s %s-security main\n' \
    "$mirror" "$SUITE" "$mirror" "$SUITE" "$security" "$SUITE" >"$root/etc/apt/sources.list"
  say "$name base: security updates..." >&2
  mount -t proc proc "$root/proc"
  if ! { chroot "$root" apt-get update -qq && DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get -y -qq upgrade; } \
    >"$work/upgrade.log" 2>&1; then
    tail -n 30 "$work/upgrade.log" >&2
    die "updating the $name base failed (log above)"
  fi
  chroot "$root" apt-get clean
  umount "$root/proc"
  # What a container never needs: package lists, caches, logs, docs, this machine's identity.
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/debconf/*-old \
    "$root"/var/log/* "$root"/tmp/* "$root"/var/tmp/*
  find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
  # Files only: update-alternatives of a later JRE update needs the man folders to exist.
  find "$root/usr/share/man" "$root/usr/share/info" "$root/usr/share/locale" "$root/usr/share/lintian" \
    -not -type d -delete 2>/dev/null || true
  : >"$root/etc/machine-id"
  rm -f "$root/etc/resolv.conf" "$root/etc/hostname"
  tar --numeric-owner -C "$root" -cf "$work/rootfs.tar" .
  rm -f "$IMAGES_CACHE/rootfs-$name-"*.tar # an older package list's
  mv "$work/rootfs.tar" "$tarball"
  say "$name base rootfs: $(du -m "$tarball" | cut -f1) MB in $(since "$t0")" >&2
  echo "$tarball"
}

# import_base IMAGE TARBALL: `podman import` unless the image exists from this same tarball.
import_base() {
  local image=$1 tarball=$2 key
  key=$(basename "$tarball" .tar)
  if [ "$("${PODMAN[@]}" image inspect --format '{{index .Labels "org.waitroom.rootfs"}}' "$image" 2>/dev/null)" = "$key" ]; then
    return
  fi
  say "podman import $image"
  "${PODMAN[@]}" import --quiet \
    --change "LABEL org.waitroom.rootfs=$key" \
    --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change "ENV LANG=C.UTF-8" \
    --change 'CMD ["/bin/bash"]' \
    "$tarball" "$image" >/dev/null
}

# --- the images ----------------------------------------------------------------------------------

# This machine's CA bundle, for a network that inspects TLS: the builder stage trusts it for PyPI.
CA_BUNDLE=${WAITROOM_CA_BUNDLE:-${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}}
CA_SECRET=()
[ -s "$CA_BUNDLE" ] && CA_SECRET=(--secret "id=ca,src=$CA_BUNDLE")

build() { # build IMAGE BASE PULL CONTEXT CONTAINERFILE [ARGS...]
  local image=$1 base=$2 pull=$3 context=$4 file=$5 t0
  shift 5
  t0=$(date +%s)
  say "podman build $image (on $base)..."
  # The builder stage fetches wheels from PyPI (and, on a Debian base, python3-venv with apt): the
  # host's network is the one that reaches them here.
  "${PODMAN[@]}" build --quiet --pull="$pull" --network host "${LIMITS[@]}" "${CA_SECRET[@]}" \
    --build-arg BASE="$base" --tag "$image" --file "$file" "$@" "$context" >/dev/null
  say "$image built in $(since "$t0"), $("${PODMAN[@]}" image inspect --format '{{.Size}}' "$image" |
    awk '{printf "%.0f MB", $1 / 1e6}')"
}

# A hash of the app image's sources (its build context, as .containerignore cuts it down), put on
# the image as the label org.waitroom.source: the container tests refuse an image built from other
# sources than the working tree's (tests/support/containers.py computes the same hash).
source_key() {
  local roots=() root
  for root in pyproject.toml setup.py MANIFEST.in libs services images/requirements.py; do
    [ ! -e "$root" ] || roots+=("$root")
  done
  find "${roots[@]}" \( -name __pycache__ -o -name '*.egg-info' \) -prune -o -type f ! -name '*.py[co]' -print0 |
    LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16
}

build_app() {
  local base=${WAITROOM_BASE:-} pull=missing tarball
  if [ -z "$base" ]; then
    base=$PY_BASE_IMAGE pull=never
    tarball=$(make_rootfs python "$PY_PACKAGES")
    import_base "$base" "$tarball"
  fi
  build "$APP_IMAGE" "$base" "$pull" . Containerfile --label "org.waitroom.source=$(source_key)"
  # The builder stage gets a tag of its own (all cache hits, a second): the clean-up below keeps
  # what is tagged, so the next build after a code change reuses the installed dependencies.
  "${PODMAN[@]}" build --quiet --pull="$pull" --network host "${LIMITS[@]}" "${CA_SECRET[@]}" --target build \
    --build-arg BASE="$base" --tag "${APP_IMAGE%:*}-build:${APP_IMAGE##*:}" --file Containerfile . >/dev/null
}

# The Kafka jars are the embedded broker's: fetched once from Maven Central into the cache (by the
# project's own code), then copied into a build context of their own.
kafka_jars() {
  local libs=$CACHE_DIR/kafka-$KAFKA_VERSION/libs
  if [ ! -f "$libs/kafka_2.13-$KAFKA_VERSION.jar" ]; then
    command -v mvn >/dev/null || die "Maven ('mvn') is needed once to fetch Kafka's jars (apt-get install maven)"
    PYTHONPATH=libs${PYTHONPATH:+:$PYTHONPATH} python3 -c '
try:
    from waitroom_devtools.broker import ensure_kafka_jars
except ImportError:  # before the developer tools had a package of their own
    from waitroom_platform.broker import ensure_kafka_jars
print(ensure_kafka_jars(), end="")' >/dev/null
  fi
  echo "$libs"
}

build_kafka() {
  local base=${WAITROOM_KAFKA_BASE:-} pull=missing libs context tarball
  if [ -z "$base" ]; then
    base=$JRE_BASE_IMAGE pull=never
    tarball=$(make_rootfs jre "$JRE_PACKAGES")
    import_base "$base" "$tarball"
  fi
  libs=$(kafka_jars)
  context=$IMAGES_CACHE/kafka-context
  rm -rf "$context"
  mkdir -p "$context/libs"
  cp -l "$libs"/*.jar "$context/libs/" 2>/dev/null || cp "$libs"/*.jar "$context/libs/"
  cp images/kafka/entrypoint.sh images/kafka/log4j.properties "$context/"
  build "$KAFKA_IMAGE" "$base" "$pull" "$context" images/kafka/Containerfile --build-arg KAFKA_VERSION="$KAFKA_VERSION"
}

# moto's server on the app image's base (a test tool: never pushed, not in the chart).
build_moto() {
  local base=${WAITROOM_BASE:-} pull=missing tarball
  if [ -z "$base" ]; then
    base=$PY_BASE_IMAGE pull=never
    tarball=$(make_rootfs python "$PY_PACKAGES")
    import_base "$base" "$tarball"
  fi
  build "$MOTO_IMAGE" "$base" "$pull" images/moto images/moto/Containerfile --build-arg MOTO_VERSION="$MOTO_VERSION"
}

# A tag says which version runs: never none (podman would say :latest) and never :latest.
for image in "$APP_IMAGE" "$KAFKA_IMAGE" "$MOTO_IMAGE"; do
  name=${image##*/}
  if [[ $name != *:* || $name == *:latest ]]; then die "$image: give the image a version tag, not :latest or none"; fi
done

ensure_tools
configure_podman
mkdir -p "$IMAGES_CACHE"
declare -A built=()
for one in "${targets[@]}"; do
  [ -z "${built[$one]:-}" ] || continue
  built[$one]=1
  "build_$one"
done
# Layers of earlier builds that nothing uses any more (only those on the bases made here).
"${PODMAN[@]}" image prune --force --filter label=org.waitroom.rootfs >/dev/null
say "done in $(since "$started")"
