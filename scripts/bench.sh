#!/usr/bin/env bash
# Issue 7's benchmark: regfs against kernel overlayfs, fuse-overlayfs and the
# stock tools, on one generated registry store, in one run. Not a test: never
# run from scripts/test.sh. Needs root (kernel overlay, drop_caches), fuse3,
# fuse-overlayfs, docker-registry, skopeo and python3 (scripts/setup.sh).
#
#   scripts/bench.sh [--small] [--out FILE.json] [--dir DIR] [--keep-data]
#                    [--runs N] [--rev REV | --regfs BIN] [--only FIGURES]
#
# Figures (each as a ratio to the kernel overlayfs or stock-tool figure,
# median of --runs runs with min-max):
#   traversal  warm `du -s` and `find -ls` of the mounted view; daemon peak RSS
#   read       sequential read (dd bs=1M) of the large blob: cold, second, warm (third),
#              2 x --runs runs, each starting one reader later (a drifting disk);
#              regfs-fuse reads through the daemon, regfs-fuse-passthrough is
#              `regfs mount --passthrough`. (Builds before --passthrough used
#              passthrough whenever root: there regfs-fuse-nopt, the daemon
#              in a user namespace, is the one without.)
#   push       release 2 (skopeo, 4 at a time) through a stock registry
#   gc         regfs gc --dry-run vs docker-registry garbage-collect --dry-run
#   export     regfs export vs GNU tar of the kernel-overlay view
#   bundle     the store exported as a bundle tar and extracted again: mount,
#              warm `du -s` and `find -ls`, peak RSS of a FUSE view over the tar
#              (read in place) against the view over the extracted directory
#   release    the whole release of release 2 over the history, to its tar:
#              regfs release (full, and a delta against the site's inventory)
#              against the seed's scripted pipeline (kernel overlay, rm -rf of
#              every history _manifests, the stock registry + skopeo x4,
#              garbage-collect, tar) and against an empty store + skopeo + tar;
#              time per phase of each
#   scaling    traversal and gc again on a store 1/10 the size, gc on an empty
#              store (start-up, not a cost per entry)
# --only takes a comma list of these (data is generated either way).
# regfs is `cargo build --release` of the work tree, or of git revision REV
# alone (--rev: built from `git archive REV`, so uncommitted edits in the tree
# do not leak in), or a given binary (--regfs). A copy is run.
#
# Default size: 2,000 repos x 10 tags (~455k entries) and a 2 GiB blob;
# --small: 200 repos (~46k entries), a 256 MiB blob, 12 smaller images.
# Everything lives under one temp dir (default /tmp/regfs-bench.XXXX),
# deleted at the end unless --keep-data; with --keep-data --dir DIR a later
# run reuses the generated data. Every mount and process made is cleaned up,
# also on Ctrl-C.
set -euo pipefail
export LC_ALL=C
ROOT=$(cd "$(dirname "$0")/.." && pwd)

SMALL=0 OUT="" DIR="" KEEP=0 RUNS=3 REGFS_SRC="" REV="" ONLY="traversal,read,push,gc,export,bundle,scaling,release"
usage() { sed -n '2,43p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --small) SMALL=1 ;;
        --out) OUT=$2; shift ;;
        --dir) DIR=$2; shift ;;
        --keep-data) KEEP=1 ;;
        --runs) RUNS=$2; shift ;;
        --regfs) REGFS_SRC=$2; shift ;;
        --rev) REV=$2; shift ;;
        --only) ONLY=$2; shift ;;
        -h|--help) usage 0 ;;
        *) echo "bench: unknown argument $1" >&2; usage 2 >&2 ;;
    esac
    shift
done
want() { [[ ",$ONLY," == *",$1,"* ]]; }

if [ "$SMALL" = 1 ]; then
    REPOS=200 BIG_MIB=256 IMAGES=12 LAYER_MIB=1 SIZE_NAME=small
else
    REPOS=2000 BIG_MIB=2048 IMAGES=40 LAYER_MIB=4 SIZE_NAME=default
fi
TAGS=10
TENTH_REPOS=$((REPOS / 10))

die() { echo "bench: $*" >&2; exit 1; }
log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

[ "$(id -u)" = 0 ] || die "needs root (kernel overlayfs mounts, drop_caches)"
for t in python3 docker-registry skopeo fuse-overlayfs fusermount3 findmnt unshare nsenter dd du find tar; do
    command -v "$t" >/dev/null || die "$t not found (scripts/setup.sh installs what the bench needs)"
done

# ------------------------------------------------------------------ workspace
if [ -n "$DIR" ]; then
    mkdir -p "$DIR"; W=$(cd "$DIR" && pwd)
else
    W=$(mktemp -d /tmp/regfs-bench.XXXXXX)
