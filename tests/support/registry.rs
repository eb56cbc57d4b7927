//! Drives the real `docker-registry` (distribution 2.8.2) and `skopeo` (1.9.3).
//!
//! Both tools are hard requirements: when one is missing, tests FAIL with a message
//! saying so (they are never skipped).
//!
//! Facts this module relies on (checked against the Debian packages):
//! - A registry config without a `storage.cache` section runs with no blob descriptor
//!   cache, so blobs vanishing or appearing under it are seen at once.
//! - `skopeo copy` gzips uncompressed layers when pushing unless `--preserve-digests`
//!   is given; with it, blobs and manifests keep their digests in both directions.
//! - Without a terminal skopeo prints `Copying blob sha256:<hex>` for every blob, reused
//!   or not; only the `--debug` log tells them apart (see [`skipped_blobs`]).
//! - skopeo keeps a persistent blob-info cache (`/var/lib/containers/cache` as root) of
//!   where it saw each digest; a blob missing from the target repo may be mounted
//!   (`POST …/uploads/?mount=…&from=<other repo>`) instead of uploaded, and is then
//!   reported as skipped. A mount that fails falls back to a normal upload.
//!   `release::SkopeoCache` gives a test a private cache (via [`skopeo_copy_env`]).

use crate::support::oci::ImageRef;
use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a registry may take to answer `GET /v2/`.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a registry may take to exit after SIGTERM before it gets SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Timeout of one HTTP exchange with the registry.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Passed to skopeo's `--command-timeout`, so a wedged copy fails instead of hanging.
const SKOPEO_TIMEOUT: &str = "180s";
/// Registry log lines shown when a test panics while the registry runs.
const LOG_TAIL_LINES: usize = 30;
/// Attempts at starting a registry, in case another process grabs the free port first.
const START_ATTEMPTS: usize = 3;

/// Manifest media types a client accepts (OCI and Docker schema 2, single and list).
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

