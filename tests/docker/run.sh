#!/usr/bin/env bash
# End-to-end test of the container image with a real Docker engine (issue 6).
#
#   tests/docker/run.sh
#
# Builds the image with `docker compose -f docker-compose.yml -f docker-compose.build.yml
# build`, runs it the way the README's container quick start says (a project directory
# holding docker-compose.yml, a .env made from .env.example, and certs/), sends mail with
# swaks to the port published on 127.0.0.1 (plain and STARTTLS), checks the signed
# deliveries at a test webhook on the host, restarts and recreates the container while
# the webhook is down and shows the spooled messages survive in the volume and arrive once
# it is back, then `docker compose down -v`.
#
# Exit 0 and a line "SKIPPED: <reason>" when not root or when Docker cannot be had or
# started; non-zero on any failure. Everything it creates is removed at the end: the
# containers, network and volume, the image it built, the base images it pulled or made,
# the build cache (only when it started the daemon itself), the dockerd it started, and
# its temporary directory. MXHOOK_DOCKER_TEST_KEEP_BASE=1 keeps the base images and the
# build cache for a faster next run.
#
# Without a running Docker daemon (as root) it follows the recipe of issue 6: apt-get
# install docker.io debootstrap; start dockerd and stop it by PID at the end; when
# debian:bookworm is missing and cannot be pulled, make it with debootstrap
# --variant=minbase and tag it debian:bookworm-slim too; take the Compose v2 plugin from
# Debian trixie through a private apt state directory (the system's apt sources and state
# are not touched). Every wait is bounded. That part, and the image build, live in
# tests/docker/engine.sh, shared with tests/scale/run.sh.
#
# MXHOOK_DOCKER_TEST_THEN="COMMAND": after this test passed, run COMMAND (e.g.
# tests/scale/run.sh) on the same engine and image, before the cleanup; its failure fails
# this script. scripts/test uses it so both tests cost one engine start and one build.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
started_at=$SECONDS

log_tag=docker-test
# shellcheck source=tests/docker/engine.sh
. "$here/engine.sh"

[ "$(id -u)" -eq 0 ] || skip "docker end-to-end test needs root (to install and start Docker); running as uid $(id -u)"

engine_lock

work=$(mktemp -d /tmp/mxhook-docker-test.XXXXXX)
chmod 755 "$work"
run_id=$(basename "$work" | tr -dc 'a-z0-9' | tail -c 6)
run_id=${run_id:-$$}
project="mxhook-dt-$run_id"
export MXHOOK_IMAGE="mxhook-docker-test:$run_id"
webhook_pid=""
compose_up=0