fi
RUN=$W/run.$$            # per-run uppers, mountpoints, logs (always removed)
DATA=$W/data             # generated stores and layouts (kept with --keep-data)
mkdir -p "$RUN" "$DATA"
RESULTS=$RUN/results.tsv
META=$RUN/meta.tsv
: > "$RESULTS"; : > "$META"

MOUNTS=()    # kind:mountpoint, kind = regfs | kernel | fuse
PIDS=()      # processes we started that may outlive a step
REG_PID=""
NS_PID="" NS_MP=""   # a user + mount namespace for the no-passthrough mount

is_mounted() { findmnt -rn -M "$1" >/dev/null 2>&1; }

unmount() {  # kind mountpoint
    local kind=$1 m=$2
    is_mounted "$m" || return 0
    case "$kind" in
        regfs) "$REGFS" umount --timeout 60 "$m" >/dev/null 2>&1 || umount -l "$m" ;;
        kernel) umount "$m" 2>/dev/null || umount -l "$m" ;;
        fuse) fusermount3 -u "$m" 2>/dev/null || fusermount3 -uz "$m" ;;
    esac
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    stop_registry
    if [ -n "$NS_MP" ]; then in_ns "$REGFS" umount --timeout 60 "$NS_MP" >/dev/null 2>&1; fi
    local i
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        unmount "${MOUNTS[i]%%:*}" "${MOUNTS[i]#*:}"
    done
    for p in "${PIDS[@]}"; do
        if kill -0 "$p" 2>/dev/null; then
            kill -TERM "$p" 2>/dev/null
            for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$p" 2>/dev/null || break; sleep 0.5; done
            kill -KILL "$p" 2>/dev/null
        fi
    done
    if findmnt -rn -o TARGET | grep -q "^$W/"; then
        echo "bench: something is still mounted under $W; not deleting it:" >&2
        findmnt -rn -o TARGET | grep "^$W/" >&2
    elif [ "$KEEP" = 1 ]; then
        rm -rf --one-file-system "$RUN"
        echo "bench: data kept in $W" >&2
    else
        rm -rf --one-file-system "$W"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------ helpers
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >> "$RESULTS"; }   # figure size target unit value
meta() { printf '%s\t%s\n' "$1" "$2" >> "$META"; }

# timed FIGURE SIZE TARGET CMD...: runs CMD (stdout and stderr to a log), records seconds.
timed() {
    local fig=$1 size=$2 target=$3; shift 3
    local t0 t1
    t0=$EPOCHREALTIME
    if ! "$@" > "$RUN/last.out" 2> "$RUN/last.err"; then
        echo "bench: failed: $*" >&2; tail -20 "$RUN/last.err" >&2; return 1
    fi
    t1=$EPOCHREALTIME
    record "$fig" "$size" "$target" s "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", b - a }')"
}

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }

# regfs asks for FUSE passthrough when it is root outside a user namespace.
# For the figure without passthrough its daemon runs in a user namespace
# (root mapped to root), mounted in that namespace's own mount namespace;
# readers enter the mount namespace only.
start_ns() {
    unshare -Urm --propagation private sleep 1000000 &
    NS_PID=$!
    PIDS+=("$NS_PID")
    local i
    for i in $(seq 100); do
        [ "$(readlink "/proc/$NS_PID/ns/mnt")" != "$(readlink /proc/self/ns/mnt)" ] && return 0
        sleep 0.02
    done
    die "unshare -Urm did not make a namespace"
}
in_ns() { nsenter -t "$NS_PID" -U -m --preserve-credentials "$@"; }
in_mnt_ns() { nsenter -t "$NS_PID" -m "$@"; }

# mount_view KIND NAME LOWER UPPER MOUNTPOINT [REGFS FLAGS]: KIND = kernel (regfs
# --mode kernel), fuse (regfs --mode fuse), plain (mount -t overlay, no
# policy), fo (fuse-overlayfs, no policy). Sets VIEW_PID for daemons.
mount_view() {
    local kind=$1 name=$2 lower=$3 upper=$4 mp=$5 out
    VIEW_PID=""
    mkdir -p "$upper" "$mp"
    case "$kind" in
        kernel|fuse)
            out=$("$REGFS" mount --mode "$kind" "${@:6}" --lower "$lower" --upper "$upper" "$mp" 2>&1) \
                || { echo "$out" >&2; die "regfs mount --mode $kind failed"; }
            MOUNTS+=("regfs:$mp")
            if [ "$kind" = fuse ]; then
                VIEW_PID=$(sed -n 's/.*daemon pid \([0-9][0-9]*\).*/\1/p' <<<"$out")
                [ -n "$VIEW_PID" ] || die "no daemon pid in: $out"
                PIDS+=("$VIEW_PID")
            fi ;;
        plain)
            mkdir -p "$upper.work"
            mount -t overlay "bench-$name" -o "lowerdir=$lower,upperdir=$upper,workdir=$upper.work" "$mp"
            MOUNTS+=("kernel:$mp") ;;
        fo)
            mkdir -p "$upper.work"
            fuse-overlayfs -f -o "lowerdir=$lower,upperdir=$upper,workdir=$upper.work" "$mp" \
                > "$RUN/fuse-overlayfs.$name.log" 2>&1 &
            VIEW_PID=$!
            PIDS+=("$VIEW_PID")
            MOUNTS+=("fuse:$mp")
            local i
            for i in $(seq 200); do is_mounted "$mp" && break; sleep 0.05; done
            is_mounted "$mp" || die "fuse-overlayfs did not mount $mp: $(cat "$RUN/fuse-overlayfs.$name.log")" ;;
    esac
}

