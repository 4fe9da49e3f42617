#!/usr/bin/env bash
# Debian packages the monitoring tests run (promtool, amtool, a real Prometheus on loopback),
# pinned; installed only when missing or at another version. Needs root or sudo.
set -euo pipefail
PINS=(
  "prometheus=2.42.0+ds-5+deb12u1"
  "prometheus-alertmanager=0.25.0-1+b4"
)
missing=()
for pin in "${PINS[@]}"; do
  have=$(dpkg-query -W -f='${Version}' "${pin%%=*}" 2>/dev/null || true)
  [[ "$have" == "${pin#*=}" ]] || missing+=("$pin")
done
if ((${#missing[@]})); then
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y --no-install-recommends "${missing[@]}" \
    || { $sudo apt-get update -q && $sudo apt-get install -y --no-install-recommends "${missing[@]}"; }
fi
promtool --version | head -n 1
amtool --version 2>&1 | head -n 1
