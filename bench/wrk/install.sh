#!/bin/sh
# Installs wrk (the HTTP load generator of `cairn-bench --only wrk`) when it is missing.
# wrk is a Debian/Ubuntu package; elsewhere install it with the system's package manager.
set -eu
if command -v wrk >/dev/null 2>&1; then
    echo "wrk already installed: $(command -v wrk)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "wrk is missing and apt-get is not available: install wrk with your package manager" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
$SUDO apt-get update
$SUDO apt-get install -y wrk
command -v wrk