umount_view() {  # KIND MOUNTPOINT [PID]
    local kind=$1 mp=$2 pid=${3:-}
    case "$kind" in
        kernel|fuse) unmount regfs "$mp" ;;
        plain) unmount kernel "$mp" ;;
        fo) unmount fuse "$mp" ;;
    esac
    if [ -n "$pid" ]; then
        local i
        for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && die "daemon $pid still running after unmounting $mp"
        wait "$pid" 2>/dev/null || true
    fi
    return 0
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

start_registry() {  # ROOTDIRECTORY NAME
    local root=$1 name=$2
    REG_PORT=$(free_port)
    cat > "$RUN/registry-$name.yml" <<EOF
version: 0.1
log:
  level: warn
  formatter: text
storage:
  filesystem:
    rootdirectory: "$root"
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$REG_PORT
  secret: regfs-bench
EOF
    docker-registry serve "$RUN/registry-$name.yml" > "$RUN/registry-$name.log" 2>&1 &
    REG_PID=$!
    python3 - "$REG_PORT" <<'EOF' || { cat "$RUN/registry-$name.log" >&2; die "registry on $root did not come up"; }
import sys, time, urllib.request
for _ in range(300):
    try:
        if urllib.request.urlopen("http://127.0.0.1:%s/v2/" % sys.argv[1], timeout=2).status == 200:
            sys.exit(0)
    except Exception:
        time.sleep(0.05)
sys.exit(1)
EOF
}

stop_registry() {
    [ -n "$REG_PID" ] || return 0
    kill -TERM "$REG_PID" 2>/dev/null || true
    wait "$REG_PID" 2>/dev/null || true
    REG_PID=""
}

# push_release REL: every image's REL tag, 4 skopeo copies at a time, fresh
# private blob-info cache (so no run learns from another).
push_release() {
    local rel=$1 cache
    cache=$(mktemp -d "$RUN/skopeo-cache.XXXXXX")
    printf '%s\n' "${OCI_REPOS[@]}" | xargs -P 4 -I '{}' \
        env _CONTAINERS_ROOTLESS_UID=1000 XDG_DATA_HOME="$cache" \
        skopeo --insecure-policy --command-timeout 600s copy --quiet --preserve-digests --all \
        --dest-tls-verify=false "oci:$OCI/{}:$rel" "docker://127.0.0.1:$REG_PORT/{}:$rel"
    rm -rf "$cache"
}

# ------------------------------------------------------------------ build
if [ -n "$REGFS_SRC" ]; then
    [ -x "$REGFS_SRC" ] || die "--regfs $REGFS_SRC: not an executable"
    GIT_HEAD="unknown (--regfs $REGFS_SRC)"
elif [ -n "$REV" ]; then
    GIT_HEAD=$(git -C "$ROOT" rev-parse --short "$REV^{commit}") || die "--rev $REV: no such revision"
    log "cargo build --release of $GIT_HEAD"
    mkdir -p "$RUN/src"
    git -C "$ROOT" archive "$GIT_HEAD" | tar -x -C "$RUN/src"
    (cd "$RUN/src" && CARGO_TARGET_DIR=$ROOT/target/bench cargo build --release --locked --quiet)
    REGFS_SRC=$ROOT/target/bench/release/regfs
else
    log "cargo build --release"
    (cd "$ROOT" && cargo build --release --quiet)
    REGFS_SRC=$ROOT/target/release/regfs
    GIT_HEAD=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
    [ -z "$(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null)" ] || GIT_HEAD="$GIT_HEAD+uncommitted"
fi
# A private copy: another build in the tree during the run cannot swap it.
mkdir -p "$RUN/bin"
cp "$REGFS_SRC" "$RUN/bin/regfs"
REGFS=$RUN/bin/regfs

