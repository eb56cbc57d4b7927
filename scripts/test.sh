#!/usr/bin/env bash
# The whole test suite: unit and integration tests (real FUSE mounts, kernel
# overlay mounts, the real docker-registry and skopeo), then, when run as root,
# the FUSE suite again as an unprivileged user through fusermount3; last, the
# demo (scripts/demo.sh: the main job, regfs release, end to end).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --locked --all-targets -- --test-threads="${REGFS_TEST_THREADS:-2}"

if [ "$(id -u)" = 0 ]; then
    # The view suite again, served by the kernel (policy materialised as whiteouts),
    # the release suite with regfs release mounting the kernel overlay, and the
    # concurrency suite with kernel mounts (refusals with a kernel mount first).
    REGFS_TEST_MODE=kernel cargo test --locked --test fuse_view --test export --test release --test referrers --test concurrency -- --test-threads=2
    scripts/test-unprivileged.sh
else
    echo "test: not root: the kernel overlay tests ran as this user and the unprivileged pass is this run"
fi

# The demo: root mounts the kernel overlay, anyone else FUSE through fusermount3.
scripts/demo.sh
