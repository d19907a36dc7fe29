#!/usr/bin/env bash
# Scale-out test with a real Docker engine (issue 14): docker-compose.scale.yml's mxhook
# replicas behind HAProxy (PROXY protocol v2), driven through the balancer.
#
#   tests/scale/run.sh
#
#   A  one replica behind HAProxy: 3,000 messages of 2 KB from 20 concurrent SMTP clients;
#      accepted messages/s.
#   A3 the same on three replicas (throughput against one replica, same run, no fault).
#   B  three replicas: 3,000 messages from 20 clients; after 1,000 acknowledgments one
#      replica (mxhook-2) is SIGKILLed and started again. A client whose session fails
#      sends that message again on a new session (at least once, like an MTA), bounded.
#   C  the webhook sink refuses (503) every delivery; 90 more messages spread over the
#      replicas and wait in their spools: a few meta.json of each show the client address
#      mxhook took from the PROXY header (the host as HAProxy saw it, not HAProxy).
#   D  the sink accepts again, except from mxhook-3, which is drained (`mxhook drain` with
#      a short DRAIN_TIMEOUT_MS: it reports what is left, exit 1); 60 messages sent after
#      the drain must all land elsewhere; mxhook-3 is stopped and removed (its volume
#      kept), and mxhook-1 adopts the volume (`mxhook spool adopt`); the adopted items are
#      delivered by mxhook-1 under their old X-Mxhook-Id.
#   Then: every acknowledged message delivered at least once (by test id), duplicates
#   (same X-Mxhook-Id twice) only for messages the killed replica held, every spool
#   (pending, processing, dead) empty, including the adopted volume; a Markdown table of
#   the numbers (also written to $MXHOOK_SCALE_TABLE when set).
#
# Engine and image: as tests/docker/run.sh (tests/docker/engine.sh): exit 0 with
# "SKIPPED: <reason>" when not root or Docker cannot be had; a dockerd it started is
# stopped at the end. The mxhook image is built from the working tree unless MXHOOK_IMAGE
# names one that exists (then reused and kept), or the test runs inside tests/docker/run.sh
# (MXHOOK_DOCKER_TEST_THEN=tests/scale/run.sh: that test's engine and image). The HAProxy
# image (docker/haproxy/Dockerfile) is always built and removed. Everything it creates
# (containers, network, volumes, images it built, the sink, its temporary directory) is
# removed at the end. All traffic stays on 127.0.0.1 and the test's own containers.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
started_at=$SECONDS

log_tag=scale-test
# shellcheck source=tests/docker/engine.sh
. "$repo/tests/docker/engine.sh"

[ "$(id -u)" -eq 0 ] || skip "scale test needs root (to install and start Docker); running as uid $(id -u)"

engine_lock

work=$(mktemp -d /tmp/mxhook-scale-test.XXXXXX)
chmod 755 "$work"
run_id=$(basename "$work" | tr -dc 'a-z0-9' | tail -c 6)
run_id=${run_id:-$$}
project="mxhook-sc-$run_id"
export MXHOOK_HAPROXY_IMAGE="mxhook-scale-haproxy:$run_id"
if [ -z "${MXHOOK_IMAGE:-}" ]; then
  export MXHOOK_IMAGE="mxhook-scale-test:$run_id"
fi
sink_pid=""
load_pid=""
compose_up=0
haproxy_built=0