PT_FLAG=0
if "$REGFS" mount --help 2>/dev/null | grep -e '--passthrough' > /dev/null; then PT_FLAG=1; fi
meta passthrough_flag "$PT_FLAG"
meta regfs_binary "$REGFS_SRC"
meta regfs_version "$("$REGFS" --version)"
meta git_head "$GIT_HEAD"
meta size "$SIZE_NAME"
meta runs "$RUNS"
READ_RUNS=$((RUNS * 2))
meta read_runs "$READ_RUNS"
meta kernel "$(uname -r)"
meta cpus "$(nproc)"
meta mem_gib "$(awk '/MemTotal/ { printf "%.0f", $2 / 1048576 }' /proc/meminfo)"
meta fuse_overlayfs "$(fuse-overlayfs --version 2>/dev/null | sed -n 's/^fuse-overlayfs: //p')"
meta docker_registry "$(docker-registry --version | awk '{ print $3 }')"
meta skopeo "$(skopeo --version | awk '{ print $3 }')"
meta date "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
meta load_at_start "$(cut -d' ' -f1-3 /proc/loadavg)"
# Proactive reclaim pages out page cache left cold; it shapes "warm" figures.
DAMON=$(cat /sys/kernel/mm/damon/admin/kdamonds/*/state 2>/dev/null | tr '\n' ' ' || true)
meta damon "${DAMON:-none}"

# ------------------------------------------------------------------ data
H=$DATA/history        # the full store (+ release 1 pushed into it)
H10=$DATA/history-10   # 1/10 of it
OCI=$DATA/oci
PARAMS="repos=$REPOS tags=$TAGS big=$BIG_MIB images=$IMAGES layer=$LAYER_MIB gen=$(sha256sum "$ROOT/bench/gen.py" | cut -c1-16)"
if [ -f "$DATA/params" ] && [ "$(cat "$DATA/params")" = "$PARAMS" ]; then
    log "reusing the data in $DATA"
else
    rm -rf --one-file-system "$DATA"; mkdir -p "$DATA"
    log "generating the store: $REPOS repos x $TAGS tags, a $BIG_MIB MiB blob"
    t0=$EPOCHREALTIME
    python3 "$ROOT/bench/gen.py" store --root "$H" --repos "$REPOS" --tags "$TAGS" --big-blob-mib "$BIG_MIB" > "$DATA/store.json"
    log "  done in $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", b - a }') s: $(cat "$DATA/store.json" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["entries"], "entries")')"
    python3 "$ROOT/bench/gen.py" store --root "$H10" --repos "$TENTH_REPOS" --tags "$TAGS" --big-blob-mib 0 > "$DATA/store-10.json"
    log "generating $IMAGES OCI layouts (release 1 and 2)"
    python3 "$ROOT/bench/gen.py" oci --root "$OCI" --images "$IMAGES" --layer-mib "$LAYER_MIB" > "$DATA/oci.json"
    mapfile -t OCI_REPOS < <(python3 -c 'import json,sys; print("\n".join(json.load(open(sys.argv[1]))["repos"]))' "$DATA/oci.json")
    log "pushing release 1 into the history through a registry"
    start_registry "$H" history
    t0=$EPOCHREALTIME
    push_release r1
    stop_registry
    log "  done in $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }') s"
    echo "$PARAMS" > "$DATA/params"
fi
mapfile -t OCI_REPOS < <(python3 -c 'import json,sys; print("\n".join(json.load(open(sys.argv[1]))["repos"]))' "$DATA/oci.json")
BIG_PATH=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["big_blob"]["path"])' "$DATA/store.json")
meta store "$(cat "$DATA/store.json")"
meta store_10 "$(cat "$DATA/store-10.json")"
meta oci "$(cat "$DATA/oci.json")"
meta history_entries "$(find "$H" -mindepth 1 | wc -l)"
meta history_10_entries "$(find "$H10" -mindepth 1 | wc -l)"

# ------------------------------------------------------------------ figures
# The four views of one store: regfs kernel mode (policy materialised), plain
# overlay (no policy, reference), regfs FUSE, fuse-overlayfs (no policy).
VIEWS=(kernel plain fuse fo)
declare -A VNAME=([kernel]=kernel-overlay [plain]=plain-overlay [fuse]=regfs-fuse [fusefin]=regfs-fuse-finalize [fo]=fuse-overlayfs)
declare -A VMP VPID

mount_views() {  # SIZE LOWER
    local size=$1 lower=$2 v t0
    for v in "${VIEWS[@]}"; do
        t0=$EPOCHREALTIME
        mount_view "$v" "$size-$v" "$lower" "$RUN/$size/$v/upper" "$RUN/$size/$v/mnt"
        record mount "$size" "${VNAME[$v]}" s "$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.4f", b - a }')"
        VMP[$v]=$RUN/$size/$v/mnt
        VPID[$v]=$VIEW_PID
    done
}

umount_views() {
    local v
    for v in "${VIEWS[@]}"; do umount_view "$v" "${VMP[$v]}" "${VPID[$v]}"; done
}

rss_mb() { awk '/^VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

# Each view is warmed up and then timed back to back: interleaving the views
# left a view idle for as long as the others took (fuse-overlayfs: 35 s a
# round), and a machine that pages out cold page cache (DAMON on this one:
# `meta damon`) then drops part of what "warm" means, unevenly by view.
traversal() {  # SIZE
    local size=$1 v run
    for v in "${VIEWS[@]}"; do
        log "traversal ($size): ${VNAME[$v]}: warm-up, $RUNS runs"
        du -s "${VMP[$v]}" > /dev/null
        find "${VMP[$v]}" -ls > /dev/null
        record entries "$size" "${VNAME[$v]}" n "$(find "${VMP[$v]}" -mindepth 1 | wc -l)"
        for run in $(seq "$RUNS"); do
            timed du "$size" "${VNAME[$v]}" du -s "${VMP[$v]}"
            timed find "$size" "${VNAME[$v]}" find "${VMP[$v]}" -ls
        done
    done
    record rss "$size" regfs-fuse MB "$(rss_mb "${VPID[fuse]}")"
    record rss "$size" fuse-overlayfs MB "$(rss_mb "${VPID[fo]}")"
}

# After drop_caches: the cold read, the second read and the warm read (the
# third, the steady state). Through a FUSE view the second read of the 2 GiB
# blob took ~0.08 s more than later ones here, with no request reaching
# regfs (3 per read): the kernel's page cache settling. It is reported, not
# a target.
read_three() {  # SIZE TARGET FILE [READER...]
    local size=$1 target=$2 file=$3; shift 3
    timed read_cold "$size" "$target" "$@" dd if="$file" of=/dev/null bs=1M status=none
    timed read_second "$size" "$target" "$@" dd if="$file" of=/dev/null bs=1M status=none
    timed read_warm "$size" "$target" "$@" dd if="$file" of=/dev/null bs=1M status=none
}

# regfs-fuse-passthrough / regfs-fuse-nopt: the other side of passthrough
# from regfs-fuse (see the top of this file).
read_blob() {  # SIZE
    local size=$1 v run out pid up=$RUN/$1/pt/upper mp=$RUN/$1/pt/mnt extra extra_pid reader
    mkdir -p "$up" "$mp"
    if [ "$PT_FLAG" = 1 ]; then
        extra=regfs-fuse-passthrough
        mount_view fuse "$size-pt" "$H" "$up" "$mp" --passthrough
        extra_pid=$VIEW_PID
        reader=()
    else
        extra=regfs-fuse-nopt
        NS_MP=$mp
        start_ns
        out=$(in_ns "$REGFS" mount --mode fuse --lower "$H" --upper "$up" "$mp" 2>&1) \
            || { echo "$out" >&2; die "regfs mount in a user namespace failed"; }
        pid=$(sed -n 's/.*daemon pid \([0-9][0-9]*\).*/\1/p' <<<"$out")
        [ -n "$pid" ] && PIDS+=("$pid")
        reader=(in_mnt_ns)
    fi
    # Each run starts one reader later: the disk's speed drifts (seen: the
    # same cold read 1.4 to 2.9 s within the hour), and a fixed order would
    # hand the drift to whoever comes last. READ_RUNS (twice --runs) lets
    # every reader take most places.
    local readers=(lower-file "${VIEWS[@]}" extra) n i r
    n=${#readers[@]}
    for run in $(seq "$READ_RUNS"); do
        log "blob read: run $run of $READ_RUNS"
        for i in $(seq 0 $((n - 1))); do
            r=${readers[$(((i + run - 1) % n))]}
            drop_caches
            case "$r" in
                lower-file) read_three "$size" lower-file "$H/$BIG_PATH" ;;
                extra) read_three "$size" "$extra" "$mp/$BIG_PATH" "${reader[@]}" ;;
                *) read_three "$size" "${VNAME[$r]}" "${VMP[$r]}/$BIG_PATH" ;;
            esac
        done
    done
    if [ "$PT_FLAG" = 1 ]; then
        umount_view fuse "$mp" "$extra_pid"
    else
        in_ns "$REGFS" umount --timeout 60 "$NS_MP" >/dev/null
        NS_MP=""
        kill "$NS_PID"; wait "$NS_PID" 2>/dev/null || true
    fi
}

