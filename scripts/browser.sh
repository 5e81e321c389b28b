#!/usr/bin/env bash
# Installs the headless browser the browser tests drive (Debian's chromium, through Playwright's
# executable_path): Playwright's own browser downloads are not used.  Idempotent: does nothing when
# /usr/bin/chromium is already there.  Needs root (or sudo) and the Debian package registry.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core fonts-liberation >/dev/null
/usr/bin/chromium --version
