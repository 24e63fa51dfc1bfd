#!/bin/bash
# Container health check of a Ghost Runner service, for images that ship no curl:
# GET /readyz on the service's own HTTP port over bash's /dev/tcp; healthy only on `200`.
# (/readyz turns 503 while the service drains, so a draining container reports unhealthy.)
#
# The port: the first argument, else the port of GHOST_<SERVICE>__SERVER__HTTP_LISTEN, else the
# service's default HTTP port. GHOST_SERVICE names the service (the image sets it).
# Usage: ghost-healthcheck [PORT]
set -euo pipefail

service=${GHOST_SERVICE:?GHOST_SERVICE is not set}
listen_var="GHOST_${service^^}__SERVER__HTTP_LISTEN"
listen=${!listen_var:-}
port=${1:-${listen##*:}}
if [[ -z "$port" ]]; then
  case "$service" in
    gateway) port=8080 ;;
    router) port=8081 ;;
    executor) port=8082 ;;
    summarizer) port=8083 ;;
    alerter) port=8084 ;;
    *) echo "ghost-healthcheck: unknown service $service" >&2; exit 2 ;;
  esac
fi
if [[ ! "$port" =~ ^[0-9]{1,5}$ ]]; then
  echo "ghost-healthcheck: bad port '$port'" >&2
  exit 2
fi

exec 3<>"/dev/tcp/127.0.0.1/$port" || { echo "ghost-healthcheck: nothing listens on $port" >&2; exit 1; }
printf 'GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3
status=""
IFS= read -r -t 3 status <&3 || true
exec 3<&- 3>&-
status=${status%$'\r'}
if [[ "$status" =~ ^HTTP/1\.[01]\ 200 ]]; then
  exit 0
fi
echo "ghost-healthcheck: ${service} /readyz on ${port}: ${status:-no answer}" >&2
exit 1
