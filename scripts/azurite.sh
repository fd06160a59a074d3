#!/usr/bin/env bash
# Start/stop Azurite (blob 10000, queue 10001, table 10002) on loopback.
# Data is kept in memory: Azurite's disk mode rewrites its whole table database as one
# JSON file every few seconds, which makes each request slower as the tables grow (a
# 300-device demo ran 1.6x slower on disk). CERTROLL_AZURITE_PERSIST=1 keeps data
# under .certroll/azurite/ across restarts instead.
set -euo pipefail
cd "$(dirname "$0")/.."
home="${CERTROLL_HOME:-.certroll}"
dir="$home/azurite"
pidfile="$dir/azurite.pid"
mkdir -p "$dir"

running() { [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }
port_open() { (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

case "${1:-start}" in
  start)
    if running; then echo "azurite already running (pid $(cat "$pidfile"))"; exit 0; fi
    if port_open 10002; then echo "azurite: port 10002 already serves; using it"; exit 0; fi
    if [[ "${CERTROLL_AZURITE_PERSIST:-0}" == "1" ]]; then store=(--location "$dir")
    else store=(--inMemoryPersistence); fi
    nohup node_modules/.bin/azurite --silent --disableTelemetry --skipApiVersionCheck --loose \
      "${store[@]}" --blobHost 127.0.0.1 --queueHost 127.0.0.1 --tableHost 127.0.0.1 \
      >"$dir/azurite.log" 2>&1 &
    echo $! >"$pidfile"
    for _ in $(seq 1 100); do
      if port_open 10000 && port_open 10001 && port_open 10002; then
        echo "azurite started (pid $(cat "$pidfile"))"; exit 0
      fi
      sleep 0.1
    done
    echo "azurite did not start; see $dir/azurite.log" >&2; exit 1 ;;
  stop)
    if running; then kill "$(cat "$pidfile")" && rm -f "$pidfile" && echo "azurite stopped"
    else rm -f "$pidfile"; echo "azurite not running"; fi ;;
  status)
    if running; then echo "running (pid $(cat "$pidfile"))"; else echo "stopped"; exit 1; fi ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
