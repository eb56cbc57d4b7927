//! A client of the distribution API: what regfs asks a registry itself,
//! beside the images skopeo copies. `regfs push` asks its target whether it
//! holds a blob or a manifest; `regfs release` reads attachments (cosign
//! tags, OCI 1.1 referrers) from its source and writes them, byte for byte,
//! into the registry on its view. The conventions are skopeo's: HTTPS, or
//! without TLS verification also unverified TLS and plain HTTP; credentials
//! from `--dest-creds` or an auth file (`skopeo login` writes one); bearer
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

/// The OCI image index type (what a referrers answer is).
const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// Largest tag list page, referrers answer or error body read.
const MAX_LIST_BYTES: u64 = 16 << 20;
/// Pages of a tag list followed before giving up.
const MAX_TAG_PAGES: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Get,
    Head,
    Post,
    Put,
}

/// What a request answered.
struct Answer {
    status: u16,
    location: Option<String>,
    link: Option<String>,
    content_type: Option<String>,
    body: Vec<u8>,
}

/// The next page a `Link: </v2/...>; rel="next"` header names.
fn next_page(link: &str) -> Option<String> {
    let (target, params) = link.split_once(';')?;
    params.contains("rel=\"next\"").then(|| target.trim().trim_start_matches('<').trim_end_matches('>').to_string())
}

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
        let name = self.target.repo(repo);
        let a = self.call(&name, Method::Head, &format!("/v2/{name}/blobs/{digest}"), None, None, false, 0)?;
        Ok(a.status == 200)
    }

    /// A manifest or a small blob (a config) of the target's repository for
    /// `repo`, checked against its digest; `None` when the target lacks it.
    pub fn document(&self, repo: &str, kind: Kind, digest: &Digest) -> Result<Option<Vec<u8>>> {
        let bytes = match kind {
            Kind::Manifest => self.manifest(repo, &digest.to_string())?,
            Kind::Blob => self.blob(repo, digest, crate::gc::manifest::MAX_MANIFEST_BYTES)?,
        };
        let Some(bytes) = bytes else { return Ok(None) };
        if Digest::of(&bytes) != *digest {
            bail!("{}: {digest} of {repo} does not hash to its digest", self.target.host);
        }
        Ok(Some(bytes))
    }

    /// The manifest `reference` (a tag or a digest) names in `repo`, as the
    /// registry stores it; `None` when there is none.
    pub fn manifest(&self, repo: &str, reference: &str) -> Result<Option<Vec<u8>>> {
        let name = self.target.repo(repo);
        let path = format!("/v2/{name}/manifests/{reference}");
        let limit = crate::gc::manifest::MAX_MANIFEST_BYTES;
        let a = self.call(&name, Method::Get, &path, Some(MANIFEST_TYPES), None, false, limit)?;
        self.found(a, &path)
    }

    /// The data of blob `digest` of `repo` (at most `limit` bytes), checked
    /// against its digest; `None` when the registry lacks it.
    pub fn blob(&self, repo: &str, digest: &Digest, limit: u64) -> Result<Option<Vec<u8>>> {
        let name = self.target.repo(repo);
        let path = format!("/v2/{name}/blobs/{digest}");
        let a = self.call(&name, Method::Get, &path, None, None, false, limit)?;
        let Some(bytes) = self.found(a, &path)? else { return Ok(None) };
        if Digest::of(&bytes) != *digest {
            bail!("{}{path}: the data does not hash to its digest", self.target.host);
        }
        Ok(Some(bytes))
    }

    /// Every tag of `repo` (empty when the repository is unknown), page by page.
    pub fn tags(&self, repo: &str) -> Result<Vec<String>> {
        let name = self.target.repo(repo);
        let mut path = format!("/v2/{name}/tags/list");
        let mut out = Vec::new();
        for _ in 0..MAX_TAG_PAGES {
            let a = self.call(&name, Method::Get, &path, None, None, false, MAX_LIST_BYTES)?;
            let next = a.link.as_deref().and_then(next_page);
            let Some(bytes) = self.found(a, &path)? else { return Ok(out) };
            let doc: serde_json::Value = serde_json::from_slice(&bytes)
                .with_context(|| format!("{}{path}: the tag list is not JSON", self.target.host))?;
            out.extend(doc["tags"].as_array().into_iter().flatten().filter_map(|t| t.as_str().map(str::to_string)));
            match next {
                Some(n) => path = n,
                None => return Ok(out),
            }
        }
        bail!("{}: more than {MAX_TAG_PAGES} pages of tags in {name}", self.target.host)
    }

    /// The OCI 1.1 referrers index of `digest` in `repo`; `None` when the
    /// registry has no referrers API (distribution 2.x and 3.x answer 404).
    pub fn referrers(&self, repo: &str, digest: &Digest) -> Result<Option<Vec<u8>>> {
        let name = self.target.repo(repo);
        let path = format!("/v2/{name}/referrers/{digest}");
        let a = self.call(&name, Method::Get, &path, Some(INDEX_TYPE), None, false, MAX_LIST_BYTES)?;
        let is_index = a.content_type.as_deref().is_some_and(|t| t.starts_with(INDEX_TYPE));
        match self.found(a, &path)? {
            Some(bytes) if is_index => Ok(Some(bytes)),
            _ => Ok(None),
        }
    }

    /// Uploads blob `digest` into `repo` (one monolithic PUT), unless the
    /// registry holds it there already.
    pub fn put_blob(&self, repo: &str, digest: &Digest, bytes: &[u8]) -> Result<()> {
        if self.has_blob(repo, digest)? {
            return Ok(());
        }
        let name = self.target.repo(repo);
        let path = format!("/v2/{name}/blobs/uploads/");
        let a = self.call(&name, Method::Post, &path, None, None, true, MAX_LIST_BYTES)?;
        let shown = format!("{}{path}", self.target.host);
        if a.status != 202 {
            bail!("{shown}: the registry answered {} to starting an upload", a.status);
        }
        let location = a.location.ok_or_else(|| anyhow!("{shown}: an upload without a Location"))?;
        let sep = if location.contains('?') { '&' } else { '?' };
        let url = format!("{location}{sep}digest={digest}");
        let a =
            self.call(&name, Method::Put, &url, None, Some(("application/octet-stream", bytes)), true, MAX_LIST_BYTES)?;
        if a.status != 201 {
            bail!("{shown}: the registry answered {} to blob {digest}: {}", a.status, String::from_utf8_lossy(&a.body));
        }
        Ok(())
    }

    /// Stores `bytes`, a manifest of `media_type`, as `reference` (a tag or
    /// its digest) of `repo`.
    pub fn put_manifest(&self, repo: &str, reference: &str, media_type: &str, bytes: &[u8]) -> Result<()> {
        let name = self.target.repo(repo);
        let path = format!("/v2/{name}/manifests/{reference}");
        let a = self.call(&name, Method::Put, &path, None, Some((media_type, bytes)), true, MAX_LIST_BYTES)?;
        if a.status != 201 {
            bail!(
                "{}{path}: the registry answered {} to the manifest: {}",
                self.target.host,
                a.status,
                String::from_utf8_lossy(&a.body).trim()
            );
        }
        Ok(())
    }

    /// The body of a 200, `None` for a 404; any other answer is an error.
    fn found(&self, a: Answer, path: &str) -> Result<Option<Vec<u8>>> {
        let shown = || format!("{}{path}", self.target.host);
        match a.status {
            200 => Ok(Some(a.body)),
            404 => Ok(None),
            s @ (401 | 403) => bail!(
                "{}: {s}: not allowed (log in with `skopeo login {}`; for regfs push give --dest-creds \
                 USER:PASSWORD or an auth file with --dest-authfile)",
                shown(),
                self.target.host
            ),
            s => bail!("{}: the registry answered {s}", shown()),
        }
    }

    /// One request (`path` on the registry, or an absolute URL it gave),
    /// authorised as the registry asks; the body is read up to `limit`.
    #[allow(clippy::too_many_arguments)]
    fn call(
        &self,
        name: &str,
        method: Method,
        path: &str,
        accept: Option<&str>,
        body: Option<(&str, &[u8])>,
        push: bool,
        limit: u64,
    ) -> Result<Answer> {
        let scheme = self.scheme_for(|scheme| {
            self.send(Method::Get, &format!("{scheme}://{}/v2/", self.target.host), None, None, None).map(|_| ())
        })?;
        let url = if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{scheme}://{}{path}", self.target.host)
        };
        let shown = || format!("{}{}", self.target.host, path.split('?').next().unwrap_or(path));
        let scope = format!("repository:{name}:{}", if push { "pull,push" } else { "pull" });
        let auth = self.tokens.lock().unwrap_or_else(|p| p.into_inner()).get(&scope).cloned();
        let mut resp = self.send(method, &url, accept, auth.as_deref(), body).with_context(shown)?;
        if resp.status().as_u16() == 401 {
            let challenge =
                resp.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
            let auth = self.authorize(&scope, &challenge)?;
            self.tokens.lock().unwrap_or_else(|p| p.into_inner()).insert(scope, auth.clone());
            resp = self.send(method, &url, accept, Some(&auth), body).with_context(shown)?;
        }
        let header = |h: &str| resp.headers().get(h).and_then(|v| v.to_str().ok()).map(str::to_string);
        let (location, link, content_type) = (header("location"), header("link"), header("content-type"));
        let location =
            location.map(|l| if l.starts_with('/') { format!("{scheme}://{}{l}", self.target.host) } else { l });
        let status = resp.status().as_u16();
        let body = if method == Method::Head || limit == 0 {
            Vec::new()
        } else {
            resp.body_mut().with_config().limit(limit).read_to_vec().with_context(shown)?
        };
        Ok(Answer { status, location, link, content_type, body })
    }

    fn send(
        &self,
        method: Method,
        url: &str,
        accept: Option<&str>,
        auth: Option<&str>,
        body: Option<(&str, &[u8])>,
    ) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        macro_rules! headers {
            ($r:expr) => {{
                let mut r = $r;
                if let Some(a) = accept {
                    r = r.header("Accept", a);
                }
                if let Some(a) = auth {
                    r = r.header("Authorization", a);
                }
                r
            }};
        }
        match method {
            Method::Get => headers!(self.agent.get(url)).call(),
            Method::Head => headers!(self.agent.head(url)).call(),
            Method::Post => headers!(self.agent.post(url)).send_empty(),
            Method::Put => {
                let (content_type, bytes) = body.unwrap_or(("application/octet-stream", &[]));
                headers!(self.agent.put(url)).header("Content-Type", content_type).send(bytes)
            }
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
    fn authorize(&self, scope: &str, challenge: &str) -> Result<String> {
        let (scheme, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            let b = self.basic.as_ref().ok_or_else(|| {
                anyhow!(
                    "{} wants credentials: log in with `skopeo login {}` (for regfs push: --dest-creds USER:PASSWORD \
                     or --dest-authfile)",
                    self.target.host,
                    self.target.host
                )
            })?;
            return Ok(format!("Basic {b}"));
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            bail!("{}: unknown authentication challenge {challenge:?}", self.target.host);
        }
        let params = challenge_params(params);
        let realm =
            params.get("realm").ok_or_else(|| anyhow!("{}: a bearer challenge without realm", self.target.host))?;
        let mut req = self.agent.get(realm.as_str()).query("scope", scope);
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
