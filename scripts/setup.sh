#!/usr/bin/env bash
# Everything regfs needs on a fresh Debian machine: the system packages its
# tests drive for real (FUSE, the stock registry, skopeo), then the release
# build. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

packages=(fuse3 docker-registry skopeo util-linux passwd fuse-overlayfs python3-minimal)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Unprivileged FUSE mounts go through the setuid fusermount3 and need a
# world-usable /dev/fuse, as on a stock desktop distribution.
if [ -e /dev/fuse ]; then
    $SUDO chmod 0666 /dev/fuse
else
    echo "setup: /dev/fuse is missing: FUSE mounts will fail (run the container with --device /dev/fuse)" >&2
fi

# The ordinary user the tests run regfs as (the unprivileged pass, and the
# second-user cases beside the kernel): fusermount3 wants a user with a name.
id regfs-ci >/dev/null 2>&1 || $SUDO useradd --create-home --shell /bin/sh regfs-ci

if ! command -v cargo >/dev/null; then
    echo "setup: cargo not found: install a Rust toolchain (rustup) first" >&2
    exit 1
fi
cargo build --release --locked
echo "setup: done; binary at target/release/regfs"