cleanup() {
  local rc=$?
  set +e
  trap - EXIT
  for pid in "$load_pid" "$sink_pid"; do
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null
      wait "$pid" 2>/dev/null
    fi
  done
  if [ -n "$docker_bin" ]; then
    if [ "$compose_up" = 1 ]; then
      if [ "$rc" -ne 0 ]; then
        say "container logs (last 25 lines each):"
        (cd "$work/project" && timeout 60 "$docker_bin" compose -p "$project" -f docker-compose.scale.yml \
          -f "$here/compose.test.yml" logs --no-color --tail 25) 2>&1 | sed 's/^/    /'
      fi
      (cd "$work/project" && timeout 120 "$docker_bin" compose -p "$project" -f docker-compose.scale.yml \
        -f "$here/compose.test.yml" down -v --remove-orphans --timeout 10) >"$work/down.log" 2>&1 ||
        { say "docker compose down failed:"; sed 's/^/    /' "$work/down.log"; }
    fi
    # Anything of the project still there (a run that failed half-way, `compose run` leftovers).
    # shellcheck disable=SC2086 # ids are whitespace-separated on purpose
    local ids
    ids=$(timeout 30 "$docker_bin" ps -aq --filter "label=com.docker.compose.project=$project" 2>/dev/null)
    [ -n "$ids" ] && timeout 60 "$docker_bin" rm -f $ids >/dev/null 2>&1
    ids=$(timeout 30 "$docker_bin" volume ls -q --filter "label=com.docker.compose.project=$project" 2>/dev/null)
    [ -n "$ids" ] && timeout 60 "$docker_bin" volume rm -f $ids >/dev/null 2>&1
    ids=$(timeout 30 "$docker_bin" network ls -q --filter "label=com.docker.compose.project=$project" 2>/dev/null)
    [ -n "$ids" ] && timeout 60 "$docker_bin" network rm $ids >/dev/null 2>&1
    if [ "$haproxy_built" = 1 ] || timeout 30 "$docker_bin" image inspect "$MXHOOK_HAPROXY_IMAGE" >/dev/null 2>&1; then
      timeout 60 "$docker_bin" rmi -f "$MXHOOK_HAPROXY_IMAGE" >/dev/null 2>&1
    fi
    engine_remove_images
    local left
    left=$(timeout 30 "$docker_bin" ps -aq --filter "label=com.docker.compose.project=$project" 2>/dev/null)
    left+=$(timeout 30 "$docker_bin" volume ls -q --filter "label=com.docker.compose.project=$project" 2>/dev/null)
    if [ -n "$left" ]; then
      say "cleanup left containers or volumes of $project behind: $left"
      [ "$rc" -eq 0 ] && rc=1
    fi
  fi
  engine_stop
  rm -rf "$work"
  if [ "$rc" -eq 0 ]; then
    say "cleaned up"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

have_pkg python3 || { say "installing python3"; apt_install python3 || fail "could not install python3: $(tail -3 "$work/apt.log")"; }
python=$(command -v python3)
scale() { "$python" "$here/scale.py" "$@"; } # in the foreground only: `&` would leave its pid unknown

engine_start

# ---- images -------------------------------------------------------------------------------
if [ "$engine_shared" = 1 ]; then
  "$docker_bin" image inspect "$MXHOOK_IMAGE" >/dev/null 2>&1 || fail "the outer test's image $MXHOOK_IMAGE is missing"
  ok "reusing $MXHOOK_IMAGE, built by the outer test"
elif "$docker_bin" image inspect "$MXHOOK_IMAGE" >/dev/null 2>&1; then
  image_ours=0
  ok "reusing the existing image $MXHOOK_IMAGE (MXHOOK_IMAGE; kept at the end)"
else
  engine_build_image
fi
say "building $MXHOOK_HAPROXY_IMAGE from docker/haproxy/Dockerfile"
haproxy_built=1
(cd "$repo" && COMPOSE_TIMEOUT=900 compose -f docker-compose.scale.yml build --progress plain haproxy) \
  >"$work/haproxy-build.log" 2>&1 || {
  tail -30 "$work/haproxy-build.log" | sed 's/^/    /'
  fail "HAProxy image build failed"
}
[ "$("$docker_bin" image inspect -f '{{.Config.User}}' "$MXHOOK_HAPROXY_IMAGE")" = haproxy ] || fail "the HAProxy image does not run as user haproxy"
haproxy_version=$("$docker_bin" run --rm --entrypoint /usr/sbin/haproxy "$MXHOOK_HAPROXY_IMAGE" -v 2>&1 | sed -n '1s/^HAProxy version \([^ ]*\).*/\1/p')
ok "HAProxy image built (Debian's haproxy $haproxy_version), runs as user haproxy"

# ---- the webhook sink on the host ----------------------------------------------------------
gateway=$(timeout 60 "$docker_bin" run --rm --add-host probe.internal:host-gateway --entrypoint getent \
  "$MXHOOK_IMAGE" ahostsv4 probe.internal 2>/dev/null | awk 'NR == 1 {print $1}')
[ -n "$gateway" ] || fail "could not learn the host-gateway address"
hook_log=$work/deliveries.jsonl
control=$work/control
mkdir -p "$control"
touch "$hook_log"
"$python" "$here/scale.py" sink --host "$gateway" --port-file "$work/sink.port" --log "$hook_log" --control-dir "$control" \
  >"$work/sink.out" 2>&1 9>&- &
sink_pid=$!
wait_until 20 "the webhook sink to listen" test -s "$work/sink.port" || fail "sink did not start: $(cat "$work/sink.out")"
sink_port=$(cat "$work/sink.port")
ok "webhook sink on $gateway:$sink_port (host.docker.internal in the containers)"

# ---- the project directory ------------------------------------------------------------------
proj=$work/project
mkdir -p "$proj/certs"
cp "$repo/docker-compose.scale.yml" "$proj/"
cp "$repo/.env.example" "$proj/.env"
set_env() { # KEY VALUE: replace KEY=... in .env or append it
  local key=$1 value=$2
  if grep -q "^$key=" "$proj/.env"; then
    sed -i "s|^$key=.*|$key=$value|" "$proj/.env"
  else
    echo "$key=$value" >>"$proj/.env"
  fi
}
# A subnet no route of the host uses (docker-compose.scale.yml's default first).
subnet=""
for candidate in 172.28 172.29 172.30 172.31 10.228 10.229; do
  if ! ip -4 route | grep -q "^$candidate\."; then
    subnet="$candidate.0.0/16"
    break
  fi
done
[ -n "$subnet" ] || fail "no free /16 for the test network"
smtp_port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
set_env WEBHOOK_URL "http://host.docker.internal:$sink_port/inbound/unset" # per replica in compose.test.yml
set_env SCALE_SINK_PORT "$sink_port"
set_env RETRY_SCAN_INTERVAL_MS 500
set_env RETRY_INTERVAL_MS 1000
set_env RETRY_MAX_INTERVAL_MS 2000
set_env SHUTDOWN_GRACE_MS 5000
set_env AUTH_CHECKS none
set_env DNS_SERVERS 127.0.0.1:9 # reverse lookups refused at once: no waiting on a resolver
set_env SMTP_MAX_CONNECTIONS_PER_IP 200 # every client is the host, as HAProxy sees it
set_env MXHOOK_IMAGE "$MXHOOK_IMAGE"
set_env MXHOOK_HAPROXY_IMAGE "$MXHOOK_HAPROXY_IMAGE"
set_env MXHOOK_BIND 127.0.0.1
set_env MXHOOK_SMTP_PORT "$smtp_port"
set_env MXHOOK_SCALE_SUBNET "$subnet"
set_env SMTP_TLS_CERT_DIR ./certs

pc() { (cd "$proj" && compose -f docker-compose.scale.yml -f "$here/compose.test.yml" "$@"); }
cid_of() { pc ps -aq "$1" 2>/dev/null | head -1; }
health_of() { "$docker_bin" inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$1" 2>/dev/null; }
healthy() { local c; c=$(cid_of "$1") && [ -n "$c" ] && [ "$(health_of "$c")" = healthy ]; }
# greeters N: N distinct replicas greet through the balancer (HAProxy has them UP).
greeters() { [ "$(scale greet --port "$smtp_port" --tries 12 | wc -l)" -ge "$1" ]; }
phases_json=$work/phases.json
echo '{}' >"$phases_json"
# run_load PHASE COUNT [extra args]: in the background; sets load_pid.
run_load() {
  local phase=$1 count=$2
  shift 2
  "$python" "$here/scale.py" load --port "$smtp_port" --count "$count" --concurrency 20 --size 2048 --phase "$phase" \
    --run-id "$run_id" --out "$work/acks-$phase.jsonl" "$@" >"$work/load-$phase.json" 2>"$work/load-$phase.err" 9>&- &
  load_pid=$!
}
finish_load() { # PHASE: waits for it, records its summary
  local phase=$1 rc=0
  wait "$load_pid" || rc=$?
  load_pid=""
  [ -s "$work/load-$phase.json" ] || fail "load client of phase $phase printed nothing: $(tail -5 "$work/load-$phase.err")"
  "$python" - "$phases_json" "$phase" "$work/load-$phase.json" "$work/acks-$phase.jsonl" <<'EOF'
import json, sys
path, phase, summary, acks = sys.argv[1:]
doc = json.load(open(path))
doc[phase] = {"summary": json.load(open(summary)), "acks": acks}
json.dump(doc, open(path, "w"), indent=1)
EOF
  [ "$rc" = 0 ] || fail "phase $phase: not every message acknowledged: $(cat "$work/load-$phase.json")"
}
field() { "$python" -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }
facts=$work/facts.json
echo '{}' >"$facts"
fact() { # KEY JSON-VALUE
  "$python" - "$facts" "$1" "$2" <<'EOF'
import json, sys
path, key, value = sys.argv[1:]
doc = json.load(open(path))
doc[key] = json.loads(value)
json.dump(doc, open(path, "w"), indent=1)
EOF
}
last_line_json() { # FILE [PREFIX]: the file's last non-empty line as a JSON string
  "$python" -c 'import json, sys; lines = [l.strip() for l in open(sys.argv[1]) if l.strip()]; print(json.dumps(sys.argv[2] + (lines[-1] if lines else "")))' "$1" "${2:-}"
}
all_delivered() { scale delivered --log "$hook_log" --acks "$work"/acks-*.jsonl >"$work/delivered.out" 2>&1; }

# ---- phase A: one replica ---------------------------------------------------------------------
compose_up=1
pc up -d --pull never haproxy mxhook-1 >"$work/up.log" 2>&1 || { cat "$work/up.log"; fail "docker compose up (haproxy, mxhook-1) failed"; }
wait_until 90 "mxhook-1 healthy" healthy mxhook-1 || fail "mxhook-1 did not become healthy"
wait_until 60 "HAProxy to route to mxhook-1" greeters 1 || fail "no greeting through HAProxy"
ok "haproxy and mxhook-1 up: $(scale greet --port "$smtp_port" --tries 3 | tr '\n' ' ')through 127.0.0.1:$smtp_port"
haproxy_ip=$("$docker_bin" inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$(cid_of haproxy)")
net_gateway=$("$docker_bin" network inspect -f '{{range .IPAM.Config}}{{.Gateway}}{{end}}' "${project}_mx")
# Not filled in by every engine when only the subnet is given: the first address, then.
[ -n "$net_gateway" ] || net_gateway=${subnet%.0/16}.1
fact haproxy_ip "\"$haproxy_ip\""
fact client_expected "\"$net_gateway\""
say "network ${project}_mx $subnet: HAProxy at $haproxy_ip, the host (the test's clients, as HAProxy sees them) at $net_gateway"

throughput_count=3000
say "phase A: $throughput_count messages, 20 clients, 1 replica"
run_load A $throughput_count
finish_load A
ok "phase A: $(field "$work/load-A.json" acked) acknowledged, $(field "$work/load-A.json" rate) msgs/s"
wait_until 60 "phase A delivered" all_delivered || fail "phase A not delivered: $(cat "$work/delivered.out")"

# ---- phase B: three replicas, one SIGKILLed mid-run -----------------------------------------
pc up -d --pull never mxhook-2 mxhook-3 >"$work/up2.log" 2>&1 || { cat "$work/up2.log"; fail "docker compose up (mxhook-2, mxhook-3) failed"; }
both_healthy() { healthy mxhook-2 && healthy mxhook-3; }
wait_until 90 "mxhook-2 and mxhook-3 healthy" both_healthy || fail "mxhook-2/3 did not become healthy"
wait_until 60 "HAProxy to route to 3 replicas" greeters 3 || fail "HAProxy does not route to all three replicas"
ok "3 replicas UP behind HAProxy"
say "phase A3: the same load on 3 replicas ($throughput_count messages, 20 clients)"
run_load A3 $throughput_count
finish_load A3
ok "phase A3: $(field "$work/load-A3.json" acked) acknowledged, $(field "$work/load-A3.json" rate) msgs/s"

victim=mxhook-2
victim_cid=$(cid_of $victim)
kill_after=1000
say "phase B: 3000 messages, 20 clients, 3 replicas; SIGKILL of $victim after $kill_after acknowledgments"
# The load client itself runs `docker kill` right after the 1000th 250 (no polling delay).
run_load B 3000 --at-acks "$kill_after" --at-acks-cmd "$docker_bin kill -s KILL $victim_cid" --at-acks-file "$work/killed.json"
wait_until 120 "$kill_after acknowledgments in phase B and the kill" test -s "$work/killed.json" || fail "phase B stalled before the kill"
[ "$(field "$work/killed.json" rc)" = 0 ] || fail "docker kill -s KILL $victim failed"
killed_at=$(field "$work/killed.json" t)
ok "SIGKILLed $victim (container ${victim_cid:0:12}) right after the ${kill_after}th acknowledgment"
sleep 2
"$docker_bin" start "$victim_cid" >/dev/null || fail "docker start $victim failed"
wait_until 60 "$victim healthy again" healthy $victim || fail "$victim did not come back"
down_s=$("$python" -c "import time; print(round(time.time() - $killed_at, 1))")
ok "$victim started again, healthy ${down_s}s after the kill"
finish_load B
ok "phase B: $(field "$work/load-B.json" acked) acknowledged, $(field "$work/load-B.json" rate) msgs/s overall; $(field "$work/load-B.json" session_failures) failed sessions, $(field "$work/load-B.json" retries) messages sent again"
fact killed "\"$victim\""
fact killed_at "$killed_at"
fact killed_down_s "$down_s"
fact killed_after_acks "$kill_after"
wait_until 90 "phase A, A3, B delivered" all_delivered || fail "phases A, A3 and B not delivered: $(cat "$work/delivered.out")"
ok "phases A, A3 and B: $(cat "$work/delivered.out")"

# ---- phase C: held in the spools; the client address in meta.json ---------------------------
touch "$control/refuse-all"
say "phase C: the sink refuses every delivery; 90 messages"
run_load C 90
finish_load C
# spool_in REPLICA ARGS...: `mxhook spool ARGS` in the running replica.
spool_in() { local r=$1; shift; pc exec -T "$r" mxhook spool "$@"; }
pending_of() { spool_in "$1" stats --json | "$python" -c 'import json, sys; d = json.load(sys.stdin); print(d["pending"]["items"] + d["processing"]["items"])'; }
held_everywhere() { local r; for r in mxhook-1 mxhook-2 mxhook-3; do [ "$(pending_of $r)" -gt 0 ] || return 1; done; }
wait_until 30 "items held in every replica" held_everywhere || fail "not every replica holds items in phase C"
meta_ips="{"
for r in mxhook-1 mxhook-2 mxhook-3; do
  # shellcheck disable=SC2016 # expanded in the container
  pc exec -T "$r" bash -c 'n=0; for f in /var/spool/mxhook/pending/*/meta.json /var/spool/mxhook/processing/*/meta.json; do
      cat "$f" 2>/dev/null && echo && n=$((n + 1)); [ $n -ge 5 ] && break; done; true' >"$work/meta-$r.txt"
  ips=$(scale meta-ips <"$work/meta-$r.txt")
  meta_ips+="\"$r\": $ips,"
  say "$r meta.json remote.ip: $ips"
done
fact meta_ips "${meta_ips%,}}"
say "one of them, as stored:"
scale meta-ips --show-one <"$work/meta-mxhook-1.txt" | sed 's/^/    /'

# ---- phase D: drain mxhook-3, remove it, adopt its volume --------------------------------------
drained=mxhook-3
adopter=mxhook-1
drain_timeout_ms=5000
rm -f "$control/refuse-all"
touch "$control/refuse-$drained"
fact drained "\"$drained\""
fact adopter "\"$adopter\""
fact drain_timeout_ms "$drain_timeout_ms"
if [ "${MXHOOK_SCALE_SKIP_DRAIN:-0}" = 1 ]; then
  say "MXHOOK_SCALE_SKIP_DRAIN=1: the drain and adopt phase is NOT run (the test is incomplete)"
  rm -f "$control/refuse-$drained"
  fact drain_ran false
else
  fact drain_ran true
  say "phase D: draining $drained while the sink refuses its deliveries (DRAIN_TIMEOUT_MS=$drain_timeout_ms)"
  drain_start=$SECONDS
  drain_rc=0
  pc exec -T -e DRAIN_TIMEOUT_MS=$drain_timeout_ms "$drained" mxhook drain >"$work/drain.out" 2>&1 || drain_rc=$?
  drain_s=$((SECONDS - drain_start))
  sed 's/^/    /' "$work/drain.out"
  fact drain_exit "$drain_rc"
  fact drain_seconds "$drain_s"
  fact drain_report "$(last_line_json "$work/drain.out" | sed 's/; they stay in .*"$/"/; s/^"drain: /"/')"
  fact drained_at "$("$python" -c 'import time; print(time.time())')"
  case $drain_rc in
    1) ok "mxhook drain: exit 1 after ${drain_s}s, items left (the sink refuses them), as meant" ;;
    0) fail "mxhook drain exited 0: the spool emptied although the sink refused $drained's deliveries" ;;
    *) fail "mxhook drain exited $drain_rc (is 'mxhook drain' in this image? see above)" ;;
  esac
  # Out of rotation: new connections get 421 from it, HAProxy's check marks it down.
  run_load D 60
  finish_load D
  ok "phase D: 60 messages sent after the drain acknowledged"
  spool_in "$drained" list --json >"$work/drained-list.json" || fail "spool list in $drained failed"
  adopted_ids=$("$python" -c 'import json, sys; print(json.dumps([i["id"] for i in json.load(open(sys.argv[1])) if i["state"] in ("pending", "processing")]))' "$work/drained-list.json")
  pc stop "$drained" >"$work/stop3.log" 2>&1 || { cat "$work/stop3.log"; fail "docker compose stop $drained failed"; }
  pc rm -f "$drained" >>"$work/stop3.log" 2>&1 || { cat "$work/stop3.log"; fail "docker compose rm $drained failed"; }
  [ -z "$(cid_of "$drained")" ] || fail "$drained still has a container"
  volume3="${project}_spool-3"
  "$docker_bin" volume inspect "$volume3" >/dev/null 2>&1 || fail "volume $volume3 is gone"
  # The ids in the volume once the container is gone (what the adopter must take over).
  pc run --rm --no-deps -T -v "$volume3:/adopt" -e SPOOL_DIR=/adopt "$adopter" spool list --json >"$work/volume3-list.json" 2>"$work/volume3-list.err" ||
    fail "spool list of $volume3 failed: $(cat "$work/volume3-list.err")"
  adopted_ids=$("$python" -c 'import json, sys; print(json.dumps([i["id"] for i in json.load(open(sys.argv[1]))]))' "$work/volume3-list.json")
  fact adopted_ids "$adopted_ids"
  n_adopt=$("$python" -c 'import json, sys; print(len(json.loads(sys.argv[1])))' "$adopted_ids")
  ok "$drained stopped and removed; its volume $volume3 holds $n_adopt items"
  rm -f "$control/refuse-$drained"
  adopt_rc=0
  pc run --rm --no-deps -T -v "$volume3:/adopt" "$adopter" spool adopt /adopt >"$work/adopt.out" 2>&1 || adopt_rc=$?
  # One line per item, then the summary: show a few.
  { head -3 "$work/adopt.out"; [ "$(wc -l <"$work/adopt.out")" -gt 4 ] && echo "..."; tail -1 "$work/adopt.out"; } | sed 's/^/    /'
  fact adopt_exit_line "$(last_line_json "$work/adopt.out" "exit $adopt_rc: ")"
  [ "$adopt_rc" = 0 ] || fail "mxhook spool adopt exited $adopt_rc (is 'spool adopt' in this image? see above)"
  ok "$adopter adopted $volume3"
