#!/usr/bin/env bash
# What the Kafka connector's build and tests need. Safe to run any number of times.
#  - make and a C/C++ toolchain: rdkafka builds librdkafka from its bundled source;
#  - zlib headers (librdkafka's compression).
# The tests run librdkafka's mock cluster in process: no broker to install.
set -euo pipefail

need_apt=()
command -v make >/dev/null 2>&1 || need_apt+=(make)
command -v cc >/dev/null 2>&1 || need_apt+=(gcc)
command -v c++ >/dev/null 2>&1 || need_apt+=(g++)
[ -f /usr/include/zlib.h ] || need_apt+=(zlib1g-dev)

if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi
