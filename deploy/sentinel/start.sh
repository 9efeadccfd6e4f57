#!/usr/bin/env bash
# A Redis master, its replica and three sentinels on this machine, each in the
# background, with its config, log and pid file in DIR (default ./run/sentinel):
#
#   deploy/sentinel/start.sh            # or: make sentinel
#   python server.py --redis-url redis+sentinel://127.0.0.1:26379,127.0.0.1:26380,127.0.0.1:26381/mymaster/0
#   deploy/sentinel/stop.sh             # stops what start.sh started in DIR
#
# Ports and timings come from the environment (the defaults below). The tests
# run this script with free ports and short timings.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
DIR="$(mkdir -p "${DIR:-run/sentinel}" && cd "${DIR:-run/sentinel}" && pwd)"
MASTER_PORT="${MASTER_PORT:-6380}"
REPLICA_PORT="${REPLICA_PORT:-6381}"
SENTINEL_PORTS="${SENTINEL_PORTS:-26379 26380 26381}"
DOWN_AFTER_MS="${DOWN_AFTER_MS:-5000}"
FAILOVER_TIMEOUT_MS="${FAILOVER_TIMEOUT_MS:-60000}"

fill() {  # fill TEMPLATE OUT [SENTINEL_PORT]: the template with this run's values
  sed -e "s|{DIR}|$DIR|g" -e "s|{MASTER_PORT}|$MASTER_PORT|g" \
      -e "s|{REPLICA_PORT}|$REPLICA_PORT|g" -e "s|{SENTINEL_PORT}|${3:-}|g" \
      -e "s|{DOWN_AFTER_MS}|$DOWN_AFTER_MS|g" -e "s|{FAILOVER_TIMEOUT_MS}|$FAILOVER_TIMEOUT_MS|g" \
      "$here/$1" > "$2"
}

wait_for() {  # wait_for PORT: until redis-cli gets an answer there (10 s at most)
  for _ in $(seq 100); do
    redis-cli -p "$1" ping >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "nothing answers on port $1 (see $DIR/*.log)" >&2
  return 1
}

fill master.conf "$DIR/master.conf"
fill replica.conf "$DIR/replica.conf"
redis-server "$DIR/master.conf"
wait_for "$MASTER_PORT"
redis-server "$DIR/replica.conf"
wait_for "$REPLICA_PORT"
urls=()
for port in $SENTINEL_PORTS; do
  fill sentinel.conf "$DIR/sentinel-$port.conf" "$port"
  redis-sentinel "$DIR/sentinel-$port.conf"
  wait_for "$port"
  urls+=("127.0.0.1:$port")
done
echo "master 127.0.0.1:$MASTER_PORT, replica 127.0.0.1:$REPLICA_PORT, in $DIR"
echo "redis+sentinel://$(IFS=,; echo "${urls[*]}")/mymaster/0"