# GNU tar of the kernel-overlay view vs regfs export of the same view (an
# empty upper: the policy is applied, not materialised). regfs fsyncs its tar,
# so tar is timed with and without a closing fsync.
# tar exits 1 when a file "changed as we read it": on a fresh kernel overlay
# mount the first reads of a merged directory set overlay xattrs on its upper
# copy, which moves its ctime. The archive is complete; only 2+ is a failure.
gnu_tar() { tar --warning=no-file-changed "$@" || [ $? = 1 ]; }

export_fig() {  # SIZE
    local size=$1 run up x
    up=$RUN/$size/export-upper x=$RUN/$size/export.tar
    mkdir -p "$up"
    log "export: warm-up"
    gnu_tar -cf - -C "${VMP[kernel]}" docker | cat > /dev/null
    for run in $(seq "$RUNS"); do
        log "export: run $run"
        rm -f "$x"; sync
        timed export "$size" tar gnu_tar -cf "$x" -C "${VMP[kernel]}" docker
        [ "$run" = 1 ] && record tar_entries "$size" tar n "$(tar -tf "$x" | wc -l)" && record tar_bytes "$size" tar B "$(stat -c %s "$x")"
        rm -f "$x"; sync
        timed export "$size" tar+fsync sh -c 'tar --warning=no-file-changed -cf "$1" -C "$2" docker; [ $? -le 1 ] && sync "$1"' sh "$x" "${VMP[kernel]}"
        rm -f "$x"; sync
        timed export "$size" regfs-export "$REGFS" export --lower "$H" --upper "$up" -o "$x"
        [ "$run" = 1 ] && record tar_entries "$size" regfs-export n "$(tar -tf "$x" | wc -l)" && record tar_bytes "$size" regfs-export B "$(stat -c %s "$x")"
        rm -f "$x"; sync
    done
}

