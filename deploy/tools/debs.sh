#!/usr/bin/env bash
# Debian packages the monitoring tests run (promtool, amtool, a real Prometheus on loopback),
# pinned; installed only when missing or at another version. Needs root or sudo.
# `debs.sh bench` adds wrk, the load generator of bench/proxy.py and bench/feedback.py.
set -euo pipefail
# Pinned on Debian 12 (our machines); elsewhere (e.g. GitHub's Ubuntu runners, whose archive
# has other versions) the distribution's own version, said aloud.
# shellcheck source=/dev/null
. /etc/os-release
if [[ "${ID:-}" == debian && "${VERSION_ID:-}" == 12 ]]; then
  PINS=(
    "prometheus=2.42.0+ds-5+deb12u1"
    "prometheus-alertmanager=0.25.0-1+b4"
  )
  [[ "${1:-}" == bench ]] && PINS+=("wrk=4.1.0-3+b2")
else
  echo "debs.sh: ${PRETTY_NAME:-unknown system}: installing its own prometheus packages (the pins are Debian 12's)" >&2
  PINS=("prometheus=" "prometheus-alertmanager=")
  [[ "${1:-}" == bench ]] && PINS+=("wrk=")
fi
missing=()
for pin in "${PINS[@]}"; do
  have=$(dpkg-query -W -f='${Version}' "${pin%%=*}" 2>/dev/null || true)
  if [[ -z "${pin#*=}" ]]; then
    [[ -n "$have" ]] || missing+=("${pin%%=*}")
  else
    [[ "$have" == "${pin#*=}" ]] || missing+=("$pin")
  fi
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
if [[ "${1:-}" == bench ]]; then wrk --version 2>&1 | head -n 1; fi
