//! The images list of a release: one image reference a line, `#`
//! comments and blank lines. A reference is `repo:tag`, `repo@sha256:<hex>`
//! (pinned: that manifest, untagged) or `repo:tag@sha256:<hex>` (the tag,
//! refused if it no longer names that manifest at the source).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Result, anyhow, bail};
use serde::Serialize;

use crate::layout::{self, Digest};
use crate::view::policy;

/// One image reference of an images list.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ImageName {
    pub repo: String,
    pub tag: Option<String>,
    /// The manifest the image is pinned to.
    pub digest: Option<Digest>,
}

impl std::fmt::Display for ImageName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.repo)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl ImageName {
    /// What the registry on the view stores it as: its tag, or its digest.
    pub fn dest_reference(&self, resolved: &Digest) -> String {
        match &self.tag {
            Some(t) => format!("{}:{t}", self.repo),
            None => format!("{}@{resolved}", self.repo),
        }
    }
}

const TAG_RULE: &str = "[A-Za-z0-9_][A-Za-z0-9_.-]*, at most 128 characters";

/// Parses an images list; an error names `FILE:LINE`.
pub fn parse_images(text: &str, path: &Path) -> Result<Vec<ImageName>> {
    let mut out = Vec::new();
    let mut seen: BTreeMap<(String, Option<String>, Option<Digest>), usize> = BTreeMap::new();
    let mut tags_seen: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (n, line) in crate::util::list_lines(text) {
        let at = |msg: String| anyhow!("{}:{n}: {msg}", path.display());
        let img = parse_reference(line).map_err(|m| at(format!("{line:?}: {m}")))?;
        if let Some(t) = &img.tag
            && let Some(first) = tags_seen.insert((img.repo.clone(), t.clone()), n)
        {
            return Err(at(format!("{}:{t} is listed twice (first on line {first})", img.repo)));
        }
        if let Some(first) = seen.insert((img.repo.clone(), img.tag.clone(), img.digest), n) {
            return Err(at(format!("{img} is listed twice (first on line {first})")));
        }
        out.push(img);
    }
    if out.is_empty() {
        bail!(
            "{}: no images listed (expected repo:tag, repo@sha256:<hex> or repo:tag@sha256:<hex> lines)",
            path.display()
        );
    }
    Ok(out)
}

/// One reference, or why it is not one.
fn parse_reference(line: &str) -> Result<ImageName, String> {
    let (name, digest) = match line.split_once('@') {
        Some((name, d)) => {
            let digest =
                Digest::parse(d).map_err(|_| format!("bad digest {d:?}: write sha256: and 64 lowercase hex digits"))?;
            (name, Some(digest))
        }
        None => (line, None),
    };
    let repo = policy::repo_of_image_ref(name);
    let tag = name.get(repo.len() + 1..).filter(|t| !t.is_empty());
    if tag.is_none()
        && let Some(colon) = name.find(':')
    {
        let bad = &name[colon + 1..];
        return Err(format!("bad tag {bad:?}: {TAG_RULE} (no '/')"));
    }
    if tag.is_none() && digest.is_none() {
        return Err("no tag or digest; write repo:tag, repo@sha256:<hex> or repo:tag@sha256:<hex>".into());
    }
    if !layout::valid_repo_name(repo) {
        return Err(format!(
            "{repo:?} is not a repository name (lowercase letters, digits, '.', '_', '-', components separated by '/')"
        ));
    }
    if let Some(t) = tag
        && !layout::valid_tag(t)
    {
        return Err(format!("bad tag {t:?}: {TAG_RULE}"));
    }
    Ok(ImageName { repo: repo.to_string(), tag: tag.map(str::to_string), digest })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn references_of_every_form() {
        let list = format!("app:1.0\nteam/db@{D}\n# pinned tag\nweb:2@{D}\n");
        let imgs = parse_images(&list, Path::new("images.list")).unwrap();
        assert_eq!(
            imgs.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["app:1.0".to_string(), format!("team/db@{D}"), format!("web:2@{D}")]
        );
        assert_eq!(imgs[1].tag, None);
        assert_eq!(imgs[2].tag.as_deref(), Some("2"));
        assert_eq!(imgs[1].dest_reference(&imgs[1].digest.unwrap()), format!("team/db@{D}"));
    }

    #[test]
    fn bad_references_name_the_line() {
        for (list, want) in [
            ("app\n", "no tag or digest"),
            ("app:\n", "bad tag"),
            ("app@sha256:abc\n", "bad digest"),
            ("app@md5:00\n", "bad digest"),
            ("App:1\n", "not a repository name"),
            ("app:-x\n", "bad tag"),
            ("a:1\na:1\n", "listed twice"),
        ] {
            let e = parse_images(&format!("# x\n{list}"), Path::new("l")).unwrap_err().to_string();
            assert!(e.starts_with("l:2:") || e.starts_with("l:3:"), "{list:?}: {e}");
            assert!(e.contains(want), "{list:?}: {e}");
        }
        let e = parse_images(&format!("a:1@{D}\na:1\n"), Path::new("l")).unwrap_err().to_string();
        assert!(e.starts_with("l:2:") && e.contains("listed twice"), "{e}");
    }
}
