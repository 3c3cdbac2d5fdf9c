#!/usr/bin/env bash
# Puts Debian's `prometheus` on PATH if it is not there yet, and prints the binary's path.
# Why apt: `ray metrics launch-prometheus` downloads a release tarball from GitHub, which fails on
# machines that only reach the Debian/PyPI mirrors; Debian's package (2.42) scrapes Ray's endpoint fine.
# Only the binary is wanted: tests start their own Prometheus on free ports with their own config;
# --no-install-recommends skips the node exporter the package recommends.
set -euo pipefail

if ! command -v prometheus >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
command -v prometheus
