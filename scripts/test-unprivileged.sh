#!/usr/bin/env bash
# Runs every suite that needs no root as an ordinary user (mounts through
# fusermount3, whiteouts and opaque markers in the user.overlay.* namespace,
# kernel mode only inside a user namespace). Needs root to create the user;
# the test binaries are built as the caller and copied where the user can
# run them. Left out: kernel_compare and model (mount -t overlay throughout);
# from registry_e2e, the test whose reference store is a kernel overlay mount.
set -euo pipefail
cd "$(dirname "$0")/.."

user="${REGFS_TEST_USER:-regfs-ci}"
suites=(fuse_view userns export gc harness_smoke release referrers crash concurrency registry_e2e bad_input properties delivery view_model)
# Tests of a suite that need root, by exact name (several: space-separated).
declare -A root_only=([registry_e2e]=release_push_on_regfs_reuses_history_like_kernel_overlay
    [bad_input]=kernel_mode_mounts_over_a_symlinked_history_repository
    [release]=a_push_that_cannot_fit_is_refused_before_anything_is_mounted)

id "$user" >/dev/null 2>&1 || useradd --create-home --shell /bin/sh "$user"
chmod 0666 /dev/fuse

stage="$(mktemp -d /tmp/regfs-unpriv.XXXXXX)"
trap 'rm -rf "$stage"' EXIT
cargo build --locked
cp target/debug/regfs "$stage/regfs"
for suite in "${suites[@]}"; do
    exe="$(cargo test --locked --no-run --test "$suite" --message-format=json 2>/dev/null \
        | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])')"
    [ -n "$exe" ] || { echo "test-unprivileged: no test binary for $suite" >&2; exit 1; }
    cp "$exe" "$stage/$suite"
done
mkdir -p "$stage/tmp"
chmod -R a+rX "$stage"
chown "$user" "$stage/tmp"

for suite in "${suites[@]}"; do
    echo "test-unprivileged: $suite as $user"
    skips=()
    for name in ${root_only[$suite]:-}; do skips+=(--skip "$name"); done
    [ "${#skips[@]}" -gt 0 ] && skips=(--exact "${skips[@]}")
    runuser -u "$user" -- env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="$stage/tmp" TMPDIR="$stage/tmp" \
        XDG_RUNTIME_DIR="$stage/tmp" REGFS_BIN="$stage/regfs" \
        "$stage/$suite" --test-threads=2 "${skips[@]}"
done