# The store as a bundle: one FUSE view over the tar, one over the same tar
# extracted, each mounted, warmed up and timed back to back.
bundle_fig() {  # SIZE
    local size=$1 tarf=$RUN/$1/bundle.tar dir=$RUN/$1/bundle-extracted kind lower mp pid t0 run
    log "bundle ($size): exporting the store as a bundle, extracting it"
    mkdir -p "$RUN/$size"
    "$REGFS" export --upper "$H" -o "$tarf" 2> "$RUN/bundle-export.err" \
        || { cat "$RUN/bundle-export.err" >&2; die "regfs export failed"; }
    mkdir -p "$dir"
    tar -xf "$tarf" -C "$dir"
    for kind in dir tar; do
        if [ "$kind" = tar ]; then lower=$tarf; else lower=$dir; fi
        mp=$RUN/$size/bundle-$kind/mnt
        sync; drop_caches
        t0=$EPOCHREALTIME
        mount_view fuse "bundle-$kind" "$lower" "$RUN/$size/bundle-$kind/upper" "$mp"
        record bundle_mount "$size" "regfs-fuse-$kind" s "$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.4f", b - a }')"
        pid=$VIEW_PID
        log "bundle ($size): over the $kind: warm-up, $RUNS runs"
        du -s "$mp" > /dev/null
        find "$mp" -ls > /dev/null
        record entries "$size" "regfs-fuse-bundle-$kind" n "$(find "$mp" -mindepth 1 | wc -l)"
        for run in $(seq "$RUNS"); do
            timed bundle_du "$size" "regfs-fuse-$kind" du -s "$mp"
            timed bundle_find "$size" "regfs-fuse-$kind" find "$mp" -ls
        done
        record bundle_rss "$size" "regfs-fuse-$kind" MB "$(rss_mb "$pid")"
        umount_view fuse "$mp" "$pid"
    done
    rm -rf "$dir" "$tarf"
}

# Read requests the disk holding $1 has completed (/proc/diskstats), or
# nothing where that disk is not listed there.
disk_reads() {
    local dev
    dev=$(basename "$(findmnt -no SOURCE -T "$1" 2>/dev/null)" 2>/dev/null) || return 0
    awk -v d="$dev" '$3 == d { print $4 }' /proc/diskstats
}

# cold_gc SIZE TARGET LOWER CMD...: a cold figure, and the disk reads it took
# (a cold GC waits on reads: their count per entry is what its cost follows).
cold_gc() {
    local size=$1 target=$2 lower=$3 r0 r1; shift 3
    r0=$(disk_reads "$lower")
    timed gc_cold "$size" "$target" "$@"
    r1=$(disk_reads "$lower")
    if [ -n "$r0" ] && [ -n "$r1" ]; then record gc_cold_reads "$size" "$target" n $((r1 - r0)); fi
}

gc_fig() {  # SIZE LOWER
    local size=$1 lower=$2 run up
    up=$RUN/$size/gc-upper
    mkdir -p "$up"
    echo '{"hide_sections": []}' > "$RUN/plain-policy.json"
    cat > "$RUN/gc-$size.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: "$lower"
EOF
    for run in $(seq "$RUNS"); do
        log "gc ($size): run $run"
        drop_caches
        cold_gc "$size" docker-registry "$lower" docker-registry garbage-collect --dry-run "$RUN/gc-$size.yml"
        timed gc_warm "$size" docker-registry docker-registry garbage-collect --dry-run "$RUN/gc-$size.yml"
        drop_caches
        cold_gc "$size" regfs-gc "$lower" "$REGFS" gc --dry-run --lower "$lower" --upper "$up"
        timed gc_warm "$size" regfs-gc "$REGFS" gc --dry-run --lower "$lower" --upper "$up"
        drop_caches
        cold_gc "$size" regfs-gc-all "$lower" "$REGFS" gc --dry-run --lower "$lower" --upper "$up" --policy "$RUN/plain-policy.json"
        timed gc_warm "$size" regfs-gc-all "$REGFS" gc --dry-run --lower "$lower" --upper "$up" --policy "$RUN/plain-policy.json"
    done
}

