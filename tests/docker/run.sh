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
# are not touched). Every wait is bounded.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
started_at=$SECONDS

say() { printf '[docker-test %3ds] %s\n' "$((SECONDS - started_at))" "$*"; }
ok() { say "ok - $*"; }
skip() { echo "SKIPPED: $*"; exit 0; }
fail() { echo "FAILED: $*" >&2; exit 1; }

# wait_until SECONDS DESCRIPTION COMMAND...: runs COMMAND every 0.5 s until it succeeds.
wait_until() {
  local limit=$1 what=$2
  shift 2
  local deadline=$((SECONDS + limit))
  until "$@"; do
    if ((SECONDS >= deadline)); then
      say "timed out after ${limit}s waiting for: $what"
      return 1
    fi
    sleep 0.5
  done
}

[ "$(id -u)" -eq 0 ] || skip "docker end-to-end test needs root (to install and start Docker); running as uid $(id -u)"

# One run at a time on a machine: a second run would share (and stop) the first one's daemon.
lock_dir=/run/lock
[ -d "$lock_dir" ] || lock_dir=/tmp
exec 9>"$lock_dir/mxhook-docker-test.lock"
flock -w 1800 9 || fail "another tests/docker/run.sh held $lock_dir/mxhook-docker-test.lock for 30 minutes"

