#!/usr/bin/env bash
# Container smoke test: build the image from docker/Dockerfile, run it, restart it, check it.
#
#   docker/smoke-test.sh                                       SQLite on a volume
#   SMOKE_DATABASE_URL=postgresql://... docker/smoke-test.sh   PostgreSQL (make container-test runs both)
#
# 1. installs what it needs (podman, runc, debootstrap via apt) unless a docker engine answers;
# 2. builds the gateway image (BASE_IMAGE: the official python slim image when it can be pulled, otherwise a
#    Debian bookworm + python3 base made once with debootstrap and cached as localhost/bookworm-py:latest);
# 3. starts the reference downstream (devstack) on 127.0.0.1 and the gateway container (--network host) with a
#    named volume on /data, waits for /health/ready, creates a session with a dev token;
# 4. checks the healthcheck, the non-root uid, no compiler / devstack / tests in the image;
# 5. stops the container (image STOPSIGNAL = SIGTERM) and checks it exits 0 within the stop grace period with the
#    WAL checkpointed (sessions.db-wal empty or gone);
# 6. starts a new container on the same volume with WORKERS=2, reads the session back, sees both workers in
#    /metrics, stops it cleanly too (the supervisor drains both);
# 7. reports build time and image size. Containers, volume and devstack are removed on success and failure.
#
# With SMOKE_DATABASE_URL=postgresql://... (an empty or migrated database the containers can reach: they run with
# --network host, so 127.0.0.1 is the host's) steps 3-6 run against PostgreSQL instead (the image is the same):
#   asyncpg imports in the image; `python -m service migrate` runs as a one-off container (twice: the second finds
#   the schema current); a replica without CURSOR_SECRET refuses to start (exit 2, naming it); a gateway container
#   with DATABASE_URL + CURSOR_SECRET gets ready, creates two sessions, keeps nothing in /data, answers 501 on
#   /admin/backup (pg_dump / PITR), is healthy, stops on SIGTERM with exit 0 in the grace period; a second one with
#   WORKERS=2 on a fresh volume reads the session back, follows a cursor the first one signed, shows both workers in
#   /metrics and stops cleanly too. The URL (a password) is handed to the engine through the environment, never on
#   a command line, and never logged.
#
# Non-interactive and bounded: every wait has a timeout. Exit codes: 0 pass, 1 fail, 77 no container engine could
# be found or installed (the pytest wrapper turns that into a skip, or a failure under CI).
#
# Environment (all optional):
#   CONTAINER_ENGINE   podman | docker (default: docker if its engine answers, else podman)
#   IMAGE              tag to build (default localhost/session-gateway:smoke)
#   BASE_IMAGE         base image for the build (default: see 2.)
#   DEVSTACK_MODE      host (project venv's python -m devstack) | container (the Dockerfile's devstack target)
#                      (default: host if the venv python can import devstack, else container)
#   PYTHON             python used for devstack on the host and for HTTP checks (default: .venv/bin/python)
#   STOP_GRACE         seconds the engine waits after SIGTERM before SIGKILL (default 10)
#   MAX_IMAGE_MB       fail if the image is larger (default: no limit; only reported)
#   KEEP_IMAGE=0       remove the built image at the end (default: keep it, the next build is then incremental)
#   SMOKE_DATABASE_URL postgresql://user:password@host:port/database: run the PostgreSQL scenario (see above)
set -Eeuo pipefail
export DEBIAN_FRONTEND=noninteractive

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONTEXT="${SMOKE_CONTEXT:-$ROOT}"          # build context (override only to test the script itself)
IMAGE="${IMAGE:-localhost/session-gateway:smoke}"
DEVSTACK_IMAGE="${IMAGE%:*}-devstack:${IMAGE##*:}"
LOCAL_BASE="localhost/bookworm-py:latest"
OFFICIAL_BASE="docker.io/library/python:3.12-slim"
STOP_GRACE="${STOP_GRACE:-10}"
READY_TIMEOUT="${READY_TIMEOUT:-60}"
BUILD_TIMEOUT="${BUILD_TIMEOUT:-900}"
TOKEN="dev-teacher-token"

