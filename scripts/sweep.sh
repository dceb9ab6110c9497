#!/usr/bin/env bash
# The scaling sweep: producers x workers x workload, this crate against the floor (raw
# crossbeam channels), on whatever machine runs it. Unattended; about 5-8 minutes on 16 cores.
#   scripts/sweep.sh [out.md]
# Builds the release bench first (cargo bench --no-run), then runs it once with the full lists.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-sweep.md}
cpus=$(nproc)
lists() { # 1 2 4 8 ... up to and including the core count
  local n=1 acc=""
  while [ "$n" -lt "$cpus" ]; do acc="$acc$n,"; n=$((n * 2)); done
  echo "${acc}${cpus}"
}
export PRODUCERS=${PRODUCERS:-$(lists)}
export WORKERS=${WORKERS:-$(lists)}
export WORKLOADS=${WORKLOADS:-empty,1us,50us}
export ROUNDS=${ROUNDS:-3}
export ROUND_MS=${ROUND_MS:-40}
cargo bench --bench producers --no-run
{
  echo "<!-- $(date -u +%FT%TZ), $(nproc) cores, $(uname -m) -->"
  cargo bench --bench producers 2>/dev/null
} | tee "$out"