work=$(mktemp -d /tmp/mxhook-docker-test.XXXXXX)
chmod 755 "$work"
run_id=$(basename "$work" | tr -dc 'a-z0-9' | tail -c 6)
run_id=${run_id:-$$}
project="mxhook-dt-$run_id"
export MXHOOK_IMAGE="mxhook-docker-test:$run_id"
dockerd_pid=""
docker0_ours=0
webhook_pid=""
compose_up=0
image_built=0
created_images=()
docker_bin=""

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
    if [ "$image_built" = 1 ] || timeout 30 "$docker_bin" image inspect "$MXHOOK_IMAGE" >/dev/null 2>&1; then
      timeout 60 "$docker_bin" rmi -f "$MXHOOK_IMAGE" >/dev/null 2>&1
    fi
    if [ -n "$dockerd_pid" ] && [ "${MXHOOK_DOCKER_TEST_KEEP_BASE:-0}" != 1 ]; then
      # Our own daemon: its build cache and dangling build layers are ours too.
      timeout 120 "$docker_bin" builder prune -af >/dev/null 2>&1
      timeout 60 "$docker_bin" image prune -f >/dev/null 2>&1
    fi
    if [ "${MXHOOK_DOCKER_TEST_KEEP_BASE:-0}" != 1 ] && [ ${#created_images[@]} -gt 0 ]; then
      timeout 60 "$docker_bin" rmi "${created_images[@]}" >/dev/null 2>&1
    fi
    local left
    left=$(timeout 30 "$docker_bin" ps -aq --filter "label=com.docker.compose.project=$project" 2>/dev/null)
    left+=$(timeout 30 "$docker_bin" volume ls -q --filter "label=com.docker.compose.project=$project" 2>/dev/null)
    if [ -n "$left" ]; then
      say "cleanup left containers or volumes of $project behind: $left"
      [ "$rc" -eq 0 ] && rc=1
    fi
  fi
  if [ -n "$dockerd_pid" ]; then
    kill -TERM "$dockerd_pid" 2>/dev/null
    local deadline=$((SECONDS + 40))
    while kill -0 "$dockerd_pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.5; done
    if kill -0 "$dockerd_pid" 2>/dev/null; then
      say "dockerd (pid $dockerd_pid) did not stop within 40 s; killing it"
      kill -KILL "$dockerd_pid" 2>/dev/null
    fi
    wait "$dockerd_pid" 2>/dev/null
    say "stopped the dockerd this test started (pid $dockerd_pid)"
    # The default bridge it made (its iptables chains stay, as after any dockerd).
    [ "$docker0_ours" = 1 ] && ip link delete docker0 2>/dev/null
  fi
  rm -rf "$work"
  if [ "$rc" -eq 0 ]; then
    say "cleaned up"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

export DEBIAN_FRONTEND=noninteractive
apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    timeout 300 apt-get update -qq >/dev/null 2>&1 || say "apt-get update failed; trying the cached package lists"
    apt_updated=1
  fi
  timeout 900 apt-get install -y -qq --no-install-recommends "$@" >"$work/apt.log" 2>&1
}
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# ---- tools on the host --------------------------------------------------------------------
need=()
for p in swaks libnet-ssleay-perl openssl python3 ca-certificates; do have_pkg "$p" || need+=("$p"); done
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  apt_install "${need[@]}" || fail "could not install ${need[*]}: $(tail -3 "$work/apt.log")"
fi
python=$(command -v python3)

# ---- a Docker engine ----------------------------------------------------------------------
# The CLI on PATH may be newer than Debian's daemon: that is fine as long as it negotiates
# the daemon's API version down; otherwise Debian's own /usr/bin/docker is used.
pick_docker() {
  local candidate
  for candidate in "$(command -v docker 2>/dev/null)" /usr/bin/docker; do
    [ -n "$candidate" ] && [ -x "$candidate" ] || continue
    if timeout 30 "$candidate" info >/dev/null 2>&1 && timeout 30 "$candidate" version >/dev/null 2>&1; then
      docker_bin=$candidate
      return 0
    fi
  done
  return 1
}

if ! pick_docker; then
  if ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
    say "installing docker.io debootstrap"
    apt_install docker.io debootstrap || skip "Docker cannot be installed (apt-get install docker.io debootstrap failed: $(tail -1 "$work/apt.log"))"
  fi
  command -v dockerd >/dev/null 2>&1 || skip "Docker cannot be started: no dockerd after installing docker.io"
  ip link show docker0 >/dev/null 2>&1 || docker0_ours=1
  say "starting dockerd (log: $work/dockerd.log)"
  dockerd >"$work/dockerd.log" 2>&1 9>&- &
  dockerd_pid=$!
  deadline=$((SECONDS + 60))
  until pick_docker; do
    if ! kill -0 "$dockerd_pid" 2>/dev/null || ((SECONDS >= deadline)); then
      reason=$(grep -E 'level=(error|fatal)|failed' "$work/dockerd.log" | tail -2 | tr '\n' ' ')
      skip "Docker cannot be started here (dockerd did not answer within 60 s): ${reason:-see dockerd log}"
    fi
    sleep 0.5
  done
  pick_docker # the daemon is up: prefer the CLI on PATH again
fi
say "docker: client $("$docker_bin" version --format '{{.Client.Version}}') ($docker_bin), daemon $("$docker_bin" version --format '{{.Server.Version}} (API {{.Server.APIVersion}})')"

# ---- Compose v2 (>= 2.24 for an optional env_file) ----------------------------------------
compose_ok() {
  local v
  v=$(timeout 30 "$docker_bin" compose version --short 2>/dev/null) || return 1
  v=${v#v}
  local major=${v%%.*} rest=${v#*.}
  local minor=${rest%%.*}
  [[ $major =~ ^[0-9]+$ && $minor =~ ^[0-9]+$ ]] || return 1
  ((major > 2 || (major == 2 && minor >= 24)))
}
if ! compose_ok; then
  say "fetching the Compose v2 plugin from Debian trixie (private apt state in $work/apt)"
  a=$work/apt
  mkdir -p "$a/lists/partial" "$a/cache/archives/partial" "$a/deb" "$a/x"
  mirror=$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | tr ' ' '\n' | grep -v security | head -1)
  mirror=${mirror:-http://deb.debian.org/debian}
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" >"$a/sources.list"
  apt_private=(-o "Dir::Etc::sourcelist=$a/sources.list" -o "Dir::Etc::sourceparts=-"
    -o "Dir::State::Lists=$a/lists" -o "Dir::Cache=$a/cache" -o "APT::Sandbox::User=root")
  timeout 300 apt-get -qq "${apt_private[@]}" update >"$a/log" 2>&1 || skip "Compose v2 cannot be had: apt-get update of trixie failed: $(tail -1 "$a/log")"
  (cd "$a/deb" && timeout 300 apt-get -qq "${apt_private[@]}" download docker-compose) >>"$a/log" 2>&1 ||
    skip "Compose v2 cannot be had: apt-get download docker-compose (trixie) failed: $(tail -1 "$a/log")"
  dpkg -x "$a"/deb/docker-compose_*.deb "$a/x"
  export DOCKER_CONFIG=$work/docker-config
  mkdir -p "$DOCKER_CONFIG/cli-plugins"
  install -m 0755 "$a/x/usr/libexec/docker/cli-plugins/docker-compose" "$DOCKER_CONFIG/cli-plugins/docker-compose"
  compose_ok || skip "Compose v2 >= 2.24 is not available (trixie's plugin does not run here)"
fi
say "compose: $("$docker_bin" compose version)"
compose() { timeout "${COMPOSE_TIMEOUT:-180}" "$docker_bin" compose -p "$project" "$@"; }

# ---- base images: pulled when a registry answers, else made with debootstrap ---------------
try_pull() { timeout 180 "$docker_bin" pull -q "$1" >/dev/null 2>&1; }
if ! "$docker_bin" image inspect debian:bookworm >/dev/null 2>&1; then
  if try_pull debian:bookworm; then
    say "pulled debian:bookworm"
  else
    command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap ||
      skip "debian:bookworm cannot be pulled and debootstrap cannot be installed"
    mirror=$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | tr ' ' '\n' | grep -v security | head -1)
    [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $3 ~ /^bookworm/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null)
    mirror=${mirror:-http://deb.debian.org/debian}
    say "no registry: making debian:bookworm with debootstrap --variant=minbase from $mirror"
    timeout 900 debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 ||
      skip "debian:bookworm cannot be pulled and debootstrap failed: $(tail -1 "$work/debootstrap.log")"
    # As in Debian's own images: no downloaded .debs, no package lists.
    rm -rf "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/lib/apt/lists/*
    tar -C "$work/rootfs" -c . | "$docker_bin" import - debian:bookworm >/dev/null
    rm -rf "$work/rootfs"
  fi
  created_images+=(debian:bookworm)
fi
if ! "$docker_bin" image inspect debian:bookworm-slim >/dev/null 2>&1; then
  if try_pull debian:bookworm-slim; then
    say "pulled debian:bookworm-slim"
  else
    "$docker_bin" tag debian:bookworm debian:bookworm-slim
    say "tagged debian:bookworm as debian:bookworm-slim"
  fi
  created_images+=(debian:bookworm-slim)
fi
ok "base images debian:bookworm and debian:bookworm-slim present"

# The optional scanners (profile scan) are not built here (rspamd and ClamAV images from
# Debian packages, and ClamAV's signatures need the internet); their part of the file must
# still be valid Compose.
(cd "$repo" && compose -f docker-compose.yml --profile scan config --quiet) >"$work/scan-config.log" 2>&1 || {
  sed 's/^/    /' "$work/scan-config.log"
  fail "docker-compose.yml with --profile scan is not valid"
}
ok "docker-compose.yml --profile scan (rspamd, clamd) is valid Compose"

# ---- build --------------------------------------------------------------------------------
say "building $MXHOOK_IMAGE (compiles mxhook and runs its unit tests in the build stage; minutes)"
build_start=$SECONDS
image_built=1
(cd "$repo" && COMPOSE_TIMEOUT=2700 compose -f docker-compose.yml -f docker-compose.build.yml build --progress plain) \
  >"$work/build.log" 2>&1 || {
  tail -60 "$work/build.log" | sed 's/^/    /'
  fail "image build failed"
}
build_seconds=$((SECONDS - build_start))
image_bytes=$("$docker_bin" image inspect -f '{{.Size}}' "$MXHOOK_IMAGE")
base_bytes=$("$docker_bin" image inspect -f '{{.Size}}' debian:bookworm-slim)
image_mb=$(((image_bytes + 500000) / 1000000))
added_mb=$(((image_bytes - base_bytes + 500000) / 1000000))
unit_line=$(grep -c 'PASSED' "$work/build.log" || true)
ok "image built in ${build_seconds}s: $MXHOOK_IMAGE is ${image_mb} MB (${added_mb} MB on top of debian:bookworm-slim); $unit_line unit-test suites passed in the build stage"
[ "$("$docker_bin" image inspect -f '{{.Config.User}}' "$MXHOOK_IMAGE")" = "10025:10025" ] || fail "image does not run as 10025:10025"
ok "image runs as user 10025:10025"

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
