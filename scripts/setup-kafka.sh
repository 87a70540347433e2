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

# shellcheck source=scripts/apt-install.sh
source "$(dirname "$0")/apt-install.sh"
apt_install ${need_apt[@]+"${need_apt[@]}"}
