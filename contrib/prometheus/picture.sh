#!/usr/bin/env bash
# Makes the README's metrics picture from a real run, on loopback only:
#   Debian's prometheus scrapes mxhook every second while smtp-source sends mail; the
#   webhook answers 200, then 503 for a while (retries pile up in pending/), then 200
#   again (the backlog drains); headless Chromium captures Prometheus's graph page.
#
#   contrib/prometheus/picture.sh [OUT.png]     (default docs/images/metrics.png)
#
# Needs: build/release/mxhook (or MXHOOK=...), prometheus, smtp-source (postfix), chromium,
# python3. Everything it starts it stops, by PID; its files go to a temporary directory.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
out="${1:-$repo/docs/images/metrics.png}"
bin="${MXHOOK:-$repo/build/release/mxhook}"
work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {  # wait_port PORT: until it accepts, 10 s at most
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
    echo "picture.sh: nothing listens on $1" >&2; return 1
}
sink() {  # sink STATUS: (re)start the webhook sink on $hook_port
    if [ -n "${sink_pid:-}" ]; then kill "$sink_pid"; wait "$sink_pid" 2>/dev/null || true; fi
    python3 "$repo/bench/sink.py" --port "$hook_port" --status "$1" >"$work/sink.log" 2>&1 &
    sink_pid=$!
    pids+=("$sink_pid")
    wait_port "$hook_port"
}
load() {  # load SECONDS CONCURRENCY: smtp-source in rounds for about SECONDS
    local until=$((SECONDS + $1))
    while [ $SECONDS -lt $until ]; do
        /usr/sbin/smtp-source -s "$2" -m 400 -l 2048 -f a@example.org -t b@example.com "127.0.0.1:$smtp_port"
        sleep 0.2
    done
}

smtp_port=$(port); metrics_port=$(port); hook_port=$(port); prom_port=$(port)
sink 200
env -i PATH="$PATH" SPOOL_DIR="$work/spool" SMTP_LISTEN="127.0.0.1:$smtp_port" METRICS_LISTEN="127.0.0.1:$metrics_port" \
    WEBHOOK_URL="http://127.0.0.1:$hook_port/hook" WEBHOOK_SIGNING_KEY=k SMTP_MAX_CONNECTIONS_PER_IP=1000 \
    RETRY_SCAN_INTERVAL_MS=1000 RETRY_INTERVAL_MS=2000 RETRY_MAX_INTERVAL_MS=8000 LOG_LEVEL=warn \
    "$bin" >"$work/mxhook.log" 2>&1 &
pids+=($!)
wait_port "$smtp_port"
cat >"$work/prometheus.yml" <<CFG
global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: ["$repo/contrib/prometheus/alerts.yml"]
scrape_configs:
  - job_name: mxhook
    static_configs: [{targets: ["127.0.0.1:$metrics_port"]}]
CFG
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
    --web.listen-address="127.0.0.1:$prom_port" >"$work/prometheus.log" 2>&1 &
pids+=($!)
wait_port "$prom_port"

load 40 10          # webhook answers 200
sink 503; load 40 10  # the webhook fails: attempts are retried, pending grows
sink 200; load 40 10  # it recovers: the backlog drains while mail keeps coming
sleep 5

enc() { python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$1"; }
q0=$(enc 'sum by (code) (rate(mxhook_smtp_transactions_total[10s]))')
q1=$(enc 'sum by (outcome) (rate(mxhook_deliveries_total[10s]))')
q2=$(enc 'mxhook_spool_items{state=~"pending|processing"}')
url="http://127.0.0.1:$prom_port/graph?g0.expr=$q0&g0.tab=0&g0.range_input=2m&g1.expr=$q1&g1.tab=0&g1.range_input=2m&g2.expr=$q2&g2.tab=0&g2.range_input=2m"
chromium --headless=new --no-sandbox --disable-gpu --hide-scrollbars --window-size=1400,2250 \
    --virtual-time-budget=15000 --screenshot="$work/shot.png" "$url" >"$work/chromium.log" 2>&1
mkdir -p "$(dirname "$out")"
cp "$work/shot.png" "$out"
echo "picture.sh: wrote $out"
