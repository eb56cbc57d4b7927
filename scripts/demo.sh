#!/usr/bin/env bash
# The main job end to end, on a sample product, with nothing but regfs, the
# stock registry and skopeo:
#   1. write sample releases 1 and 2 as OCI layouts (`regfs sample`)
#   2. release 1 over an empty history (everything is uploaded)
#   3. absorb release 1 into the history store
#   4. plan and release 2 over that history (only the changes are uploaded),
#      shipped as a delta against release 1's bundle (only the new blobs)
#   5. at the customer's site, which holds release 1: apply the delta
#      (verified, crash-safe), serve the site with a stock registry and pull
#      an image back
# Non-interactive, root or not (FUSE through fusermount3 when not root).
# Every process it starts is stopped and its temporary directory removed.
# Environment: REGFS (binary; default: build target/release/regfs),
# DEMO_IMAGES (40), DEMO_BASE_KIB (base layer size, 4096), DEMO_KEEP=1 keeps
# the directory.
set -euo pipefail
cd "$(dirname "$0")/.."

images="${DEMO_IMAGES:-40}"
base_kib="${DEMO_BASE_KIB:-4096}"
if [ -z "${REGFS:-}" ]; then
    cargo build --release --locked --quiet
    REGFS="$PWD/target/release/regfs"
fi
for tool in docker-registry skopeo; do
    command -v "$tool" >/dev/null || { echo "demo: $tool is not installed (scripts/setup.sh installs it)" >&2; exit 1; }
done

demo="$(mktemp -d "${TMPDIR:-/tmp}/regfs-demo.XXXXXX")"
# regfs keeps its mount state and daemon logs here: gone with the demo.
export XDG_RUNTIME_DIR="$demo/run"
mkdir -m 0700 "$XDG_RUNTIME_DIR"
registry_pid=""
cleanup() {
    local status=$?
    if [ -n "$registry_pid" ]; then
        kill "$registry_pid" 2>/dev/null || true
        wait "$registry_pid" 2>/dev/null || true
    fi
    # A release interrupted half way unmounts itself; be sure anyway.
    for mnt in "$demo"/*.work/mnt; do
        if [ -d "$mnt" ] && grep -qF " $mnt " /proc/self/mountinfo; then
            "$REGFS" umount "$mnt" || true
        fi
    done
    if [ "${DEMO_KEEP:-0}" = 1 ]; then
        echo "demo: kept $demo"
    else
        rm -rf "$demo"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start=$(date +%s.%N)
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
cd "$demo"

step "1. sample releases: $images images, release 2 changes about one in ten"
run "$REGFS" sample --release 1 --images "$images" --base-kib "$base_kib" layouts-r1
run "$REGFS" sample --release 2 --images "$images" --base-kib "$base_kib" layouts-r2

# A release's progress and logs go to stderr: kept in a file, shown on failure.
release() {
    local log="$1"
    shift
    printf '$ %s 2>%s\n' "$*" "$log"
    "$@" 2>"$log" | tee "$log.out" || { cat "$log" >&2; echo "demo: FAILED: regfs release" >&2; exit 1; }
}

step "2. release 1 over an empty history: every blob is uploaded"
mkdir -p history/docker/registry/v2
t=$(date +%s.%N)
release release-1.log "$REGFS" release --history history --images layouts-r1/images.list --from oci:layouts-r1 \
    -o release-1.tar
r1_time=$(elapsed "$t")

step "3. absorb release 1 into the history (only adds, every blob verified)"
run "$REGFS" absorb --history history --upper release-1.tar.work/upper

step "4. release 2 over the history: only what changed is uploaded, and shipped"
run "$REGFS" plan --lower history --keep layouts-r2/images.list
t=$(date +%s.%N)
release release-2.log "$REGFS" release --history history --images layouts-r2/images.list --from oci:layouts-r2 \
    -o release-2.tar --base release-1.tar
r2_time=$(elapsed "$t")
# The full bundle of the same release, to compare sizes (not shipped).
"$REGFS" export --lower history --upper release-2.tar.work/upper -o release-2-full.tar --name release-2 2>/dev/null
full_bytes=$(stat -c %s release-2-full.tar)
delta_bytes=$(stat -c %s release-2.tar)

step "5. the customer's site holds release 1; it lands the delta and serves it"
mkdir site
t=$(date +%s.%N)
tar -xf release-1.tar -C site && sync -f site
untar_r1=$(elapsed "$t")
echo "site: release 1 untarred in ${untar_r1} s (what the customer did last time)"
run "$REGFS" inventory site -o site.inventory
run "$REGFS" apply release-2.tar --to site --replace --dry-run
t=$(date +%s.%N)
run "$REGFS" apply release-2.tar --to site --replace
apply_time=$(elapsed "$t")
port=""
for attempt in 1 2 3 4 5; do
    candidate=$((20000 + (RANDOM % 20000)))
    if (exec 3<>"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null; then continue; fi
    cat >registry.yml <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $demo/site
http:
  addr: 127.0.0.1:$candidate
EOF
    docker-registry serve registry.yml >registry.log 2>&1 &
    registry_pid=$!
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null; then port=$candidate; break; fi
        kill -0 "$registry_pid" 2>/dev/null || break
        sleep 0.1
    done
    [ -n "$port" ] && break
    kill "$registry_pid" 2>/dev/null || true
    wait "$registry_pid" 2>/dev/null || true
    registry_pid=""
done
[ -n "$port" ] || { echo "demo: the registry did not start:" >&2; cat registry.log >&2; exit 1; }
echo "docker-registry serving the site on 127.0.0.1:$port (pid $registry_pid)"
repo="team-a/api-01"   # an OCI index over linux/amd64 and linux/arm64
want=$(grep -o '"digest":"sha256:[0-9a-f]*"' "layouts-r2/$repo/index.json" | head -1 | cut -d'"' -f4)
run skopeo --insecure-policy copy --all --preserve-digests --src-tls-verify=false \
    "docker://127.0.0.1:$port/$repo:r2" "oci:pulled:r2"
got=$(grep -o '"digest":"sha256:[0-9a-f]*"' pulled/index.json | head -1 | cut -d'"' -f4)
echo "built  $repo:r2 $want"
echo "pulled $repo:r2 $got"
[ "$want" = "$got" ] || { echo "demo: FAILED: the pulled image differs from the built one" >&2; exit 1; }
kill "$registry_pid"
wait "$registry_pid" 2>/dev/null || true
registry_pid=""

step "done"
echo "release 1 (empty history): ${r1_time} s; release 2 (over history): ${r2_time} s;" \
    "demo $(elapsed "$start") s"
echo "release 2 shipped as a delta of $delta_bytes bytes (the full bundle: $full_bytes bytes);" \
    "applied at the site in ${apply_time} s"
