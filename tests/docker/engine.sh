# Docker engine for the container tests, shared by tests/docker/run.sh and
# tests/scale/run.sh. Sourced, not run. The caller sets `log_tag` (its name in log lines)
# and `started_at` before sourcing it, and gets say, ok, skip, fail and wait_until; it sets
# `work` (its temporary directory), `project` (its Compose project name) and MXHOOK_IMAGE,
# and calls, in this order:
#
#   engine_lock                 one run at a time on a machine (skipped under a shared engine)
#   engine_start                a running daemon, Compose v2 >= 2.24, debian:bookworm(-slim)
#   engine_build_image          builds MXHOOK_IMAGE from the working tree (docker-compose.build.yml)
#   ...                         the test
#   engine_remove_images        in its cleanup: the image it built, base images, build cache
#   engine_stop                 in its cleanup: the dockerd engine_start started, if any
#
# Without a running Docker daemon (as root) engine_start follows the recipe of issue 6:
# apt-get install docker.io debootstrap; start dockerd (stopped by PID in engine_stop);
# when debian:bookworm is missing and cannot be pulled, make it with debootstrap
# --variant=minbase and tag it debian:bookworm-slim too; take the Compose v2 plugin from
# Debian trixie through a private apt state directory (the system's apt sources and state
# are not touched). Every wait is bounded.
#
# Sharing one engine and one image between two tests (scripts/test): tests/docker/run.sh
# with MXHOOK_DOCKER_TEST_THEN="COMMAND" runs COMMAND after it passed, before its cleanup,
# with MXHOOK_IMAGE naming its image and MXHOOK_DOCKER_ENGINE_SHARED=1 (engine_shared_run).
# Under MXHOOK_DOCKER_ENGINE_SHARED=1 the helpers below neither lock, nor install, nor
# start or stop anything, nor remove the image: the outer test owns all of that.

# shellcheck shell=bash
say() { printf '[%s %3ds] %s\n' "$log_tag" "$((SECONDS - started_at))" "$*"; }
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

dockerd_pid=""
docker0_ours=0
image_built=0
# 1: MXHOOK_IMAGE is this test's to remove at the end even when it did not build it (a
# name unique to the run). 0: somebody else's image, reused (never removed here).
image_ours=1
[ "${MXHOOK_DOCKER_ENGINE_SHARED:-0}" = 1 ] && image_ours=0
created_images=()
docker_bin=""
engine_shared=${MXHOOK_DOCKER_ENGINE_SHARED:-0}

engine_lock() {
  # The outer test holds the lock while the inner one runs.
  [ "$engine_shared" = 1 ] && return 0
  # One run at a time on a machine: a second run would share (and stop) the first one's daemon.
  local lock_dir=/run/lock
  [ -d "$lock_dir" ] || lock_dir=/tmp
  exec 9>"$lock_dir/mxhook-docker-test.lock"
  flock -w 1800 9 || fail "another container test held $lock_dir/mxhook-docker-test.lock for 30 minutes"
}

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

compose_ok() {
  local v
  v=$(timeout 30 "$docker_bin" compose version --short 2>/dev/null) || return 1
  v=${v#v}
  local major=${v%%.*} rest=${v#*.}
  local minor=${rest%%.*}
  [[ $major =~ ^[0-9]+$ && $minor =~ ^[0-9]+$ ]] || return 1
  ((major > 2 || (major == 2 && minor >= 24)))
}

compose() { timeout "${COMPOSE_TIMEOUT:-180}" "$docker_bin" compose -p "$project" "$@"; }

engine_start() {
  if [ "$engine_shared" = 1 ]; then
    pick_docker || fail "MXHOOK_DOCKER_ENGINE_SHARED=1 but no Docker daemon answers"
    compose_ok || fail "MXHOOK_DOCKER_ENGINE_SHARED=1 but no Compose v2 >= 2.24 (DOCKER_CONFIG=${DOCKER_CONFIG:-unset})"
    say "docker: the engine of the outer test ($docker_bin, daemon $("$docker_bin" version --format '{{.Server.Version}}'))"
    return 0
  fi
  # ---- a Docker engine ----------------------------------------------------------------------
  local deadline reason
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
  local a mirror
  if ! compose_ok; then
    say "fetching the Compose v2 plugin from Debian trixie (private apt state in $work/apt)"
    a=$work/apt
    mkdir -p "$a/lists/partial" "$a/cache/archives/partial" "$a/deb" "$a/x"
    mirror=$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | tr ' ' '\n' | grep -v security | head -1)
    mirror=${mirror:-http://deb.debian.org/debian}
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" >"$a/sources.list"
    local apt_private=(-o "Dir::Etc::sourcelist=$a/sources.list" -o "Dir::Etc::sourceparts=-"
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

  # ---- base images: pulled when a registry answers, else made with debootstrap ---------------
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
}
try_pull() { timeout 180 "$docker_bin" pull -q "$1" >/dev/null 2>&1; }

# engine_build_image: builds MXHOOK_IMAGE (compiles mxhook and runs its unit tests in the
# build stage); sets build_seconds, image_mb and added_mb.
engine_build_image() {
  say "building $MXHOOK_IMAGE (compiles mxhook and runs its unit tests in the build stage; minutes)"
  local build_start=$SECONDS
  image_built=1
  (cd "$repo" && COMPOSE_TIMEOUT=2700 compose -f docker-compose.yml -f docker-compose.build.yml build --progress plain) \
    >"$work/build.log" 2>&1 || {
    tail -60 "$work/build.log" | sed 's/^/    /'
    fail "image build failed"
  }
  build_seconds=$((SECONDS - build_start))
  local image_bytes base_bytes unit_line
  image_bytes=$("$docker_bin" image inspect -f '{{.Size}}' "$MXHOOK_IMAGE")
  base_bytes=$("$docker_bin" image inspect -f '{{.Size}}' debian:bookworm-slim)
  image_mb=$(((image_bytes + 500000) / 1000000))
  added_mb=$(((image_bytes - base_bytes + 500000) / 1000000))
  unit_line=$(grep -c 'PASSED' "$work/build.log" || true)
  ok "image built in ${build_seconds}s: $MXHOOK_IMAGE is ${image_mb} MB (${added_mb} MB on top of debian:bookworm-slim); $unit_line unit-test suites passed in the build stage"
  [ "$("$docker_bin" image inspect -f '{{.Config.User}}' "$MXHOOK_IMAGE")" = "10025:10025" ] || fail "image does not run as 10025:10025"
  ok "image runs as user 10025:10025"
}

# engine_shared_run COMMAND...: runs COMMAND on this engine and image (see the top).
engine_shared_run() {
  say "running $* on this engine with image $MXHOOK_IMAGE"
  MXHOOK_DOCKER_ENGINE_SHARED=1 MXHOOK_IMAGE="$MXHOOK_IMAGE" "$@" 9>&-
}

# engine_remove_images: in cleanup, after the test's containers and volumes are gone.
engine_remove_images() {
  [ -n "$docker_bin" ] || return 0
  if [ "$image_built" = 1 ] || { [ "$image_ours" = 1 ] && timeout 30 "$docker_bin" image inspect "$MXHOOK_IMAGE" >/dev/null 2>&1; }; then
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
  return 0
}

# engine_stop: in cleanup, last; stops the dockerd engine_start started.
engine_stop() {
  [ -n "$dockerd_pid" ] || return 0
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
  return 0
}
