#!/usr/bin/env bash
# Installs the real browser the settings-page test drives: Debian's chromium and its WebDriver
# (chromium-driver), headless. tests/settings_browser.rs starts chromedriver itself on a free
# port and stops it at the end. Idempotent: skips what is already there.
#   scripts/browser.sh            install (as root), then print the versions
set -euo pipefail

need=()
for p in chromium chromium-driver fonts-dejavu-core; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if ((${#need[@]})); then
  echo "browser: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
chromium --version
chromedriver --version