RUN_ID="smoke-$(date +%s)-$$"
C1="$RUN_ID-first"; C2="$RUN_ID-second"; CDS="$RUN_ID-devstack"
VOL="$RUN_ID-data"; VOL2="$RUN_ID-data2"
GW_VOL="$VOL"                              # the volume run_gateway mounts on /data
PG_URL="${SMOKE_DATABASE_URL:-}"
unset SMOKE_DATABASE_URL DATABASE_URL      # handed to a container only where meant (pg_env below)
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gateway-smoke.XXXXXX")"
DEVSTACK_PID=""

log()  { printf '[smoke %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
fail() { log "FAIL: $*"; exit 1; }
skip() { log "SKIP: $*"; exit 77; }

# ---------------------------------------------------------------------------------------------- cleanup
cleanup() {
    local rc=$?
    set +e
    trap - ERR
    if [[ $rc -ne 0 && $rc -ne 77 && -n "${ENGINE:-}" ]]; then
        for c in "$C1" "$C2" "$CDS"; do
            if "${E[@]}" container exists "$c" 2>/dev/null || "${E[@]}" inspect "$c" >/dev/null 2>&1; then
                log "---- logs of $c (last 60 lines) ----"
                timeout 20 "${E[@]}" logs --tail 60 "$c" 2>&1 | sed 's/^/    /'
            fi
        done
        [[ -s "$WORK/devstack.log" ]] && { log "---- devstack log (last 40 lines) ----"; tail -40 "$WORK/devstack.log" | sed 's/^/    /'; }
    fi
    if [[ -n "$DEVSTACK_PID" ]]; then
        kill "$DEVSTACK_PID" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$DEVSTACK_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$DEVSTACK_PID" 2>/dev/null
    fi
    if [[ -n "${ENGINE:-}" ]]; then
        timeout 60 "${E[@]}" rm -f -t 2 "$C1" "$C2" "$CDS" >/dev/null 2>&1 \
            || timeout 60 "${E[@]}" rm -f "$C1" "$C2" "$CDS" >/dev/null 2>&1
        timeout 60 "${E[@]}" volume rm -f "$VOL" "$VOL2" >/dev/null 2>&1
        if [[ "${KEEP_IMAGE:-1}" == 0 ]]; then
            timeout 60 "${E[@]}" rmi -f "$IMAGE" "$DEVSTACK_IMAGE" >/dev/null 2>&1
        fi
        # Each code change leaves the previous image untagged; drop such leftovers once they are a day old
        # (recent ones still serve as build cache).
        timeout 120 "${E[@]}" image prune -f --filter until=24h >/dev/null 2>&1
    fi
    [[ -n "${ROOTFS:-}" && -d "${ROOTFS:-}" ]] && rm -rf "$ROOTFS"
    rm -rf "$WORK"
    if [[ $rc -eq 0 ]]; then log "cleaned up"; else log "cleaned up (exit $rc)"; fi
    exit $rc
}
trap cleanup EXIT
trap 'log "FAIL: line $LINENO: $BASH_COMMAND (exit $?)"; [[ -s $WORK/engine.err ]] && tail -20 "$WORK/engine.err"' ERR
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------- engine
as_root() { if [[ $EUID -eq 0 ]]; then "$@"; elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo -n "$@"; else return 1; fi; }

apt_install() {
    command -v apt-get >/dev/null || return 1
    log "installing: $*"
    as_root timeout 600 apt-get update -q >"$WORK/apt.log" 2>&1 || { tail -20 "$WORK/apt.log"; return 1; }
    as_root timeout 900 apt-get install -y -q --no-install-recommends "$@" >>"$WORK/apt.log" 2>&1 \
        || { tail -20 "$WORK/apt.log"; return 1; }
}

pick_engine() {
    if [[ -z "${CONTAINER_ENGINE:-}" ]]; then
        if command -v docker >/dev/null && timeout 15 docker info >/dev/null 2>&1; then
            CONTAINER_ENGINE=docker
        else
            CONTAINER_ENGINE=podman
        fi
    fi
    case "$CONTAINER_ENGINE" in
    docker)
        timeout 15 docker info >/dev/null 2>&1 || skip "CONTAINER_ENGINE=docker but no docker engine answers"
        ENGINE=docker; E=(docker)
        BUILD_FLAGS=(--network host); RUN_FLAGS=(--network host)
        ;;
    podman)
        if ! command -v podman >/dev/null || ! command -v runc >/dev/null; then
            apt_install podman runc || skip "podman is not installed and could not be installed (need root/sudo and apt-get)"
        fi
        ENGINE=podman
        # Flags this kind of sandbox needs (harmless elsewhere): runc, cgroupfs, host network, low ulimits.
        E=(podman --cgroup-manager=cgroupfs)
        command -v runc >/dev/null && E+=(--runtime runc)
        BUILD_FLAGS=(--format docker --network host --ulimit nofile=1024:1024 --ulimit nproc=1000:1000)
        RUN_FLAGS=(--network host --ulimit nofile=1024:1024 --ulimit nproc=1000:1000)
        # pip in the build steps must trust the same roots as the host (mounted for the build only).
        for ca in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
            [[ -f $ca ]] && { BUILD_FLAGS+=(-v "$ca:/etc/ssl/certs/ca-certificates.crt:ro"); break; }
        done
        ;;
    *) fail "CONTAINER_ENGINE must be podman or docker, not '$CONTAINER_ENGINE'" ;;
    esac
    log "engine: $("${E[@]}" --version 2>/dev/null | head -1)"
}

