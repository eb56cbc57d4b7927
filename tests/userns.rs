//! Kernel mode inside a user namespace (`unshare -Urm`): overlay with
//! `userxattr`, policy materialised as whiteouts an ordinary user may write.
//! scripts/test-unprivileged.sh runs this as a non-root user; it also runs
//! as root. It fails (never skips) where the kernel refuses user namespaces.

mod support;

use std::path::Path;
use std::process::Command;

use support::mount::{Mount, regfs_bin};
use support::tree::{self, RepoSpec};

const REPOS: &[RepoSpec] = &[RepoSpec { name: "app", tags: &["1.0"] }, RepoSpec { name: "team/web", tags: &["2024"] }];

/// Runs `script` in a new user and mount namespace, `$REGFS` set.
fn in_userns(script: &str, runtime: &Path) -> String {
    let out = Command::new("unshare")
        .args(["-Urm", "sh", "-ec", script])
        .env("REGFS", regfs_bin())
        .env("XDG_RUNTIME_DIR", runtime)
        .output()
        .expect("running unshare (util-linux)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "unshare -Urm failed (does the kernel allow user namespaces?):\n{text}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn kernel_mode_in_a_user_namespace_shows_the_curated_view() {
    let tmp = tempfile::tempdir().unwrap();
    let (lower, upper, mnt, run) =
        (tmp.path().join("history"), tmp.path().join("upper"), tmp.path().join("mnt"), tmp.path().join("run"));
    tree::write_store(&lower, REPOS, "r1");
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::create_dir_all(&run).unwrap();
    let before = tree::snapshot(&lower);
    let script = format!(
        "\"$REGFS\" mount --mode kernel --lower {l} --upper {u} {m}\n\
         grep -q ' {m} .* - overlay .*userxattr' /proc/self/mountinfo || {{ echo 'no userxattr overlay' >&2; exit 1; }}\n\
         (cd {m} && find . | sort)\n\
         mkdir -p {m}/docker/registry/v2/repositories/app/_manifests/tags/2.0\n\
         \"$REGFS\" umount {m}",
        l = lower.display(),
        u = upper.display(),
        m = mnt.display()
    );
    let listing = in_userns(&script, &run);
    assert!(listing.contains("./docker/registry/v2/repositories/app/_layers\n"), "{listing}");
    assert!(!listing.contains("_manifests") && !listing.contains("_uploads"), "{listing}");
    // The marks are in the user.* namespace, so a FUSE mount by the same
    // user shows the same curated view of this upper.
    let manifests = upper.join("docker/registry/v2/repositories/app/_manifests");
    let opaque = regfs::sys::lgetxattr(&manifests, "user.overlay.opaque".as_ref()).unwrap();
    assert_eq!(opaque.as_deref(), Some(&b"y"[..]), "recreated _manifests is opaque for userxattr overlay");
    let m = Mount::fuse(&[&lower], &upper, &mnt, &["--mode", "fuse"]);
    let tags = mnt.join("docker/registry/v2/repositories/app/_manifests/tags");
    let names: Vec<_> = std::fs::read_dir(&tags).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["2.0"]);
    m.umount();
    assert_eq!(tree::snapshot(&lower), before, "the history lower was modified");
}
