//! The child processes of a release: the stock registry and skopeo copies.
//! Every child is killed when its handle drops, so none outlives regfs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use crate::sys;

/// Finds an executable on PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").iter().flat_map(std::env::split_paths).map(|d| d.join(name)).find(|p| p.is_file())
}

/// `--registry-bin`, else `registry` or `docker-registry` from PATH.
pub fn find_registry(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if !p.is_file() {
            bail!("--registry-bin {}: no such file", p.display());
        }
        return Ok(p.to_path_buf());
    }
    on_path("registry").or_else(|| on_path("docker-registry")).ok_or_else(|| {
        anyhow!(
            "no registry binary: install docker-registry (Debian) or put `registry` on PATH, or pass --registry-bin"
        )
    })
}

/// The registry's config: storage on the mount, no blob descriptor cache
/// (it would go stale under GC), no upload purging, deletes enabled; or,
/// `read_only`, a registry that refuses every write.
fn registry_config(root: &Path, addr: SocketAddr, read_only: bool) -> String {
    let root = serde_json::to_string(&root.to_string_lossy()).unwrap_or_else(|_| "\"/\"".into());
    let maintenance = if read_only { "    readonly:\n      enabled: true\n" } else { "" };
    format!(
        "version: 0.1\nlog:\n  level: info\n  formatter: text\nstorage:\n  filesystem:\n    rootdirectory: {root}\n  \
         delete:\n    enabled: {}\n  maintenance:\n    uploadpurging:\n      enabled: false\n{maintenance}http:\n  \
         addr: {addr}\n  secret: regfs-release\n",
        !read_only
    )
}

/// Where and how a registry child serves.
#[derive(Clone, Copy, Debug, Default)]
pub struct RegistryOptions {
    /// The address to bind; `None`: a free loopback port.
    pub addr: Option<SocketAddr>,
    pub read_only: bool,
}

/// A stock registry serving the mounted view on a free loopback port.
pub struct RegistryChild {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl RegistryChild {
    pub async fn start(binary: &Path, root: &Path, workdir: &Path) -> Result<RegistryChild> {
        RegistryChild::start_with(binary, root, workdir, RegistryOptions::default()).await
    }