cleanup() {
  local rc=$?
  set +e
  trap - EXIT
  if [ -n "$webhook_pid" ] && kill -0 "$webhook_pid" 2>/dev/null; then
    kill "$webhook_pid" 2>/dev/null
    wait "$webhook_pid" 2>/dev/null
  fi
  if [ -n "$docker_bin" ]; then
    if [ "$compose_up" = 1 ]; then
      if [ "$rc" -ne 0 ]; then
        say "container log (last 60 lines):"
        (cd "$work/project" && timeout 60 "$docker_bin" compose -p "$project" logs --no-color --tail 60) 2>&1 | sed 's/^/    /'
      fi
      (cd "$work/project" && timeout 120 "$docker_bin" compose -p "$project" -f docker-compose.yml \
        -f "$here/compose.test.yml" down -v --remove-orphans --timeout 10) >"$work/down.log" 2>&1 ||
        { say "docker compose down failed:"; sed 's/^/    /' "$work/down.log"; }
    fi
    # Anything of the project still there (a run that failed before `up` finished).
    # shellcheck disable=SC2086 # ids are whitespace-separated on purpose
    local ids
    ids=$(timeout 30 "$docker_bin" ps -aq --filter "label=com.docker.compose.project=$project" 2>/dev/null)
    [ -n "$ids" ] && timeout 60 "$docker_bin" rm -f $ids >/dev/null 2>&1
    ids=$(timeout 30 "$docker_bin" volume ls -q --filter "label=com.docker.compose.project=$project" 2>/dev/null)
    [ -n "$ids" ] && timeout 60 "$docker_bin" volume rm -f $ids >/dev/null 2>&1
    ids=$(timeout 30 "$docker_bin" network ls -q --filter "label=com.docker.compose.project=$project" 2>/dev/null)
    [ -n "$ids" ] && timeout 60 "$docker_bin" network rm $ids >/dev/null 2>&1
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

# ---- tools on the host --------------------------------------------------------------------
need=()
for p in swaks libnet-ssleay-perl openssl python3 ca-certificates; do have_pkg "$p" || need+=("$p"); done
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  apt_install "${need[@]}" || fail "could not install ${need[*]}: $(tail -3 "$work/apt.log")"
fi
python=$(command -v python3)

engine_start

# The optional scanners (profile scan) are not built here (rspamd and ClamAV images from
# Debian packages, and ClamAV's signatures need the internet); their part of the file must
# still be valid Compose.
(cd "$repo" && compose -f docker-compose.yml --profile scan config --quiet) >"$work/scan-config.log" 2>&1 || {
  sed 's/^/    /' "$work/scan-config.log"
  fail "docker-compose.yml with --profile scan is not valid"
}
ok "docker-compose.yml --profile scan (rspamd, clamd) is valid Compose"

# ---- build --------------------------------------------------------------------------------
engine_build_image

# ---- the test webhook on the host ---------------------------------------------------------
# Listen only on the address host.docker.internal stands for (the daemon's host-gateway).
gateway=$(timeout 60 "$docker_bin" run --rm --add-host probe.internal:host-gateway --entrypoint getent \
  "$MXHOOK_IMAGE" ahostsv4 probe.internal 2>/dev/null | awk 'NR == 1 {print $1}')
[ -n "$gateway" ] || fail "could not learn the host-gateway address"
signing_key=$(openssl rand -hex 24)
hook_log=$work/deliveries.jsonl
touch "$hook_log"
webhook_port=0
start_webhook() {
  rm -f "$work/webhook.port"
  "$python" "$here/webhook.py" --host "$gateway" --port "$webhook_port" --port-file "$work/webhook.port" \
    --key "$signing_key" --log "$hook_log" >>"$work/webhook.out" 2>&1 9>&- &
  webhook_pid=$!
  wait_until 20 "the test webhook to listen" test -s "$work/webhook.port" || fail "test webhook did not start: $(cat "$work/webhook.out")"
  webhook_port=$(cat "$work/webhook.port")
}
stop_webhook() {
  kill "$webhook_pid"
  wait "$webhook_pid" 2>/dev/null || true
  webhook_pid=""
}
start_webhook
ok "test webhook listening on $gateway:$webhook_port (the container's host.docker.internal)"

# ---- the project directory, as the README's quick start makes it --------------------------
proj=$work/project
mkdir -p "$proj/certs"
cp "$repo/docker-compose.yml" "$proj/"
cp "$repo/.env.example" "$proj/.env"
set_env() { # edit .env like a user: replace KEY=... or append it
  local key=$1 value=$2
  if grep -q "^$key=" "$proj/.env"; then
    KEY="$key" VALUE="$value" "$python" - "$proj/.env" <<'EOF'
import os, sys
path = sys.argv[1]
key, value = os.environ["KEY"], os.environ["VALUE"]
lines = open(path, encoding="utf-8").read().splitlines()
lines = [f"{key}={value}" if line.startswith(key + "=") else line for line in lines]
open(path, "w", encoding="utf-8").write("\n".join(lines) + "\n")
EOF
  else
    echo "$key=$value" >>"$proj/.env"
  fi
}
smtp_port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
hostname=mx.docker-test.invalid
set_env WEBHOOK_URL "http://host.docker.internal:$webhook_port/inbound"
set_env WEBHOOK_SIGNING_KEY "$signing_key"
set_env SMTP_HOSTNAME "$hostname"
set_env SMTP_TLS_CERT_PATH /certs/fullchain.pem
set_env SMTP_TLS_KEY_PATH /certs/privkey.pem
set_env RETRY_SCAN_INTERVAL_MS 500
set_env RETRY_INTERVAL_MS 1000
set_env RETRY_MAX_INTERVAL_MS 2000
set_env SHUTDOWN_GRACE_MS 5000
# Sender checks run (the image must carry libspf2, libopendkim, libopendmarc and the public
# suffix list), against a DNS server that refuses at once: every verdict is a temperror
# and the mail is still taken.
set_env DNS_SERVERS 127.0.0.1:9
set_env MXHOOK_IMAGE "$MXHOOK_IMAGE"
set_env MXHOOK_BIND 127.0.0.1
set_env MXHOOK_SMTP_PORT "$smtp_port"
set_env SMTP_TLS_CERT_DIR ./certs

# A self-signed certificate for STARTTLS; the key readable by the container's user only.
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=$hostname" \
  -addext "subjectAltName=DNS:$hostname" \
  -keyout "$proj/certs/privkey.pem" -out "$proj/certs/fullchain.pem" >/dev/null 2>&1
chmod 0644 "$proj/certs/fullchain.pem"
chown 10025:10025 "$proj/certs/privkey.pem"
chmod 0600 "$proj/certs/privkey.pem"
cert_fp=$(openssl x509 -in "$proj/certs/fullchain.pem" -noout -fingerprint -sha256 | cut -d= -f2)

pc() { (cd "$proj" && compose -f docker-compose.yml -f "$here/compose.test.yml" "$@"); }
container_id() { pc ps -q mxhook 2>/dev/null | head -1; }
health() { "$docker_bin" inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$1" 2>/dev/null; }
wait_healthy() {
  local deadline=$((SECONDS + 90)) cid status
  while ((SECONDS < deadline)); do
    cid=$(container_id)
    if [ -n "$cid" ]; then
      status=$(health "$cid")
      [ "$status" = healthy ] && return 0
      [ "$status" = unhealthy ] && { say "container is unhealthy"; return 1; }
    fi
    sleep 1
  done
  say "timed out after 90s waiting for healthy (last: ${status:-no container})"
  return 1
}

# ---- up -------------------------------------------------------------------------------------
compose_up=1
pc up -d --pull never >"$work/up.log" 2>&1 || { cat "$work/up.log"; fail "docker compose up -d failed"; }
up_start=$SECONDS
wait_healthy || fail "mxhook did not become healthy"
cid=$(container_id)
ok "docker compose up -d: healthy after $((SECONDS - up_start))s"
[ "$(pc exec -T mxhook id -u | tr -d '\r')" = 10025 ] || fail "mxhook does not run as uid 10025"
caps=$(pc exec -T mxhook grep CapEff /proc/1/status | awk '{print $2}')
ok "mxhook runs as uid 10025 and binds port 25 in the container with CapEff=$caps"
published=$("$docker_bin" port "$cid" 25/tcp | head -1)
[ "$published" = "127.0.0.1:$smtp_port" ] || fail "port 25 is published as '$published', expected 127.0.0.1:$smtp_port"
ok "port 25 published on $published (MXHOOK_BIND, MXHOOK_SMTP_PORT)"

# send NAME RECIPIENT [swaks options...]: one message; prints its spool id.
send() {
  local name=$1 rcpt=$2
  shift 2
  local out
  if ! out=$(timeout 60 swaks --server 127.0.0.1 --port "$smtp_port" --timeout 30 \
    --from "sender@example.org" --to "$rcpt" --helo client.example.org \
    --header "Subject: docker-test $name $run_id" --body "mxhook docker test: $name" "$@" 2>&1); then
    echo "$out" | sed 's/^/    /' >&2
    fail "swaks ($name) failed"
  fi
  local id
  id=$(echo "$out" | sed -n 's/.*250 2\.0\.0 Queued as \([^ ]*\).*/\1/p' | tr -d '\r' | head -1)
  [ -n "$id" ] || { echo "$out" | sed 's/^/    /' >&2; fail "no 'Queued as' reply for $name"; }
  echo "$id"
}
# delivered ID: the webhook recorded a POST for that id.
delivered() { grep -q "\"id\": \"$1\"" "$hook_log"; }
record() { grep "\"id\": \"$1\"" "$hook_log" | tail -1; }
check_delivery() { # ID RECIPIENT TLS(true|false)
  local id=$1 rcpt=$2 tls=$3
  wait_until 30 "delivery of $id" delivered "$id" || fail "message $id never reached the webhook"
  local rec
  rec=$(record "$id")
  echo "$rec" | grep -q '"signature_ok": true' || fail "bad signature on $id: $rec"
  echo "$rec" | grep -q "\"recipient\": \"$rcpt\"" || fail "wrong recipient on $id: $rec"
  echo "$rec" | grep -q "\"tls\": $tls" || fail "expected tls=$tls on $id: $rec"
  echo "$rec" | grep -q '"spf": "TempError"' || fail "expected X-Mailgun-Spf: TempError (DNS refused) on $id: $rec"
  echo "$rec" | grep -q '"auth_header": true' || fail "expected an Authentication-Results header first on $id: $rec"
}

id_plain=$(send plain plain@example.com)
check_delivery "$id_plain" plain@example.com false
ok "plain SMTP: $id_plain delivered to the webhook, HMAC signature verified"

id_tls=$(send starttls tls@example.com -tls)
check_delivery "$id_tls" tls@example.com true
served_fp=$(timeout 30 openssl s_client -starttls smtp -connect "127.0.0.1:$smtp_port" -servername "$hostname" </dev/null 2>/dev/null |
  openssl x509 -noout -fingerprint -sha256 2>/dev/null | cut -d= -f2)
[ "$served_fp" = "$cert_fp" ] || fail "STARTTLS serves certificate '$served_fp', expected the mounted one ($cert_fp)"
ok "STARTTLS: $id_tls delivered (Received: says ESMTPS), signature verified; the served certificate is the one mounted at /certs"

# ---- spool survives a restart and a recreate while the webhook is down ----------------------
stop_webhook
ok "test webhook stopped"
id_s1=$(send spool1 spool1@example.com)
id_s2=$(send spool2 spool2@example.com)
volume=$("$docker_bin" volume ls -q --filter "label=com.docker.compose.project=$project" --filter "label=com.docker.compose.volume=spool" | head -1)
[ -n "$volume" ] || fail "no named spool volume for project $project"
pending_in_volume() { # lists pending/ of the spool volume from a separate container
  timeout 60 "$docker_bin" run --rm --network none -v "$volume:/spool:ro" --entrypoint /bin/ls "$MXHOOK_IMAGE" /spool/pending 2>/dev/null
}
both_pending() { local l; l=$(pending_in_volume) && grep -qx "$id_s1" <<<"$l" && grep -qx "$id_s2" <<<"$l"; }
wait_until 30 "both messages back in pending/ after a failed attempt" both_pending || fail "messages not in pending/ of volume $volume"
ok "webhook down: $id_s1 and $id_s2 acknowledged (250) and waiting in pending/ of volume $volume"
delivered "$id_s1" && fail "$id_s1 was delivered while the webhook was down?"

restart_start=$SECONDS
started_before=$("$docker_bin" inspect -f '{{.State.StartedAt}}' "$cid")
pc restart >"$work/restart.log" 2>&1 || { cat "$work/restart.log"; fail "docker compose restart failed"; }
restart_seconds=$((SECONDS - restart_start))
[ "$("$docker_bin" inspect -f '{{.State.StartedAt}}' "$cid")" != "$started_before" ] || fail "the container was not restarted"
((restart_seconds < 30)) || fail "docker compose restart took ${restart_seconds}s: SIGTERM not handled?"
pc logs --no-color >"$work/restart-logs.txt" 2>&1 || true
grep -q "mxhook stopped" "$work/restart-logs.txt" || fail "no 'mxhook stopped' in the log: not a graceful stop"
wait_healthy || fail "mxhook not healthy after restart"
both_pending || fail "spooled messages lost by docker compose restart"
ok "docker compose restart in ${restart_seconds}s (graceful SIGTERM stop): both messages still in the volume"

pc up -d --pull never --force-recreate >"$work/recreate.log" 2>&1 || { cat "$work/recreate.log"; fail "docker compose up --force-recreate failed"; }
wait_healthy || fail "mxhook not healthy after being recreated"
new_cid=$(container_id)
[ "$new_cid" != "$cid" ] || fail "the container was not recreated"
cid=$new_cid
both_pending || fail "spooled messages lost when the container was recreated"
ok "container recreated (as on an upgrade): both messages still in the volume"

start_webhook
ok "test webhook back on port $webhook_port"
check_delivery "$id_s1" spool1@example.com false
check_delivery "$id_s2" spool2@example.com false
wait_until 20 "pending/ to empty" test -z "$(pending_in_volume)" || fail "pending/ not empty after delivery: $(pending_in_volume)"
ok "both spooled messages delivered once the webhook was back, signatures verified; pending/ empty"

# ---- graceful stop and down -v ----------------------------------------------------------------
stop_start=$SECONDS
pc stop >"$work/stop.log" 2>&1 || { cat "$work/stop.log"; fail "docker compose stop failed"; }
code=$("$docker_bin" inspect -f '{{.State.ExitCode}}' "$cid")
[ "$code" = 0 ] || fail "mxhook exited $code on docker compose stop (expected 0 after SIGTERM)"
ok "docker compose stop: exit 0 after SIGTERM in $((SECONDS - stop_start))s"
pc down -v --remove-orphans --timeout 10 >"$work/down.log" 2>&1 || { cat "$work/down.log"; fail "docker compose down -v failed"; }
compose_up=0
"$docker_bin" volume inspect "$volume" >/dev/null 2>&1 && fail "volume $volume still there after down -v"
ok "docker compose down -v removed the container, network and spool volume"

say "PASSED: docker end-to-end test (image ${image_mb} MB, build ${build_seconds}s, total $((SECONDS - started_at))s before cleanup)"

if [ -n "${MXHOOK_DOCKER_TEST_THEN:-}" ]; then
  # shellcheck disable=SC2086 # a command line on purpose
  engine_shared_run $MXHOOK_DOCKER_TEST_THEN || fail "$MXHOOK_DOCKER_TEST_THEN failed on the engine of the docker test"
fi