# ---------------------------------------------------------------------------------------------- base image
make_local_base() {
    # Debian bookworm minbase + python3/venv + CA roots, trimmed, imported as an image. Cached across runs.
    command -v debootstrap >/dev/null || apt_install debootstrap || fail "debootstrap is needed to make the base image"
    ROOTFS="$(mktemp -d "${TMPDIR:-/tmp}/bookworm-py.XXXXXX")"
    log "making base image $LOCAL_BASE with debootstrap (first run on this machine only, ~1 min)"
    local t0=$SECONDS
    timeout 900 debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$ROOTFS" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -30 "$WORK/debootstrap.log"; fail "debootstrap failed"; }
    # Trim what a runtime base does not need (package lists/caches, docs, man pages, locales, logs).
    rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/* "$ROOTFS"/var/cache/debconf/*-old \
        "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
        "$ROOTFS"/usr/share/locale/* "$ROOTFS"/var/log/* "$ROOTFS"/tmp/* "$ROOTFS"/root/.cache
    : >"$ROOTFS/etc/resolv.conf"; echo localhost >"$ROOTFS/etc/hostname"
    tar --numeric-owner -C "$ROOTFS" -c . | timeout 300 "${E[@]}" import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' --quiet - "$LOCAL_BASE" >/dev/null
    rm -rf "$ROOTFS"; ROOTFS=""
    log "base image ready in $((SECONDS - t0)) s"
}

pick_base() {
    if [[ -n "${BASE_IMAGE:-}" ]]; then log "base image (from BASE_IMAGE): $BASE_IMAGE"; return; fi
    if [[ $ENGINE == docker ]]; then BASE_IMAGE=""; log "base image: the Dockerfile default"; return; fi
    if "${E[@]}" image exists "$OFFICIAL_BASE" \
        || timeout 120 "${E[@]}" pull -q "$OFFICIAL_BASE" >"$WORK/pull.log" 2>&1; then
        BASE_IMAGE="$OFFICIAL_BASE"
    else
        log "cannot pull $OFFICIAL_BASE ($(tail -1 "$WORK/pull.log" | cut -c1-120)); using $LOCAL_BASE"
        BASE_IMAGE="$LOCAL_BASE"
        # One base build at a time on this machine; a concurrent run waits for it and then reuses it.
        exec 9>"${TMPDIR:-/tmp}/session-gateway-base-image.lock"
        flock -w 1200 9 || fail "timed out waiting for another run to build the base image"
        "${E[@]}" image exists "$LOCAL_BASE" || make_local_base
        flock -u 9
    fi
    log "base image: $BASE_IMAGE"
}

# ---------------------------------------------------------------------------------------------- helpers
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# http METHOD URL [JSON_BODY] -> writes the body to $WORK/body and the response headers to $WORK/headers, prints
# the status (000 on connection error). TOKEN=... http ... sends another bearer token.
http() {
    "$PY" - "$@" "$TOKEN" "$WORK/body" <<'PYEOF'
import sys, urllib.error, urllib.request
method, url = sys.argv[1], sys.argv[2]
body = sys.argv[3].encode() if len(sys.argv) == 6 else None
token, out = sys.argv[-2], sys.argv[-1]
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
req = urllib.request.Request(url, data=body, method=method,
                             headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
headers = ""
try:
    with opener.open(req, timeout=10) as r:
        status, data, headers = r.status, r.read(), str(r.headers)
except urllib.error.HTTPError as e:
    status, data, headers = e.code, e.read(), str(e.headers)
except Exception as e:  # connection refused, reset, timeout
    status, data = 0, repr(e).encode()
open(out, "wb").write(data)
open(out.rsplit("/", 1)[0] + "/headers", "w").write(headers)
print(f"{status:03d}")
PYEOF
}
header_get() { "$PY" -c 'import email, sys; print(email.message_from_file(open(sys.argv[1])).get(sys.argv[2], ""))' "$WORK/headers" "$1"; }
json_get() { "$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$WORK/body" "$1"; }

running() { [[ "$(timeout 30 "${E[@]}" inspect --format '{{.State.Running}}' "$1" 2>/dev/null)" == true ]]; }

wait_http() {  # wait_http URL TIMEOUT [CONTAINER]  until the URL answers 200
    local url=$1 deadline=$((SECONDS + $2)) ctr=${3:-} code
    while ((SECONDS < deadline)); do
        code=$(http GET "$url")
        [[ $code == 200 ]] && return 0
        if [[ -n $ctr ]] && ! running "$ctr"; then fail "container $ctr exited while waiting for $url"; fi
        if [[ -z $ctr && -n $DEVSTACK_PID ]] && ! kill -0 "$DEVSTACK_PID" 2>/dev/null; then
            fail "devstack exited while waiting for $url"
        fi
        sleep 0.5
    done
    fail "$url did not answer 200 within $2 s (last status $code: $(head -c 300 "$WORK/body"))"
}

run_gateway() {  # run_gateway NAME [ENGINE RUN OPTIONS...]
    local name=$1; shift
    timeout 120 "${E[@]}" run -d --name "$name" "${RUN_FLAGS[@]}" \
        -v "$GW_VOL:/data" \
        -e PORT="$GW_PORT" \
        -e AUTH_SERVICE_URL="$DS_URL" -e RAG_SERVICE_URL="$DS_URL" -e QUESTION_SERVICE_URL="$DS_URL" \
        -e LOG_LEVEL=info "$@" \
        "$IMAGE" >/dev/null 2>>"$WORK/engine.err" || { cat "$WORK/engine.err"; fail "could not start $name"; }
}

stop_and_check() {  # stop_and_check NAME: SIGTERM (the image's STOPSIGNAL), exit 0 within the grace period
    local t0 t1 elapsed code
    t0=$(date +%s.%N)
    timeout $((STOP_GRACE + 30)) "${E[@]}" stop -t "$STOP_GRACE" "$1" >/dev/null 2>>"$WORK/engine.err" \
        || { cat "$WORK/engine.err"; fail "could not stop $1"; }
    t1=$(date +%s.%N)
    elapsed=$("$PY" -c "print(f'{$t1 - $t0:.2f}')")
    code=$("${E[@]}" inspect --format '{{.State.ExitCode}}' "$1")
    log "$1 stopped in ${elapsed} s with exit code $code"
    [[ $code == 0 ]] || fail "$1 exited with $code after SIGTERM (137 means it was SIGKILLed: no graceful shutdown)"
    "$PY" -c "import sys; sys.exit(0 if $elapsed < $STOP_GRACE else 1)" \
        || fail "$1 took ${elapsed} s to stop, not within the ${STOP_GRACE} s grace period"
}

in_image() {  # in_image CMD...: run a one-off command in the gateway image with the volume mounted
    timeout 120 "${E[@]}" run --rm "${RUN_FLAGS[@]}" -v "$VOL:/data" "$IMAGE" "$@" 2>>"$WORK/engine.err"
}

report() {  # image size and build time; MAX_IMAGE_MB
    local size_bytes size_mb base_mb="?"
    size_bytes=$("${E[@]}" image inspect --format '{{.Size}}' "$IMAGE")
    size_mb=$((size_bytes / 1000000))
    if [[ -n $BASE_IMAGE ]]; then
        base_mb=$(( $("${E[@]}" image inspect --format '{{.Size}}' "$BASE_IMAGE") / 1000000 ))
    fi
    log "image $IMAGE: ${size_mb} MB (base ${BASE_IMAGE:-the Dockerfile default}: ${base_mb} MB; app layers: $(
        [[ $base_mb == "?" ]] && echo "?" || echo $((size_mb - base_mb))) MB); build ${BUILD_SECONDS} s"
    if [[ -n "${MAX_IMAGE_MB:-}" ]] && ((size_mb > MAX_IMAGE_MB)); then
        fail "image is ${size_mb} MB, over MAX_IMAGE_MB=$MAX_IMAGE_MB"
    fi
}

# ---------------------------------------------------------------------------------------------- PostgreSQL
# The URL carries a password: it reaches a container as `-e DATABASE_URL` (the value from this process's
# environment, not the command line) and is logged without it.
redacted() { "$PY" -c 'import sys, urllib.parse as u; p = u.urlsplit(sys.argv[1]); print(p._replace(netloc=f"{p.username}:***@{p.hostname}:{p.port}", query="").geturl())' "$PG_URL"; }

page_ids() { "$PY" -c 'import json, sys; print(" ".join(s["session_id"] for s in json.load(open(sys.argv[1]))))' "$WORK/body"; }

pg_once() {  # pg_once CMD...: a one-off container of the image with DATABASE_URL (stdout and stderr as they come)
    DATABASE_URL="$PG_URL" timeout 120 "${E[@]}" run --rm "${RUN_FLAGS[@]}" -e DATABASE_URL "$IMAGE" "$@"
}

postgres_scenario() {
    local secret="smoke-test-cursor-secret-0123456789" out rc code sid2 cursor first listing
    log "PostgreSQL: DATABASE_URL=$(redacted)"

    # one image, either backend: the driver is in it
    out=$(pg_once python -c 'import asyncpg; print(asyncpg.__version__)' 2>>"$WORK/engine.err") \
        || fail "asyncpg does not import in the image"
    log "asyncpg $out imports in the image"

    # the one-off migration job (compose's `migrate` service), then once more: idempotent
    # (no CURSOR_SECRET: a maintenance command signs no cursor)
    out=$(pg_once python -m service migrate 2>"$WORK/migrate.err") \
        || { echo "$out"; cat "$WORK/migrate.err"; fail "python -m service migrate failed"; }
    log "migrate: $(tr -s ' \n' ' ' <<<"$out")"
    out=$(pg_once python -m service migrate 2>"$WORK/migrate.err") \
        || { echo "$out"; cat "$WORK/migrate.err"; fail "a second migrate failed"; }
    [[ $out == *"schema already current"* ]] || fail "a second migrate did not find the schema current: $out"
    log "migrate again: schema already current"

    # a replica without CURSOR_SECRET refuses to start, naming the variable
    if out=$(pg_once python -m service serve 2>&1); then fail "serve with DATABASE_URL and no CURSOR_SECRET started"; else rc=$?; fi
    [[ $rc == 2 && $out == *CURSOR_SECRET* ]] || fail "without CURSOR_SECRET: exit $rc, expected 2 naming it: $out"
    log "without CURSOR_SECRET: refused (exit 2): $(tail -1 <<<"$out")"

    timeout 60 "${E[@]}" volume create "$VOL" >/dev/null
    timeout 60 "${E[@]}" volume create "$VOL2" >/dev/null
    GW_PORT=$(free_port); GW="http://127.0.0.1:$GW_PORT"
    log "starting $C1 on $GW with DATABASE_URL and CURSOR_SECRET"
    t0=$SECONDS
    DATABASE_URL="$PG_URL" run_gateway "$C1" -e DATABASE_URL -e CURSOR_SECRET="$secret"
    wait_http "$GW/health/ready" "$READY_TIMEOUT" "$C1"
    log "ready in $((SECONDS - t0)) s: $(head -c 200 "$WORK/body")"

    code=$(http POST "$GW/sessions" '{"name": "smoke-pg", "start_state": 0}')
    [[ $code == 201 ]] || fail "POST /sessions answered $code: $(head -c 500 "$WORK/body")"
    SID=$(json_get session_id)
    code=$(http POST "$GW/sessions" '{"name": "smoke-pg-2", "start_state": 0}')
    [[ $code == 201 ]] || fail "POST /sessions answered $code: $(head -c 500 "$WORK/body")"
    sid2=$(json_get session_id)
    log "created sessions $SID and $sid2"
    code=$(http GET "$GW/sessions?limit=1")
    cursor=$(header_get X-Next-Cursor); first=$(page_ids)
    [[ $code == 200 && -n $cursor ]] || fail "GET /sessions?limit=1 answered $code without X-Next-Cursor"

    # backups belong to PostgreSQL: 501 with the way to do them
    code=$(TOKEN=dev-admin-token http POST "$GW/admin/backup")
    [[ $code == 501 ]] || fail "POST /admin/backup answered $code on PostgreSQL, not 501: $(head -c 500 "$WORK/body")"
    grep -q pg_dump "$WORK/body" || fail "the 501 of /admin/backup does not name pg_dump: $(head -c 500 "$WORK/body")"
    log "/admin/backup: 501 $(head -c 240 "$WORK/body")"

    # nothing on the volume: the state is in PostgreSQL
    out=$(timeout 30 "${E[@]}" exec "$C1" python -c 'import os; print(" ".join(sorted(os.listdir("/data"))) or "(empty)")')
    [[ $out != *sessions.db* ]] || fail "a PostgreSQL replica created an SQLite file in /data: $out"
    log "/data of a PostgreSQL replica: $out"

    if [[ $ENGINE == podman ]]; then
        timeout 30 "${E[@]}" healthcheck run "$C1" >/dev/null || fail "HEALTHCHECK failed on a PostgreSQL replica"
        log "healthcheck (liveness, /health): healthy"
    fi
    stop_and_check "$C1"

    # a new container, on a fresh volume, as two workers: reads what the first one wrote
    GW_VOL="$VOL2"
    log "starting $C2 with WORKERS=2 on a fresh volume"
    DATABASE_URL="$PG_URL" run_gateway "$C2" -e DATABASE_URL -e CURSOR_SECRET="$secret" -e WORKERS=2
    wait_http "$GW/health/ready" "$READY_TIMEOUT" "$C2"
    code=$(http GET "$GW/sessions/$SID")
    [[ $code == 200 && $(json_get session_id) == "$SID" ]] \
        || fail "after restart GET /sessions/$SID answered $code: $(head -c 500 "$WORK/body")"
    log "session $SID read back from PostgreSQL by a new container"
    code=$(http GET "$GW/sessions?limit=1&cursor=$cursor")
    [[ $code == 200 ]] || fail "the cursor signed by $C1 answered $code on $C2: $(head -c 500 "$WORK/body")"
    listing=$(page_ids)
    [[ -n $listing && $listing != "$first" ]] || fail "the page after '$first' is '$listing'"
    log "a cursor signed by $C1 reads the next page on $C2 (shared CURSOR_SECRET)"
    deadline=$((SECONDS + READY_TIMEOUT)); lag_pids=0
    while ((SECONDS < deadline)); do
        [[ $(http GET "$GW/metrics") == 200 ]] && lag_pids=$(grep -c '^event_loop_lag_seconds{pid=' "$WORK/body" || true)
        [[ $lag_pids == 2 ]] && break
        sleep 0.5
    done
    [[ $lag_pids == 2 ]] || fail "WORKERS=2: /metrics shows the loop lag of $lag_pids workers, not 2"
    log "WORKERS=2 on PostgreSQL: two workers serve the port"
    stop_and_check "$C2"
}

# ================================================================================================ main
log "repository: $ROOT (build context: $CONTEXT)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[[ -x $PY ]] || PY="$(command -v python3 || true)"
[[ -n $PY ]] || fail "no python3 on the host (needed for the HTTP checks)"

pick_engine
pick_base
BASE_ARGS=(); [[ -n $BASE_IMAGE ]] && BASE_ARGS=(--build-arg "BASE_IMAGE=$BASE_IMAGE")

if [[ -z "${DEVSTACK_MODE:-}" ]]; then
    if (cd "$ROOT" && "$PY" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("devstack.__main__") is None)' 2>/dev/null); then DEVSTACK_MODE=host; else DEVSTACK_MODE=container; fi
fi

# ---- build
log "building $IMAGE from docker/Dockerfile (target gateway)"
t0=$SECONDS
timeout "$BUILD_TIMEOUT" "${E[@]}" build "${BUILD_FLAGS[@]}" "${BASE_ARGS[@]}" \
    -f "$CONTEXT/docker/Dockerfile" --target gateway -t "$IMAGE" "$CONTEXT" >"$WORK/build.log" 2>&1 \
    || { tail -40 "$WORK/build.log"; fail "image build failed"; }
BUILD_SECONDS=$((SECONDS - t0))
log "built in ${BUILD_SECONDS} s"
if [[ $DEVSTACK_MODE == container ]]; then
    log "building $DEVSTACK_IMAGE (target devstack)"
    timeout "$BUILD_TIMEOUT" "${E[@]}" build "${BUILD_FLAGS[@]}" "${BASE_ARGS[@]}" \
        -f "$CONTEXT/docker/Dockerfile" --target devstack -t "$DEVSTACK_IMAGE" "$CONTEXT" >"$WORK/build-ds.log" 2>&1 \
        || { tail -40 "$WORK/build-ds.log"; fail "devstack image build failed"; }
fi

# ---- image configuration
cfg=$("${E[@]}" image inspect --format '{{.Config.User}}|{{.Config.StopSignal}}|{{json .Config.Cmd}}|{{json .Config.Volumes}}' "$IMAGE")
log "image config: user|stopsignal|cmd|volumes = $cfg"
IFS='|' read -r img_user img_stop img_cmd img_vols <<<"$cfg"
[[ -n $img_user && $img_user != root && $img_user != 0* ]] || fail "image USER is '$img_user' (must be non-root)"
[[ $img_stop == SIGTERM || $img_stop == 15 || $img_stop == TERM ]] || fail "image STOPSIGNAL is '$img_stop'"
[[ $img_vols == *'"/data"'* ]] || fail "image has no VOLUME /data ($img_vols)"
[[ $img_cmd == '["python","-m","service","serve"]' ]] || fail "unexpected CMD $img_cmd"
hc=$("${E[@]}" image inspect --format '{{json .Config.Healthcheck}}' "$IMAGE" 2>/dev/null || true)
[[ $hc == *'/health'* ]] || fail "image has no HEALTHCHECK ($hc)"

# ---- downstream
DS_PORT=$(free_port); DS_URL="http://127.0.0.1:$DS_PORT"
if [[ $DEVSTACK_MODE == host ]]; then
    log "starting devstack on the host ($PY -m devstack) on $DS_URL"
    (cd "$ROOT" && DEVSTACK_HOST=127.0.0.1 DEVSTACK_PORT=$DS_PORT exec "$PY" -m devstack) >"$WORK/devstack.log" 2>&1 &
    DEVSTACK_PID=$!
    wait_http "$DS_URL/health" 30
else
    log "starting devstack container $CDS on $DS_URL"
    timeout 120 "${E[@]}" run -d --name "$CDS" "${RUN_FLAGS[@]}" -e DEVSTACK_HOST=127.0.0.1 -e DEVSTACK_PORT="$DS_PORT" \
        "$DEVSTACK_IMAGE" >/dev/null 2>>"$WORK/engine.err" || { cat "$WORK/engine.err"; fail "could not start $CDS"; }
    wait_http "$DS_URL/health" 30 "$CDS"
fi

if [[ -n $PG_URL ]]; then
    postgres_scenario
    report
    log "PASS (PostgreSQL)"
    exit 0
fi

# ---- first container
timeout 60 "${E[@]}" volume create "$VOL" >/dev/null
GW_PORT=$(free_port); GW="http://127.0.0.1:$GW_PORT"
log "starting $C1 on $GW with volume $VOL:/data"
t0=$SECONDS
run_gateway "$C1"
wait_http "$GW/health/ready" "$READY_TIMEOUT" "$C1"
log "ready in $((SECONDS - t0)) s"

code=$(http POST "$GW/sessions" '{"name": "smoke", "start_state": 0}')
[[ $code == 201 ]] || fail "POST /sessions answered $code: $(head -c 500 "$WORK/body")"
SID=$(json_get session_id)
log "created session $SID"
code=$(http GET "$GW/sessions/$SID")
[[ $code == 200 && $(json_get session_id) == "$SID" ]] || fail "GET /sessions/$SID answered $code"

# non-root: uid of PID 1 (the server) and of exec'd processes; the data directory and database belong to it
ids=$(timeout 30 "${E[@]}" exec "$C1" python -c '
import os
uid1 = [l.split()[1] for l in open("/proc/1/status") if l.startswith("Uid:")][0]
st = os.stat("/data"); db = os.stat(os.environ["DATABASE_PATH"])
print(uid1, os.getuid(), st.st_uid, db.st_uid)')
read -r uid_pid1 uid_exec uid_dir uid_db <<<"$ids"
log "uids: server(pid 1)=$uid_pid1 exec=$uid_exec /data owner=$uid_dir db owner=$uid_db"
[[ $uid_pid1 != 0 && $uid_exec != 0 ]] || fail "the server runs as root"
[[ $uid_dir == "$uid_pid1" && $uid_db == "$uid_pid1" ]] || fail "/data or the database is not owned by the server's uid"

# nothing for building or testing in the final image
leftovers=$(timeout 30 "${E[@]}" exec "$C1" python -c '
import importlib.util, shutil
print(" ".join([t for t in ("gcc", "cc", "c++", "make", "ld", "curl", "wget") if shutil.which(t)]
      + [m for m in ("devstack", "tests", "pip", "setuptools", "pytest") if importlib.util.find_spec(m)]))')
[[ -z $leftovers ]] || fail "the image contains build/test tools: $leftovers"
log "no compiler, make, curl/wget in the image; no pip, setuptools, devstack or tests in its venv"

# the HEALTHCHECK command itself (podman runs it on demand; docker on its own schedule)
if [[ $ENGINE == podman ]]; then
    timeout 30 "${E[@]}" healthcheck run "$C1" >/dev/null || fail "HEALTHCHECK failed on a running container"
    log "healthcheck: healthy"
else
    deadline=$((SECONDS + 40))
    until [[ "$(docker inspect --format '{{.State.Health.Status}}' "$C1")" == healthy ]]; do
        ((SECONDS < deadline)) || fail "container never became healthy"
        sleep 1
    done
    log "healthcheck: healthy"
fi

# ---- graceful stop: SIGTERM -> exit 0 within the grace period, WAL checkpointed
stop_and_check "$C1"
files=$(in_image python -c '
import os
for n in ("sessions.db", "sessions.db-wal", "sessions.db-shm"):
    p = os.path.join("/data", n)
    print(n, os.path.getsize(p) if os.path.exists(p) else "absent")')
log "volume after stop: $(echo "$files" | tr '\n' ' ')"
db_size=$(awk '$1 == "sessions.db" {print $2}' <<<"$files")
wal_size=$(awk '$1 == "sessions.db-wal" {print $2}' <<<"$files")
[[ $db_size != absent && $db_size -gt 0 ]] || fail "no database in the volume after stop"
[[ $wal_size == absent || $wal_size == 0 ]] || fail "the WAL was not checkpointed on shutdown (sessions.db-wal is $wal_size bytes)"

# ---- restart on the same volume, as two workers (the image's CMD is then their supervisor, PID 1)
log "starting $C2 on the same volume with WORKERS=2"
run_gateway "$C2" -e WORKERS=2 -e CURSOR_SECRET=smoke-test-cursor-secret-0123456789
wait_http "$GW/health/ready" "$READY_TIMEOUT" "$C2"
code=$(http GET "$GW/sessions/$SID")
[[ $code == 200 ]] || fail "after restart GET /sessions/$SID answered $code: $(head -c 500 "$WORK/body")"
[[ $(json_get session_id) == "$SID" ]] || fail "after restart the session id differs"
log "session $SID read back after restart"
deadline=$((SECONDS + READY_TIMEOUT)); lag_pids=0
while ((SECONDS < deadline)); do  # every worker reports its own loop lag in the one /metrics
    [[ $(http GET "$GW/metrics") == 200 ]] && lag_pids=$(grep -c '^event_loop_lag_seconds{pid=' "$WORK/body" || true)
    [[ $lag_pids == 2 ]] && break
    sleep 0.5
done
[[ $lag_pids == 2 ]] || fail "WORKERS=2: /metrics shows the loop lag of $lag_pids workers, not 2"
log "WORKERS=2: two workers serve the port"
stop_and_check "$C2"

# ---- report
report
log "PASS"