fi

# ---- the end: everything delivered, nothing left -----------------------------------------------
wait_until 90 "every acknowledged message delivered" all_delivered || fail "not everything delivered: $(cat "$work/delivered.out")"
ok "all phases: $(cat "$work/delivered.out")"
# Nothing stranded: let the last deletions land, then count.
stats_json="{"
empty_spool() { [ "$(pending_of "$1")" = 0 ]; }
for r in mxhook-1 mxhook-2 mxhook-3; do
  [ -n "$(cid_of "$r")" ] || continue
  wait_until 20 "$r spool empty" empty_spool "$r" || true
  stats_json+="\"$r\": $(spool_in "$r" stats --json | tr -d '\n'),"
done
if [ "${MXHOOK_SCALE_SKIP_DRAIN:-0}" != 1 ]; then
  stats_json+="\"spool-3 (adopted volume)\": $(pc run --rm --no-deps -T -v "${project}_spool-3:/adopt" -e SPOOL_DIR=/adopt "$adopter" spool stats --json | tr -d '\n'),"
fi
fact spool_stats "${stats_json%,}}"
# Deliveries after phase D only by survivors, and phase D's messages received by survivors.
if [ "${MXHOOK_SCALE_SKIP_DRAIN:-0}" != 1 ]; then
  fact received_by_drained_after_drain "$("$python" - "$hook_log" "$work/acks-D.jsonl" "$drained" <<'EOF'
import json, sys
log, acks, drained = sys.argv[1:]
ids = {json.loads(l)["test_id"] for l in open(acks) if l.strip()}
print(sum(1 for l in open(log) if l.strip() and json.loads(l)["test_id"] in ids and json.loads(l)["received_by"] == drained))
EOF
)"
fi
rc=0
scale report --log "$hook_log" --phases "$phases_json" --facts "$facts" --table "${MXHOOK_SCALE_TABLE:-}" | tee "$work/report.txt" || rc=$?
[ "$rc" = 0 ] || fail "scale test checks failed (PROBLEM lines above)"
say "PASSED: scale test ($((SECONDS - started_at))s before cleanup)"