/// Absolute path of `tool` found on `PATH`; panics (test failure, not skip) if absent.
pub fn require_tool(tool: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{tool}` is not on PATH ({:?}); these integration tests need it \
                 (Debian: apt-get install docker-registry skopeo) and are never skipped",
                std::env::var_os("PATH").unwrap_or_default()
            )
        })
}

/// A `docker-registry serve` child on 127.0.0.1, stopped (SIGTERM, then SIGKILL) on drop.
pub struct Registry {
    child: Option<Child>,
    addr: SocketAddr,
    root: PathBuf,
    /// Holds `config.yml` and `registry.log`.
    workdir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry storing under `rootdirectory` and waits until `GET /v2/`
    /// answers 200. Panics with the registry log if it does not come up in 15 s.
    pub fn start(rootdirectory: &Path) -> Registry {
        let binary = require_tool("docker-registry");
        for attempt in 1..=START_ATTEMPTS {
            let addr = free_loopback_addr();
            let workdir = tempfile::Builder::new()
                .prefix("regfs-registry-")
                .tempdir()
                .unwrap_or_else(|e| panic!("creating a registry work dir: {e}"));
            let mut registry = Registry { child: None, addr, root: rootdirectory.to_path_buf(), workdir };
            registry.spawn(&binary);
            match registry.wait_ready() {
                Ok(()) => return registry,
                // Another process took the port between our probe and the registry's bind.
                Err(log) if attempt < START_ATTEMPTS && log.contains("address already in use") => {}
                Err(log) => {
                    // Dropped first: the log is in the message, Drop need not print it.
                    drop(registry);
                    panic!("docker-registry on {addr} (root {}) did not come up: {log}", rootdirectory.display())
                }
            }
        }
        unreachable!("the last start attempt either returns or panics")
    }

    /// A registry another process serves at `addr`, waited for until
    /// `GET /v2/` answers 200 (15 s at most); nothing here starts or stops
    /// it. `None` when it does not answer.
    pub fn served_at(addr: SocketAddr) -> Option<Registry> {
        let workdir = tempfile::Builder::new().prefix("regfs-registry-").tempdir().expect("a work dir");
        let registry = Registry { child: None, addr, root: PathBuf::from("(another process)"), workdir };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if http_request(addr, "GET", "/v2/", &[]).is_ok_and(|r| r.status == 200) {
                return Some(registry);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// A free loopback address (for a registry another process starts).
    pub fn free_addr() -> SocketAddr {
        free_loopback_addr()
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:<port>`, the host part of `docker://` references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `docker://127.0.0.1:<port>/<repo>:<tag>`.
    pub fn reference(&self, repo: &str, tag: &str) -> String {
        format!("docker://{}/{repo}:{tag}", self.addr)
    }

    /// The storage root directory given to [`Registry::start`].
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The config file the registry runs with (usable for `docker-registry garbage-collect`).
    pub fn config_path(&self) -> PathBuf {
        self.workdir.path().join("config.yml")
    }

    /// Everything the registry has logged so far (stdout and stderr).
    pub fn log(&self) -> String {
        let path = self.log_path();
        fs::read(&path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()))
    }

    /// Stops the registry and waits for it to exit.
    pub fn stop(mut self) {
        self.shutdown();
    }

    /// One HTTP/1.0 exchange with the registry; panics (with the registry log) on an
    /// I/O error.
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
        http_request(self.addr, method, path, headers)
            .unwrap_or_else(|e| panic!("{method} http://{}{path}: {e}\nregistry log:\n{}", self.addr, self.log()))
    }

    fn log_path(&self) -> PathBuf {
        self.workdir.path().join("registry.log")
    }

    /// Writes the config and spawns `docker-registry serve`, output to the log file.
    fn spawn(&mut self, binary: &Path) {
        let config = self.config_path();
        fs::write(&config, config_yaml(&self.root, self.addr))
            .unwrap_or_else(|e| panic!("writing {}: {e}", config.display()));
        let log =
            File::create(self.log_path()).unwrap_or_else(|e| panic!("creating {}: {e}", self.log_path().display()));
        let log_err = log.try_clone().unwrap_or_else(|e| panic!("duplicating log handle: {e}"));
        let child = Command::new(binary)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {} serve {}: {e}", binary.display(), config.display()));
        self.child = Some(child);
    }

    /// Polls `GET /v2/` until 200; on exit or timeout returns the log (child reaped).
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let child = self.child.as_mut().expect("wait_ready after spawn");
            if let Some(status) = child.try_wait().expect("polling docker-registry") {
                self.child = None;
                return Err(format!("exited with {status} before answering; log:\n{}", self.log()));
            }
            if matches!(http_request(self.addr, "GET", "/v2/", &[]), Ok(r) if r.status == 200) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.shutdown();
                return Err(format!("no 200 on GET /v2/ within {STARTUP_TIMEOUT:?}; log:\n{}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM exactly our child, SIGKILL it after [`STOP_GRACE`], and reap it.
    fn shutdown(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // The pid of a child not yet reaped cannot have been recycled.
        let _ = regfs::sys::kill(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => break,
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.shutdown();
        if std::thread::panicking() {
            // Keep config and full log for the post-mortem; show the tail.
            self.workdir.disable_cleanup(true);
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
            eprintln!(
                "--- docker-registry {} log, kept in {} (last {LOG_TAIL_LINES} lines) ---\n{tail}",
                self.addr,
                self.log_path().display()
            );
        }
    }
}

/// A loopback address with a port that was free a moment ago.
fn free_loopback_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    listener.local_addr().expect("local_addr of a bound listener")
}

/// Registry config: filesystem storage at `root`, deletes enabled, no blob descriptor
/// cache (no `storage.cache`), no upload purging, info log in text format.
fn config_yaml(root: &Path, addr: SocketAddr) -> String {
    // A JSON string is a valid YAML double-quoted scalar: quotes any path safely.
    let root = serde_json::to_string(&root.to_string_lossy()).expect("serialising a path");
    format!(
        "version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {addr}
  secret: regfs-integration-tests
"
    )
}

/// A parsed HTTP response.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lower-cased, in order of arrival.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.0 request (so the server closes the connection after a body that is
/// never chunked). `path` includes any query string.
pub fn http_request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> io::Result<HttpResponse> {
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> io::Result<HttpResponse> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("HTTP response: {what}"));
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| bad("non-UTF-8 headers"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| bad("malformed status line"))?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(HttpResponse { status, headers, body: raw[split + 4..].to_vec() })
}