# ------------------------------------------------------------------ the whole release
# phase FIG-TARGET NAME T0: records the seconds since T0 as phase NAME.
phase() { record release_phase "$SIZE_FOR_PHASE" "$1:$2" s "$(awk -v a="$3" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.4f", b - a }')"; }

# The seed's scripted pipeline (what release engineers run today, as root):
# a kernel overlay of the history, every history _manifests removed through
# it, the stock registry and skopeo 4 at a time, garbage-collect, tar.
seed_pipeline() {  # DIR
    local d=$1 t t0
    mkdir -p "$d/upper" "$d/work" "$d/mnt"
    t0=$EPOCHREALTIME t=$t0
    mount -t overlay bench-seed -o "lowerdir=$H,upperdir=$d/upper,workdir=$d/work" "$d/mnt"
    MOUNTS+=("kernel:$d/mnt")
    find "$d/mnt/docker/registry/v2/repositories" -name _manifests -prune -exec rm -rf {} +
    phase seed-pipeline "mount + hide manifests" "$t"; t=$EPOCHREALTIME
    start_registry "$d/mnt" seed
    push_release r2
    stop_registry
    phase seed-pipeline push "$t"; t=$EPOCHREALTIME
    cat > "$d/gc.yml" <<EOC
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: "$d/mnt"
  delete:
    enabled: true
EOC
    docker-registry garbage-collect "$d/gc.yml" > "$d/gc.log" 2>&1
    phase seed-pipeline gc "$t"; t=$EPOCHREALTIME
    tar -cf "$d/release.tar" -C "$d/mnt" docker
    sync -f "$d/release.tar"
    phase seed-pipeline tar "$t"
    umount "$d/mnt"
    record release_tar "$SIZE_FOR_PHASE" seed-pipeline B "$(stat -c %s "$d/release.tar")"
}

# An empty store, the stock registry and skopeo, tar: what the site gets
# when nothing is reused.
clean_pipeline() {  # DIR
    local d=$1 t
    mkdir -p "$d/store/docker/registry/v2"
    t=$EPOCHREALTIME
    start_registry "$d/store" clean
    push_release r2
    stop_registry
    phase clean-store-pipeline push "$t"; t=$EPOCHREALTIME
    tar -cf "$d/release.tar" -C "$d/store" docker
    sync -f "$d/release.tar"
    phase clean-store-pipeline tar "$t"
    record release_tar "$SIZE_FOR_PHASE" clean-store-pipeline B "$(stat -c %s "$d/release.tar")"
}

# regfs release of release 2 over the history; its phases from its --json.
regfs_release_run() {  # DIR TARGET [FLAGS]
    local d=$1 target=$2; shift 2
    mkdir -p "$d"
    "$REGFS" release --history "$H" --images "$RUN/r2.list" --from "oci:$OCI" -o "$d/release.tar" \
        --workdir "$d/work" --mode kernel --json "$@" > "$d/summary.json" 2> "$d/release.log"
    sync -f "$d/release.tar"
    python3 - "$d/summary.json" "$target" "$SIZE_FOR_PHASE" >> "$RESULTS" <<'EOP'
import json, sys
s = json.load(open(sys.argv[1]))
for name, secs in s["phases"]:
    print("release_phase\t%s\t%s:%s\ts\t%.4f" % (sys.argv[3], sys.argv[2], name, secs))
EOP
    record release_tar "$SIZE_FOR_PHASE" "$target" B "$(stat -c %s "$d/release.tar")"
}

release_fig() {  # SIZE
    local size=$1 run d
    SIZE_FOR_PHASE=$size
    printf '%s:r2\n' "${OCI_REPOS[@]}" > "$RUN/r2.list"
    # What the site holds (the history), as the inventory it sends.
    "$REGFS" inventory "$H" -o "$RUN/site.inventory" > /dev/null
    for run in $(seq "$RUNS"); do
        for v in seed clean regfs delta; do
            d=$RUN/release/$v-$run
            log "release: run $run, $v"
            settle "release-$v-$run"
            case "$v" in
                seed) timed release "$size" seed-pipeline seed_pipeline "$d" ;;
                clean) timed release "$size" clean-store-pipeline clean_pipeline "$d" ;;
                regfs) timed release "$size" regfs-release regfs_release_run "$d" regfs-release ;;
                delta) timed release "$size" regfs-release-delta regfs_release_run "$d" regfs-release-delta --base "$RUN/site.inventory" ;;
            esac
        done
    done
    # Removed only after all runs: ext4 slows inode allocation next to
    # inodes deleted moments before (each run leaves ~70k whiteouts).
    rm -rf --one-file-system "$RUN/release"
}