    pub async fn start_with(
        binary: &Path,
        root: &Path,
        workdir: &Path,
        opts: RegistryOptions,
    ) -> Result<RegistryChild> {
        let config = workdir.join("registry.yml");
        let log = workdir.join("registry.log");
        for attempt in 1..=3 {
            let addr = match opts.addr {
                Some(a) => a,
                None => {
                    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
                    l.local_addr()?
                }
            };
            std::fs::write(&config, registry_config(root, addr, opts.read_only))
                .with_context(|| format!("writing {}", config.display()))?;
            let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
            let mut cmd = Command::new(binary);
            sys::die_with_parent(&mut cmd);
            let child = cmd
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting {}", binary.display()))?;
            let mut reg = RegistryChild { child, addr, log: log.clone() };
            match reg.wait_ready(Duration::from_secs(20)).await {
                Ok(()) => return Ok(reg),
                Err(e) if opts.addr.is_some() && reg.log_text().contains("address already in use") => {
                    let _ = reg.stop().await;
                    return Err(e.context(format!("{addr} is in use by another program: pick another --addr")));
                }
                Err(e) if attempt < 3 && reg.log_text().contains("address already in use") => {
                    tracing::debug!(error = %e, "registry port taken, retrying");
                    let _ = reg.stop().await;
                }
                Err(e) => {
                    let _ = reg.stop().await;
                    return Err(e.context(format!("registry log {}:\n{}", log.display(), reg.log_tail())));
                }
            }
        }
        bail!("the registry could not bind a loopback port")
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("the registry exited ({status}) before answering");
            }
            if http_status(self.addr, "/v2/").await.is_ok_and(|s| s == 200) {
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!("the registry did not answer GET /v2/ within {} s", timeout.as_secs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Why the registry could not write the view, from its log: no space,
    /// or permission denied on a path; `None` when it logged neither.
    pub fn write_failure(&self, upper: &Path) -> Option<String> {
        write_failure_in(&self.log_text(), upper)
    }

    /// Waits until the registry exits by itself.
    pub async fn exited(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.child.wait().await
    }

    /// SIGTERM, then SIGKILL after a grace period.
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(pid) = self.child.id() {
            let _ = sys::kill(pid, libc::SIGTERM);
            if tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.is_ok() {
                return Ok(());
            }
        }
        self.child.kill().await.context("killing the registry")
    }
}

/// [`RegistryChild::write_failure`] of a log's text.
fn write_failure_in(log: &str, upper: &Path) -> Option<String> {
    let line = log.lines().find(|l| {
        l.contains("level=error") && (l.contains("no space left on device") || l.contains("permission denied"))
    })?;
    // The registry quotes the failed call: `err.detail="filesystem: mkdir /x/y: permission denied"`.
    let detail = line.split("err.detail=\"").nth(1).and_then(|d| d.split('"').next()).unwrap_or(line);
    if detail.contains("no space left on device") {
        Some(format!(
            "the registry could not write: no space left on device ({detail}): the filesystem of {} is full; free \
             space there or put the work dir on a larger one (--workdir), then run the release again with --resume",
            upper.display()
        ))
    } else {
        Some(format!(
            "the registry could not write: permission denied ({detail}): the view shows the history's owners and \
             modes, so run the release as the user who owns the history (or root)"
        ))
    }
}

/// `GET path` over HTTP/1.0; the status code.
async fn http_status(addr: SocketAddr, path: &str) -> Result<u16> {
    let mut s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await??;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
    let mut head = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut head)).await??;
    let text = String::from_utf8_lossy(&head);
    text.get(9..12).and_then(|c| c.parse().ok()).ok_or_else(|| anyhow!("bad HTTP answer {text:?}"))
}

/// skopeo messages that no retry can change: the source has no such image.
const PERMANENT: &[&str] = &[
    "no descriptor found for reference",         // oci: layout without that ref name
    "manifest unknown",                          // docker: no such tag
    "name unknown",                              // docker: no such repository
    "no such file or directory",                 // oci: no layout directory
    "server gave HTTP response to HTTPS client", // docker: plain HTTP without --src-tls-verify false
];

fn is_permanent(message: &str) -> bool {
    PERMANENT.iter().any(|m| message.contains(m))
}

/// How one image copy ended.
pub enum CopyOutcome {
    Copied { attempts: u32, seconds: f64 },
    Failed { attempts: u32, message: String },
}

/// skopeo, as the release runs it.
#[derive(Clone)]
pub struct Skopeo {
    binary: PathBuf,
    src_tls_verify: bool,
    /// `--registries.d` inside a user namespace, where skopeo believes it is
    /// root and would read root's lookaside signature store
    /// (`/var/lib/containers/sigstore`: permission denied): one naming a
    /// store of the user's own.
    registries_d: Option<PathBuf>,
}

/// Runs skopeo with `args` (no stdin; killed with regfs); its output.
pub async fn run_skopeo(binary: &Path, args: &[String]) -> Result<std::process::Output> {
    let mut cmd = Command::new(binary);
    sys::die_with_parent(&mut cmd);
    cmd.args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("running {}", binary.display()))
}

/// skopeo from PATH.
pub fn find_skopeo() -> Result<PathBuf> {
    on_path("skopeo").ok_or_else(|| anyhow!("skopeo not found on PATH: install it (Debian: apt-get install skopeo)"))
}

