#!/usr/bin/env bash
# What a newcomer waits for: a fresh clone's `make run UI=0` (set-up included, pip's cache warm)
# with an empty store and an empty quantbench cache, up to the results table; then a second
# `make run` until the dashboard's URL answers.
#
#   bench/newcomer.sh                 # clones this checkout's HEAD into a temporary directory
#   bench/newcomer.sh --ref wt-index  # another commit or branch of this repository
#   bench/newcomer.sh --dry-run       # prints the steps it would time, runs nothing
#
# Prints the two times, the machine, the commit, the date and the load average before and after
# (run it on a quiet machine: the set-up compiles and the sweep measures). The temporary clone,
# store and cache are removed at the end unless --keep is given.
set -euo pipefail

repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
ref=HEAD
port=7861
dry=0
keep=0
dashboard_timeout=300  # seconds the second run may take to answer before the script gives up

while [ $# -gt 0 ]; do
  case "$1" in
    --ref) ref=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --dry-run) dry=1; shift ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "newcomer.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

work=$(mktemp -d "${TMPDIR:-/tmp}/newcomer.XXXXXX")
clone=$work/quantbench
cleanup() {
  # TERM, not INT: a background job of a non-interactive shell starts with SIGINT ignored, and so
  # does everything it runs (the dashboard of the second run outlived an INT here).
  if [ -n "${ui_pid:-}" ]; then kill -TERM -- "-$ui_pid" 2>/dev/null || true; wait "$ui_pid" 2>/dev/null || true; fi
  if [ "$keep" = 0 ]; then rm -rf "$work"; else echo "kept $work"; fi
}
trap cleanup EXIT

# Each timed step goes through `step`, so --dry-run shows exactly what a real run would do.
step() {
  if [ "$dry" = 1 ]; then printf '+'; printf ' %q' "$@"; printf '\n'; else "$@"; fi
}

if [ "$dry" = 0 ] && curl --silent --output /dev/null --max-time 2 "http://127.0.0.1:$port/"; then
  echo "newcomer.sh: something already answers on port $port: the second run would time it; pass --port N" >&2
  exit 2
fi
sha=$(git -C "$repo" rev-parse "$ref")
load_before=$(cut -d' ' -f1 /proc/loadavg)
export QUANTBENCH_STORE=$work/store QUANTBENCH_CACHE=$work/cache  # nothing measured or cached before

start=$(date +%s.%N)
step git clone --quiet --no-checkout "$repo" "$clone"
step git -C "$clone" checkout --quiet "$sha"
step make -C "$clone" run UI=0
first=$(echo "$(date +%s.%N) - $start" | bc)

# The second run: the sweep finds every trial in the store, then the dashboard starts; timed to
# the first answer of its URL. Its own session, so stopping it stops everything it started.
start=$(date +%s.%N)
if [ "$dry" = 1 ]; then
  step setsid make -C "$clone" run UI_PORT="$port"
  step curl --silent --fail --max-time 2 "http://127.0.0.1:$port/"
else
  setsid make -C "$clone" run UI_PORT="$port" >"$work/second-run.log" 2>&1 &
  ui_pid=$!
  until curl --silent --fail --output /dev/null --max-time 2 "http://127.0.0.1:$port/"; do
    if ! kill -0 "$ui_pid" 2>/dev/null; then
      echo "newcomer.sh: the second make run exited before the dashboard answered:" >&2
      tail -20 "$work/second-run.log" >&2
      exit 1
    fi
    if [ "$(echo "$(date +%s.%N) - $start > $dashboard_timeout" | bc)" = 1 ]; then
      echo "newcomer.sh: the dashboard did not answer within $dashboard_timeout s" >&2
      exit 1
    fi
    sleep 0.5
  done
fi
second=$(echo "$(date +%s.%N) - $start" | bc)

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')
printf 'fresh clone -> make run UI=0 (results table): %.0f s; second make run -> dashboard answering: %.1f s\n' \
  "$first" "$second"
printf 'commit %s, %s, %s cores, %s GiB, load average %s before, %s after, %s%s\n' \
  "${sha:0:12}" "$cpu" "$(nproc)" "$(awk '/MemTotal/ {printf "%.0f", $2 / 2^20}' /proc/meminfo)" \
  "$load_before" "$(cut -d' ' -f1 /proc/loadavg)" "$(date -u +%Y-%m-%d)" "$([ "$dry" = 1 ] && echo ' (dry run)')"