/// All repositories, following `GET /v2/_catalog` pagination; panics on a non-200.
pub fn catalog(registry: &Registry) -> Vec<String> {
    let mut repos = Vec::new();
    let mut path = "/v2/_catalog?n=1000".to_string();
    loop {
        let response = registry.request("GET", &path, &[]);
        assert_eq!(response.status, 200, "GET {path}: {}", String::from_utf8_lossy(&response.body));
        let body: serde_json::Value = serde_json::from_slice(&response.body)
            .unwrap_or_else(|e| panic!("GET {path}: bad JSON ({e}): {}", String::from_utf8_lossy(&response.body)));
        let page = body["repositories"].as_array().cloned().unwrap_or_default();
        repos.extend(page.iter().filter_map(|r| r.as_str().map(str::to_string)));
        // `Link: </v2/_catalog?last=…&n=…>; rel="next"` when there are more.
        match response.header("link").and_then(|l| l.split_once('<')).and_then(|(_, r)| r.split_once('>')) {
            Some((next, _)) => path = next.to_string(),
            None => return repos,
        }
    }
}

/// `Docker-Content-Digest` of `repo:reference` (tag or digest), accepting OCI and Docker
/// manifests and lists; `None` on 404, panics on any other non-200.
pub fn manifest_digest(registry: &Registry, repo: &str, reference: &str) -> Option<String> {
    let path = format!("/v2/{repo}/manifests/{reference}");
    let response = registry.request("HEAD", &path, &[("Accept", MANIFEST_ACCEPT)]);
    match response.status {
        200 => Some(
            response
                .header("docker-content-digest")
                .unwrap_or_else(|| panic!("HEAD {path}: 200 without Docker-Content-Digest"))
                .to_string(),
        ),
        404 => None,
        status => panic!("HEAD {path}: unexpected status {status}"),
    }
}

/// Whether `HEAD /v2/<repo>/blobs/<digest>` answers 200 (the registry would let a
/// client skip uploading it); panics on statuses other than 200/404.
pub fn blob_exists(registry: &Registry, repo: &str, digest: &str) -> bool {
    let path = format!("/v2/{repo}/blobs/{digest}");
    match registry.request("HEAD", &path, &[]).status {
        200 => true,
        404 => false,
        status => panic!("HEAD {path}: unexpected status {status}"),
    }
}

/// A finished `skopeo copy`. Its `Debug` is human-readable, so `.unwrap()` on a failed
/// copy shows the command and all output.
pub struct CopyOutput {
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    /// Includes the `--debug` log.
    pub stderr: String,
    pub elapsed: Duration,
}