impl Skopeo {
    pub fn find(src_tls_verify: bool) -> Result<Skopeo> {
        let registries_d = if sys::in_user_namespace() && sys::geteuid() == 0 {
            // Lookaside signatures then live in a store of this user's own.
            let run = crate::mount::runtime_dir()?;
            let (d, store) = (run.join("registries.d"), run.join("sigstore"));
            for dir in [&d, &store] {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            let config = format!("default-docker:\n  sigstore: file://{}\n", store.display());
            std::fs::write(d.join("default.yaml"), config).with_context(|| format!("writing {}", d.display()))?;
            tracing::info!(dir = %d.display(), "in a user namespace: skopeo's lookaside signatures in the user's own store");
            Some(d)
        } else {
            None
        };
        Ok(Skopeo { binary: find_skopeo()?, src_tls_verify, registries_d })
    }

    /// The global options every run takes.
    fn global_args(&self) -> Vec<String> {
        let mut a = vec!["--insecure-policy".to_string()];
        if let Some(d) = &self.registries_d {
            a.extend(["--registries.d".into(), d.display().to_string()]);
        }
        a
    }

    /// `skopeo inspect --raw` of an image: its manifest as the source gives it.
    pub async fn inspect(&self, reference: &str) -> Result<Vec<u8>> {
        let mut args = self.global_args();
        args.extend(["inspect".into(), "--raw".into()]);
        if reference.starts_with("docker://") {
            args.push(format!("--tls-verify={}", self.src_tls_verify));
        }
        args.push(reference.into());
        let out = run_skopeo(&self.binary, &args).await?;
        if out.status.success() {
            return Ok(out.stdout);
        }
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim())
    }

    /// One `skopeo copy`, retried up to `retries` more times.
    pub async fn copy_with_retries(&self, src: &str, dst: &str, retries: u32) -> CopyOutcome {
        let start = Instant::now();
        let mut last = String::new();
        for attempt in 1..=retries + 1 {
            match self.copy(src, dst).await {
                Ok(()) => return CopyOutcome::Copied { attempts: attempt, seconds: start.elapsed().as_secs_f64() },
                Err(e) => {
                    last = format!("{e:#}");
                    tracing::warn!(src, attempt, error = %last, "image copy failed");
                    if is_permanent(&last) {
                        return CopyOutcome::Failed { attempts: attempt, message: last };
                    }
                    if attempt <= retries {
                        tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
                    }
                }
            }
        }
        CopyOutcome::Failed { attempts: retries + 1, message: last }
    }

    async fn copy(&self, src: &str, dst: &str) -> Result<()> {
        // --preserve-digests: the release must hold the very bytes that were
        // built (skopeo would otherwise recompress uncompressed layers).
        let mut args = self.global_args();
        args.extend(["copy", "--all", "--preserve-digests", "--dest-tls-verify=false"].map(String::from));
        if src.starts_with("docker://") {
            args.push(format!("--src-tls-verify={}", self.src_tls_verify));
        }
        args.extend([src.to_string(), dst.to_string()]);
        let out = run_skopeo(&self.binary, &args).await?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!("skopeo copy {src} {dst}: {}: {}", out.status, stderr.trim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registry_log_tells_why_a_write_failed() {
        let full = r#"time="2026-12-03T14:00:00Z" level=error msg="response completed with error" err.code=unknown err.detail="filesystem: write /mnt/docker/registry/v2/repositories/app/_uploads/u/data: no space left on device" err.message="unknown error""#;
        let why = write_failure_in(full, Path::new("/w/upper")).unwrap();
        assert!(
            why.contains("no space left on device") && why.contains("/w/upper") && why.contains("--resume"),
            "{why}"
        );
        let denied = r#"level=error msg="response completed with error" err.detail="filesystem: mkdir /mnt/docker/registry/v2/blobs/sha256/ab: permission denied""#;
        let why = write_failure_in(denied, Path::new("/w/upper")).unwrap();
        assert!(why.contains("permission denied (filesystem: mkdir /mnt/docker/registry/v2/blobs/sha256/ab"), "{why}");
        assert!(why.contains("owns the history"), "{why}");
        assert_eq!(write_failure_in("level=info msg=ok\nlevel=error msg=\"blob unknown\"", Path::new("/u")), None);
    }
}
