//! What the view hides from the lower (history) layers.
//!
//! Hiding is a pure function of a path, so it costs nothing per hidden entry:
//! mounting over 10 or 100,000 repositories is the same work.

use std::collections::BTreeSet;
use std::path::Path;

use crate::layout::{self, Place, Section};

/// The hiding policy applied to every lower layer (never to upper).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Repository sections hidden when they come from a lower layer.
    pub hidden_sections: Vec<Section>,
    /// When set, only these lower repositories stay visible.
    pub keep: Option<KeepSet>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy { hidden_sections: vec![Section::Manifests, Section::Uploads], keep: None }
    }
}

/// The repositories a `--keep` file names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeepSet {
    repos: BTreeSet<String>,
    /// Every proper prefix (`team` of `team/app`), so namespaces stay reachable.
    namespaces: BTreeSet<String>,
}

impl KeepSet {
    pub fn new(repos: impl IntoIterator<Item = String>) -> KeepSet {
        let mut set = KeepSet::default();
        for repo in repos {
            let mut end = 0;
            while let Some(pos) = repo[end..].find('/') {
                end += pos;
                set.namespaces.insert(repo[..end].to_string());
                end += 1;
            }
            set.repos.insert(repo);
        }
        set
    }

    pub fn contains(&self, repo: &str) -> bool {
        self.repos.contains(repo)
    }

    pub fn repos(&self) -> impl Iterator<Item = &str> {
        self.repos.iter().map(String::as_str)
    }

    fn reaches(&self, prefix: &str) -> bool {
        self.repos.contains(prefix) || self.namespaces.contains(prefix)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{path}:{line}: {msg}")]
    Keep { path: String, line: usize, msg: String },
    #[error("{path}: {msg}")]
    File { path: String, msg: String },
}

/// Parses a keep file: one `repo` or `repo:tag` per line, `#` comments.
/// The tag part names what the release ships; the view keeps whole repositories.
pub fn parse_keep(text: &str, path: &str) -> Result<KeepSet, PolicyError> {
    let mut repos = Vec::new();
    for (n, line) in crate::util::list_lines(text) {
        let repo = repo_of_image_ref(line);
        if !layout::valid_repo_name(repo) {
            return Err(PolicyError::Keep {
                path: path.to_string(),
                line: n,
                msg: format!(
                    "{line:?} is not a repository name (expected `repo` or `repo:tag`, lowercase, \
                     `/` between path components)"
                ),
            });
        }
        repos.push(repo.to_string());
    }
    Ok(KeepSet::new(repos))
}

/// `team/app:1.2` → `team/app`; `team/app@sha256:..` → `team/app`.
pub fn repo_of_image_ref(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    match image.rfind(':') {
        Some(colon) if !image[colon..].contains('/') => &image[..colon],
        _ => image,
    }
}

/// The JSON policy file. Every field is optional; missing fields keep defaults.
/// ```json
/// { "hide_sections": ["_manifests", "_uploads"], "keep": ["team/app", "base"] }
/// ```
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    hide_sections: Option<Vec<String>>,
    keep: Option<Vec<String>>,
}

/// Parses a `--policy` JSON file over the defaults.
pub fn parse_policy(text: &str, path: &str) -> Result<Policy, PolicyError> {
    let err = |msg: String| PolicyError::File { path: path.to_string(), msg };
    let file: PolicyFile = serde_json::from_str(text).map_err(|e| {
        err(format!("{e} (expected {{\"hide_sections\": [\"_manifests\", \"_uploads\"], \"keep\": [\"repo\", ...]}})"))
    })?;
    let mut policy = Policy::default();
    if let Some(names) = file.hide_sections {
        policy.hidden_sections = names
            .iter()
            .map(|n| {
                Section::from_name(n)
                    .ok_or_else(|| err(format!("unknown section {n:?}: use _manifests, _uploads or _layers")))
            })
            .collect::<Result<_, _>>()?;
    }
    if let Some(keep) = file.keep {
        for repo in &keep {
            if !layout::valid_repo_name(repo) {
                return Err(err(format!("keep: {repo:?} is not a repository name")));
            }
        }
        policy.keep = Some(KeepSet::new(keep));
    }
    Ok(policy)
}

