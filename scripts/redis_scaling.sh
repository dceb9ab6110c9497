#!/usr/bin/env bash
# Scaling out through Redis Streams: throughput of 1, 2 and 3 `redis_worker` processes against
# one process counting the same payloads without Redis (`redis_feed --local`), on this machine.
#   scripts/redis_scaling.sh [ENTRIES] [ROUNDS]        (defaults: 200000 entries, 3 rounds)
# Starts its own redis-server (no persistence, a temporary directory, port $PORT or 6390) and
# stops it at the end. Each round: load ENTRIES generated payloads, start the workers, time
# until ENTRIES results exist (`redis_feed --wait`), stop the workers with SIGTERM, verify.
# Prints a Markdown table of the median entries/s of the rounds.
set -euo pipefail
cd "$(dirname "$0")/.."
entries=${1:-200000}
rounds=${2:-3}
port=${PORT:-6390}
url="redis://127.0.0.1:$port"
command -v redis-server >/dev/null || { echo "redis-server not found (apt-get install redis-server)" >&2; exit 1; }

cargo build --release --example redis_worker --example redis_feed >&2
bin=${CARGO_TARGET_DIR:-target}/release/examples
dir=$(mktemp -d)
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" \
  >"$dir/redis.log" &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$dir"' EXIT
until "$bin/redis_feed" --redis "$url" --wait 0 >/dev/null 2>&1; do sleep 0.05; done

median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
rate() { sed -E 's/.* ([0-9]+) entries\/s$/\1/'; }

run_redis() { # $1 = worker processes; prints entries/s
  "$bin/redis_feed" --redis "$url" --reset --generate "$entries" >&2
  "$bin/redis_feed" --redis "$url" --wait "$entries" >"$dir/wait.out" &
  local waiter=$! pids=()
  for i in $(seq 1 "$1"); do
    "$bin/redis_worker" --redis "$url" --consumer "w$i" --quiet 2>>"$dir/workers.log" &
    pids+=($!)
  done
  wait $waiter
  kill -TERM "${pids[@]}"
  wait "${pids[@]}"
  "$bin/redis_feed" --redis "$url" --verify >&2
  rate <"$dir/wait.out"
}

declare -A result
for ((r = 1; r <= rounds; r++)); do
  result[local]+="$("$bin/redis_feed" --local --generate "$entries" | rate) "
  for p in 1 2 3; do
    result[$p]+="$(run_redis "$p") "
  done
  echo "round $r: local ${result[local]}| 1: ${result[1]}| 2: ${result[2]}| 3: ${result[3]}" >&2
done

base=$(tr ' ' '\n' <<<"${result[local]}" | grep . | median)
echo "<!-- $(date -u +%FT%TZ), $(nproc) cores, redis $(redis-server --version | sed -E 's/.*v=([^ ]+).*/\1/'), $entries entries, median of $rounds rounds -->"
echo "| setup | entries/s | vs one process without Redis |"
echo "|---|---:|---:|"
echo "| one process, no Redis (\`redis_feed --local\`) | $base | 1.00x |"
for p in 1 2 3; do
  m=$(tr ' ' '\n' <<<"${result[$p]}" | grep . | median)
  s=""; [ "$p" -gt 1 ] && s="es"
  echo "| $p \`redis_worker\` process$s + redis-server | $m | $(awk -v a="$m" -v b="$base" 'BEGIN { printf "%.2fx", a / b }') |"
done
