//! The registry a release is pushed into, asked over the distribution API
//! whether it holds a blob or a manifest (HEAD), with the conventions skopeo
//! follows: HTTPS, or without `--dest-tls-verify` also unverified TLS and
//! plain HTTP; credentials from `--dest-creds` or an auth file; bearer
//! tokens fetched from the realm a 401 names.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;

use crate::layout::Digest;

/// What a HEAD asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Blob,
    Manifest,
}

/// The manifest types a HEAD accepts (every kind a release holds).
const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v1+prettyjws";

/// `docker://HOST[/PREFIX]`, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetRef {
    pub host: String,
    /// Repository path prefix (no leading or trailing `/`); may be empty.
    pub prefix: String,
}

impl TargetRef {
    pub fn parse(s: &str) -> Result<TargetRef> {
        let rest = s.strip_prefix("docker://").ok_or_else(|| {
            anyhow!(
                "{s}: a target is docker://HOST[:PORT][/PREFIX] (the registry, and a path every repository goes under)"
            )
        })?;
        let (host, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_matches('/');
        if host.is_empty() || host.contains(['@', ' ']) {
            bail!("{s}: no registry host after docker://");
        }
        if prefix.contains(':') || prefix.contains('@') {
            bail!("{s}: the target names a registry and a path, not an image: leave out the tag or digest");
        }
        if !prefix.is_empty() && !crate::layout::valid_repo_name(prefix) {
            bail!("{s}: {prefix:?} is not a valid repository path prefix (lowercase names separated by /)");
        }
        Ok(TargetRef { host: host.to_string(), prefix: prefix.to_string() })
    }

    /// The target repository an image of repository `repo` goes to.
    pub fn repo(&self, repo: &str) -> String {
        if self.prefix.is_empty() { repo.to_string() } else { format!("{}/{repo}", self.prefix) }
    }

    /// `docker://HOST/PREFIX/REPO:TAG`.
    pub fn reference(&self, repo: &str, tag: &str) -> String {
        format!("docker://{}/{}:{tag}", self.host, self.repo(repo))
    }
}

/// How to reach the target.
#[derive(Clone, Debug, Default)]
pub struct Access {
    pub tls_verify: bool,
    /// `USER:PASSWORD`.
    pub creds: Option<String>,
    pub authfile: Option<PathBuf>,
}

pub struct Target {
    target: TargetRef,
    agent: ureq::Agent,
    /// `https` or `http`, found on the first request.
    scheme: Mutex<Option<&'static str>>,
    tls_verify: bool,
    basic: Option<String>,
    /// Bearer token per repository scope.
    tokens: Mutex<HashMap<String, String>>,
}

impl Target {
    pub fn new(target: &TargetRef, access: &Access) -> Result<Target> {
        // The system's certificate store, as skopeo uses: a site's registry
        // often has a certificate from its own CA.
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::PlatformVerifier)
            .disable_verification(!access.tls_verify)
            .build();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .tls_config(tls)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let basic = match &access.creds {
            Some(c) => {
                if !c.contains(':') {
                    bail!("--dest-creds: give USER:PASSWORD");
                }
                Some(base64::engine::general_purpose::STANDARD.encode(c))
            }
            None => auth_from_files(&target.host, access.authfile.as_deref())?,
        };
        Ok(Target {
            target: target.clone(),
            agent,
            scheme: Mutex::new(None),
            tls_verify: access.tls_verify,
            basic,
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// Whether the target's repository for `repo` holds the blob `digest`.
    pub fn has_blob(&self, repo: &str, digest: &Digest) -> Result<bool> {
        Ok(self.fetch(repo, Kind::Blob, digest, false)?.is_some())
    }

    /// A manifest or a small blob (a config) of the target's repository for
    /// `repo`, checked against its digest; `None` when the target lacks it.
    pub fn document(&self, repo: &str, kind: Kind, digest: &Digest) -> Result<Option<Vec<u8>>> {
        let Some(bytes) = self.fetch(repo, kind, digest, true)? else { return Ok(None) };
        if Digest::of(&bytes) != *digest {
            bail!("{}: {digest} of {repo} does not hash to its digest", self.target.host);
        }
        Ok(Some(bytes))
    }

    /// HEAD (or, with `body`, GET) of a blob or manifest; `None` on 404.
    fn fetch(&self, repo: &str, kind: Kind, digest: &Digest, body: bool) -> Result<Option<Vec<u8>>> {
        let name = self.target.repo(repo);
        let what = if kind == Kind::Blob { "blobs" } else { "manifests" };
        let path = format!("/v2/{name}/{what}/{digest}");
        let send = |scheme: &str, auth: Option<&str>| {
            let url = format!("{scheme}://{}{path}", self.target.host);
            let (mut get, mut head) = (self.agent.get(&url), self.agent.head(&url));
            if kind == Kind::Manifest {
                (get, head) = (get.header("Accept", MANIFEST_TYPES), head.header("Accept", MANIFEST_TYPES));
            }
            if let Some(a) = auth {
                (get, head) = (get.header("Authorization", a), head.header("Authorization", a));
            }
            if body { get.call() } else { head.call() }
        };
        let shown = || format!("{}{path}", self.target.host);
        let scheme = self.scheme_for(|scheme| send(scheme, None).map(|_| ()))?;
        let auth = self.tokens.lock().unwrap_or_else(|p| p.into_inner()).get(&name).cloned();
        let mut resp = send(scheme, auth.as_deref()).with_context(shown)?;
        if resp.status().as_u16() == 401 {
            let challenge =
                resp.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
            let auth = self.authorize(&name, &challenge)?;
            self.tokens.lock().unwrap_or_else(|p| p.into_inner()).insert(name.clone(), auth.clone());
            resp = send(scheme, Some(&auth)).with_context(shown)?;
        }
        match resp.status().as_u16() {
            200 if body => {
                let bytes = resp
                    .body_mut()
                    .with_config()
                    .limit(crate::gc::manifest::MAX_MANIFEST_BYTES)
                    .read_to_vec()
                    .with_context(shown)?;
                Ok(Some(bytes))
            }
            200 => Ok(Some(Vec::new())),
            404 => Ok(None),
            s @ (401 | 403) => bail!(
                "{}: {s}: not allowed (give --dest-creds USER:PASSWORD or an auth file with --dest-authfile)",
                shown()
            ),
            s => bail!("{}: the registry answered {s}", shown()),
        }
    }

    /// `https`, or (without TLS verification) `http` where HTTPS cannot connect.
    fn scheme_for(&self, probe: impl Fn(&str) -> Result<(), ureq::Error>) -> Result<&'static str> {
        let mut known = self.scheme.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = *known {
            return Ok(s);
        }
        let scheme = match probe("https") {
            Ok(()) => "https",
            Err(e) if !self.tls_verify => {
                tracing::debug!(error = %e, "HTTPS failed; trying HTTP (no --dest-tls-verify)");
                probe("http")
                    .map_err(|e2| anyhow!("{}: neither HTTPS ({e}) nor HTTP ({e2}) answers", self.target.host))?;
                "http"
            }
            Err(e) => bail!(
                "{}: HTTPS failed ({e}); for a registry without TLS pass --dest-tls-verify=false",
                self.target.host
            ),
        };
        *known = Some(scheme);
        Ok(scheme)
    }

    /// The Authorization header a 401's challenge asks for.
    fn authorize(&self, repo: &str, challenge: &str) -> Result<String> {
        let (scheme, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            let b = self.basic.as_ref().ok_or_else(|| {
                anyhow!("{} wants credentials: give --dest-creds USER:PASSWORD or --dest-authfile", self.target.host)
            })?;
            return Ok(format!("Basic {b}"));
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            bail!("{}: unknown authentication challenge {challenge:?}", self.target.host);
        }
        let params = challenge_params(params);
        let realm =
            params.get("realm").ok_or_else(|| anyhow!("{}: a bearer challenge without realm", self.target.host))?;
        let mut req = self.agent.get(realm.as_str()).query("scope", format!("repository:{repo}:pull"));
        if let Some(service) = params.get("service") {
            req = req.query("service", service);
        }
        if let Some(b) = &self.basic {
            req = req.header("Authorization", format!("Basic {b}"));
        }
        let mut resp = req.call().with_context(|| format!("getting a token from {realm}"))?;
        if resp.status().as_u16() != 200 {
            bail!("{realm}: {} for a token (check the credentials)", resp.status());
        }
        let text = resp.body_mut().read_to_string().with_context(|| format!("{realm}: reading the token answer"))?;
        let body: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{realm}: the token answer is not JSON"))?;
        let token =
            body["token"].as_str().or(body["access_token"].as_str()).ok_or_else(|| anyhow!("{realm}: no token"))?;
        Ok(format!("Bearer {token}"))
    }
}

/// `k="v",k2="v2"` of a challenge.
fn challenge_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s.trim();
    while let Some((k, after)) = rest.split_once('=') {
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let (v, next) = match after.strip_prefix('"') {
            Some(q) => q.split_once('"').unwrap_or((q, "")),
            None => after.split_once(',').unwrap_or((after, "")),
        };
        out.insert(k, v.to_string());
        rest = next.trim_start_matches(',').trim();
    }
    out
}

/// Credentials for `host` from an auth file: `--dest-authfile`, else
/// `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
/// `~/.docker/config.json` (as skopeo looks).
fn auth_from_files(host: &str, explicit: Option<&Path>) -> Result<Option<String>> {
    let mut files: Vec<PathBuf> = Vec::new();
    if let Some(p) = explicit {
        if !p.is_file() {
            bail!("--dest-authfile {}: no such file", p.display());
        }
        files.push(p.to_path_buf());
    } else {
        files.extend(std::env::var_os("REGISTRY_AUTH_FILE").map(PathBuf::from));
        files.extend(std::env::var_os("XDG_RUNTIME_DIR").map(|d| PathBuf::from(d).join("containers/auth.json")));
        files.extend(std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json")));
    }
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else { continue };
        let doc: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not a JSON auth file", f.display()))?;
        if let Some(auth) = doc["auths"][host]["auth"].as_str() {
            return Ok(Some(auth.to_string()));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_refuse_image_references() {
        let t = TargetRef::parse("docker://reg.example:5000/team/prod").unwrap();
        assert_eq!((t.host.as_str(), t.prefix.as_str()), ("reg.example:5000", "team/prod"));
        assert_eq!(t.reference("app", "1.0"), "docker://reg.example:5000/team/prod/app:1.0");
        assert_eq!(TargetRef::parse("docker://reg.example").unwrap().repo("app"), "app");
        for bad in ["reg.example", "docker://", "docker://reg/app:1.0", "docker://reg/App"] {
            assert!(TargetRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bearer_challenges_are_read() {
        let p = challenge_params(
            r#"realm="https://auth.example/token",service="registry.example",scope="repository:a:pull""#,
        );
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "registry.example");
        assert_eq!(p["scope"], "repository:a:pull");
    }
}