# Release 2 through a stock registry onto: an empty store, kernel overlay
# (regfs --mode kernel), regfs FUSE (--fsync full, the default, and
# --fsync finalize), fuse-overlayfs; a fresh upper each time. Each figure
# ends with a syncfs of upper's filesystem, so every target is timed until
# its data is durable (finalize defers the registry's fsyncs to that point).
# Uppers are removed only after all runs: ext4 slows inode allocation next
# to inodes deleted moments before, which would tax whoever runs next.
push_durable() {  # REL UPPER
    push_release "$1" && sync -f "$2"
}

push_fig() {  # SIZE
    local size=$1 run v up mp root kind
    for run in $(seq "$RUNS"); do
        for v in empty kernel fuse fusefin fo; do
            log "push: run $run, ${VNAME[$v]:-empty-store}"
            up=$RUN/push/$v-$run/upper mp=$RUN/push/$v-$run/mnt
            mkdir -p "$up"
            VIEW_PID=""
            kind=$v
            case "$v" in
                empty) root=$up ;;
                fusefin) kind=fuse; mount_view fuse "push-$v-$run" "$H" "$up" "$mp" --fsync finalize; root=$mp ;;
                *) mount_view "$v" "push-$v-$run" "$H" "$up" "$mp"; root=$mp ;;
            esac
            start_registry "$root" "push-$v"
            timed push "$size" "${VNAME[$v]:-empty-store}" push_durable r2 "$up"
            stop_registry
            [ "$v" = empty ] || umount_view "$kind" "$mp" "$VIEW_PID"
            record push_upper "$size" "${VNAME[$v]:-empty-store}" MB "$(du -sm "$up" | cut -f1)"
        done
    done
    rm -rf --one-file-system "$RUN/push"
}

# settle NAME: before a figure, waits (at most 60 s) for a second in which
# the CPUs were at least 90% idle, after a sync: a figure must not pay for
# the writeback or the stragglers of the one before (seen: the push run
# right after the gc figure at 1.27x kernel overlay, alone at 1.11x). Records
# the load and how long it waited.
settle() {
    local start=$EPOCHREALTIME i busy=100 t0 i0 t1 i1
    sync
    for i in $(seq 60); do
        read -r t0 i0 < <(cpu_ticks)
        sleep 1
        read -r t1 i1 < <(cpu_ticks)
        busy=$(( t1 > t0 ? 100 * ((t1 - t0) - (i1 - i0)) / (t1 - t0) : 0 ))
        [ "$busy" -le 10 ] && break
    done
    [ "$busy" -le 10 ] || log "the machine is still ${busy}% busy after 60 s; measuring $1 anyway"
    meta "load_before_$1" "$(cut -d' ' -f1 /proc/loadavg)"
    meta "settle_before_$1" "$(awk -v a="$start" -v b="$EPOCHREALTIME" -v busy="$busy" 'BEGIN { printf "%.0f s, last second %d%% busy", b - a, busy }')"
}
# All CPU ticks so far (user to steal) and the idle ones (idle + iowait).
cpu_ticks() { awk '/^cpu / { t = 0; for (i = 2; i <= 9; i++) t += $i; print t, $5 + $6; exit }' /proc/stat; }
fig_load() { settle "$1"; }
if want traversal || want read || want export; then
    mount_views full "$H"
    want traversal && fig_load traversal && traversal full
    want read && fig_load read && read_blob full
    want export && fig_load export && export_fig full
    umount_views
fi
want gc && fig_load gc && gc_fig full "$H"
want push && fig_load push && push_fig full
want release && fig_load release && release_fig full
want bundle && fig_load bundle && bundle_fig full
if want scaling; then
    fig_load scaling
    mount_views tenth "$H10"
    traversal tenth
    umount_views
    gc_fig tenth "$H10"
    # A store with no entries: what each GC costs before the first one
    # (start-up, its binary read back after drop_caches).
    mkdir -p "$RUN/empty-store/docker/registry/v2/repositories" "$RUN/empty-store/docker/registry/v2/blobs"
    gc_fig empty "$RUN/empty-store"
fi
meta load_at_end "$(cut -d' ' -f1-3 /proc/loadavg)"

python3 "$ROOT/bench/report.py" --results "$RESULTS" --meta "$META" ${OUT:+--out "$OUT"}
