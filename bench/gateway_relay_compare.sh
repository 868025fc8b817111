#!/usr/bin/env bash
# The gateway's relay cost against the bare grpc.aio relay, interleaved in one run (this
# machine's load changes minute to minute: compare rows of the same round, not across runs).
#
#   bash bench/gateway_relay_compare.sh [ROUNDS] [STREAMS] [STEP_MS]   (defaults 2 512 20)
#
# Per round: bare relay, gateway with coalescing off, gateway (coalescing on, the default),
# two gateway processes; with MULTI=K (e.g. 4), also the bare relay and the gateway with an
# upstream that streams K tokens per chunk (what an engine sending several tokens a step, or a
# runtime merging a backlog, gives). Rows go to $OUT/gateway_relay.md (OUT defaults to
# /tmp/out). CLIENTS (2) and UPSTREAMS (1) set the load side's processes (the bare relay always
# uses one upstream); on a machine with free cores, raise them so that the load side is not
# the limit. DURATION (10) and WARMUP (3) are each measurement's window and warm-up in seconds.
set -u
ROUNDS=${1:-2}
STREAMS=${2:-512}
STEP_MS=${3:-20}
OUT=${OUT:-/tmp/out}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
REPORT="$OUT/gateway_relay.md"
CLIENTS=${CLIENTS:-2}
UPSTREAMS=${UPSTREAMS:-1}
MULTI=${MULTI:-}
COMMON=(--streams "$STREAMS" --step-ms "$STEP_MS" --clients "$CLIENTS"
  --duration "${DURATION:-10}" --warmup "${WARMUP:-3}" --report "$REPORT")
BARE="exec {python} bench/bare_relay.py {port} {upstream}"
echo "# $(date -u +%FT%TZ) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)" >>"$REPORT"
for round in $(seq "$ROUNDS"); do
  echo "round $round" >&2
  $PY bench/gateway_relay.py "${COMMON[@]}" --relay-cmd "$BARE" | tail -1
  $PY bench/gateway_relay.py "${COMMON[@]}" --upstreams "$UPSTREAMS" \
    --gateway-args=--no-relay-coalesce | tail -1
  $PY bench/gateway_relay.py "${COMMON[@]}" --upstreams "$UPSTREAMS" | tail -1
  $PY bench/gateway_relay.py "${COMMON[@]}" --upstreams "$UPSTREAMS" --gateways 2 | tail -1
  if [ -n "$MULTI" ]; then
    $PY bench/gateway_relay.py "${COMMON[@]}" --relay-cmd "$BARE" --tokens-per-chunk "$MULTI" \
      | tail -1
    $PY bench/gateway_relay.py "${COMMON[@]}" --upstreams "$UPSTREAMS" \
      --tokens-per-chunk "$MULTI" | tail -1
  fi
done
echo "# end: load $(cut -d' ' -f1-3 /proc/loadavg)" >>"$REPORT"
