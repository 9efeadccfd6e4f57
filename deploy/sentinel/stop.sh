#!/usr/bin/env bash
# Stop what deploy/sentinel/start.sh started in DIR (default ./run/sentinel):
# each process by the pid in its own pid file.
set -uo pipefail
DIR="${DIR:-run/sentinel}"
for pidfile in "$DIR"/*.pid; do
  [ -e "$pidfile" ] || continue
  kill "$(cat "$pidfile")" 2>/dev/null || true
done