impl CopyOutput {
    /// stdout followed by stderr.
    pub fn text(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    /// `(skipped, copied)` blob counts, see [`count_skipped`].
    pub fn count_skipped(&self) -> (usize, usize) {
        count_skipped(&self.text())
    }

    /// Blobs skopeo reused at the destination, see [`skipped_blobs`].
    pub fn skipped_blobs(&self) -> BTreeSet<String> {
        skipped_blobs(&self.text())
    }

    /// Blobs whose bytes were uploaded to a registry, see [`uploaded_blobs`].
    pub fn uploaded_blobs(&self) -> BTreeSet<String> {
        uploaded_blobs(&self.text())
    }
}

impl fmt::Display for CopyOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` → {} in {:.2?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command, self.status, self.elapsed, self.stdout, self.stderr
        )
    }
}

impl fmt::Debug for CopyOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Runs `skopeo --insecure-policy --debug --command-timeout … copy --preserve-digests
/// [TLS off for docker:// ends] EXTRA… SRC DST`. `Err` when skopeo exits non-zero.
/// `--preserve-digests` keeps uncompressed layers as they are (without it skopeo
/// gzips them on push); `--debug` is what lets [`count_skipped`] tell reused blobs apart.
pub fn skopeo_copy(src: &str, dst: &str, extra_args: &[&str]) -> Result<CopyOutput, CopyOutput> {
    skopeo_copy_env(src, dst, extra_args, &[])
}

/// [`skopeo_copy`] with extra environment variables for skopeo (see
/// `release::SkopeoCache` for a private blob-info cache).
pub fn skopeo_copy_env(
    src: &str,
    dst: &str,
    extra_args: &[&str],
    env: &[(&str, &OsStr)],
) -> Result<CopyOutput, CopyOutput> {
    let skopeo = require_tool("skopeo");
    let mut args =
        vec!["--insecure-policy", "--debug", "--command-timeout", SKOPEO_TIMEOUT, "copy", "--preserve-digests"];
    if src.starts_with("docker://") {
        args.push("--src-tls-verify=false");
    }
    if dst.starts_with("docker://") {
        args.push("--dest-tls-verify=false");
    }
    args.extend_from_slice(extra_args);
    args.extend([src, dst]);
    let command = format!("skopeo {}", args.join(" "));
    let started = Instant::now();
    let output = Command::new(&skopeo)
        .args(&args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running `{command}`: {e}"));
    let result = CopyOutput {
        command,
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        elapsed: started.elapsed(),
    };
    if result.status.success() { Ok(result) } else { Err(result) }
}

/// Pushes `oci:<layout_dir>:<layout_tag>` to `registry` as `repo:tag`, all platforms
/// of an index included (`--all`).
pub fn push_layout(
    layout_dir: &Path,
    layout_tag: &str,
    registry: &Registry,
    repo: &str,
    tag: &str,
) -> Result<CopyOutput, CopyOutput> {
    let src = format!("oci:{}:{layout_tag}", layout_dir.display());
    skopeo_copy(&src, &registry.reference(repo, tag), &["--all"])
}

/// Pushes a written image under its own repo and tag.
pub fn push_image(registry: &Registry, image: &ImageRef) -> Result<CopyOutput, CopyOutput> {
    push_layout(&image.layout_dir, &image.tag, registry, &image.repo, &image.tag)
}

/// Pulls `repo:tag` (all platforms) into the OCI layout `out_dir`, named `tag`,
/// layers kept uncompressed and digests preserved.
pub fn pull_to_layout(registry: &Registry, repo: &str, tag: &str, out_dir: &Path) -> Result<CopyOutput, CopyOutput> {
    if let Some(parent) = out_dir.parent() {
        // skopeo creates the layout directory but not its parents.
        fs::create_dir_all(parent).unwrap_or_else(|e| panic!("creating {}: {e}", parent.display()));
    }
    let dst = format!("oci:{}:{tag}", out_dir.display());
    skopeo_copy(&registry.reference(repo, tag), &dst, &["--all", "--dest-oci-accept-uncompressed-layers"])
}

/// The digest after `marker` on each line of `text` that contains it.
fn digests_after<'a>(text: &'a str, marker: &'a str) -> impl Iterator<Item = String> + 'a {
    text.lines().filter_map(move |line| {
        let rest = &line[line.find(marker)? + marker.len()..];
        rest.split_whitespace().next().map(str::to_string)
    })
}

/// Every blob skopeo handled: the `Copying blob sha256:…` / `Copying config sha256:…`
/// lines of stdout (printed whether or not the blob is then reused).
pub fn listed_blobs(output: &str) -> BTreeSet<String> {
    digests_after(output, "Copying blob ").chain(digests_after(output, "Copying config ")).collect()
}

/// Blobs skopeo reused because the destination already had them (or mounted them
/// from another repo): the `--debug` lines `Skipping blob sha256:… (already present)`.
/// This is what a terminal shows as "skipped: already exists". Configs never appear
/// here: skopeo 1.9.3 HEADs them and silently skips the upload when present.
pub fn skipped_blobs(output: &str) -> BTreeSet<String> {
    digests_after(output, "Skipping blob ").collect()
}

/// Blobs whose bytes were pushed to a registry, configs included: the `--debug` lines
/// `Upload of layer sha256:… complete` (docker:// destinations only).
pub fn uploaded_blobs(output: &str) -> BTreeSet<String> {
    digests_after(output, "Upload of layer ").collect()
}

/// `(skipped, copied)` over the blobs listed by a `skopeo --debug copy` run (stdout
/// and stderr together): skipped = reused at the destination (see [`skipped_blobs`]),
/// copied = the other listed blobs (configs always count as copied, as skopeo reports).
pub fn count_skipped(output: &str) -> (usize, usize) {
    let listed = listed_blobs(output);
    let skipped = skipped_blobs(output);
    let skipped_count = listed.intersection(&skipped).count();
    (skipped_count, listed.len() - skipped_count)
}