impl Policy {
    /// Whether a lower layer's entry at `rel` (relative to the registry root)
    /// is hidden. Only the entry itself is judged: its ancestors were visible.
    pub fn hides_lower(&self, rel: &Path) -> bool {
        if layout::is_regfs_state(rel) {
            return true;
        }
        match layout::classify(rel) {
            Place::Outside | Place::RepositoriesRoot => false,
            Place::RepoOrNamespace { prefix } => match &self.keep {
                Some(keep) => !keep.reaches(&layout::repo_name(&prefix)),
                None => false,
            },
            Place::InSection { repo, section } => {
                self.hidden_sections.contains(&section)
                    || self.keep.as_ref().is_some_and(|k| !k.contains(&layout::repo_name(&repo)))
            }
        }
    }

    /// Whether the policy may hide any lower entry directly in directory
    /// `dir`; when not, a listing need not judge its names one by one.
    pub fn may_hide_in(&self, dir: &Path) -> bool {
        // The root may hold regfs's own state, hidden under every policy.
        dir.as_os_str().is_empty()
            || ((!self.hidden_sections.is_empty() || self.keep.is_some())
                && !layout::children_outside_repositories(dir))
    }

    /// Whether a repository of the history stays visible.
    pub fn keeps_repo(&self, repo: &str) -> bool {
        self.keep.as_ref().is_none_or(|k| k.contains(repo))
    }

    /// A policy that hides nothing: the plain overlay.
    pub fn transparent() -> Policy {
        Policy { hidden_sections: Vec::new(), keep: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> std::path::PathBuf {
        Path::new("docker/registry/v2/repositories").join(s)
    }

    #[test]
    fn default_hides_manifests_and_uploads_only() {
        let pol = Policy::default();
        assert!(pol.hides_lower(&p("a/_manifests")));
        assert!(pol.hides_lower(&p("team/app/_uploads")));
        assert!(!pol.hides_lower(&p("a/_layers")));
        assert!(!pol.hides_lower(&p("a")));
        assert!(!pol.hides_lower(Path::new("docker/registry/v2/blobs/sha256/ab")));
    }

    #[test]
    fn release_records_are_hidden_under_every_policy() {
        for pol in [Policy::default(), Policy::transparent()] {
            assert!(pol.hides_lower(Path::new(layout::RELEASES)));
            assert!(pol.may_hide_in(Path::new("")));
            assert!(!pol.hides_lower(Path::new("docker")));
        }
    }

    #[test]
    fn keep_hides_other_repos_but_not_namespaces() {
        let keep = parse_keep("# release\nteam/app:1.0\nbase\n\n", "k").unwrap();
        let pol = Policy { keep: Some(keep), ..Policy::default() };
        assert!(!pol.hides_lower(&p("team")));
        assert!(!pol.hides_lower(&p("team/app")));
        assert!(!pol.hides_lower(&p("team/app/_layers")));
        assert!(pol.hides_lower(&p("team/_layers")));
        assert!(pol.hides_lower(&p("team/other")));
        assert!(pol.hides_lower(&p("stale")));
        assert!(!pol.hides_lower(&p("base")));
    }

    #[test]
    fn keep_file_errors_name_the_line() {
        let e = parse_keep("ok\nBad Name\n", "keep.txt").unwrap_err().to_string();
        assert!(e.starts_with("keep.txt:2:"), "{e}");
    }

    #[test]
    fn image_refs() {
        assert_eq!(repo_of_image_ref("team/app:1.0"), "team/app");
        assert_eq!(repo_of_image_ref("localhost:5000/app"), "localhost:5000/app");
        assert_eq!(repo_of_image_ref("app@sha256:abc"), "app");
    }

    #[test]
    fn policy_file() {
        let pol = parse_policy(r#"{"hide_sections": []}"#, "p").unwrap();
        assert_eq!(pol, Policy::transparent());
        assert!(parse_policy(r#"{"hide": []}"#, "p").is_err());
        assert!(parse_policy(r#"{"hide_sections": ["x"]}"#, "p").is_err());
    }
}
