//! `regfs verify`: what GC trusts, checked. GC takes a link's digest from
//! its path, as distribution does, and a blob's digest from its directory;
//! verify reads every link file (it must be a regular file naming exactly
//! the digest it is filed under) and hashes every blob's data against its
//! digest, in parallel, through the view (so hidden history is not judged).
//! It writes nothing and reports every problem, not only the first.

use std::io::Read;

use std::time::Instant;

use anyhow::Result;
use rayon::prelude::*;
use serde::Serialize;

use super::GcError;
use super::scan::Scanner;
use crate::layout::{self, Digest};
use crate::store::{self, Layers};
use crate::view::View;

/// One thing found wrong, by view path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Problem {
    pub path: String,
    pub problem: String,
}

/// What a verify run checked and found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub repositories: u64,
    pub links_checked: u64,
    pub blobs_checked: u64,
    pub bytes_hashed: u64,
    /// Sorted by path.
    pub problems: Vec<Problem>,
    pub elapsed_ms: u64,
}

fn problem(e: GcError) -> Problem {
    match e {
        GcError::Bad { path, msg } => Problem { path, problem: msg },
        GcError::Io { path, source } => Problem { path, problem: format!("cannot read: {source}") },
    }
}

/// Hashes a blob's data; `Ok(false)` when it does not match.
fn hashes_to(view: &View, d: &Digest, entry: &crate::view::Entry) -> Result<(bool, u64), GcError> {
    let rel = layout::blob_data(d);
    let io = |source| GcError::Io { path: rel.display().to_string(), source };
    let (file, len) = view.open_read(&rel, entry, 0).and_then(|f| f.into_sequential()).map_err(io)?;
    let got = crate::util::sha256_reader(file.take(len)).map_err(io)?;
    Ok((got == *d, len))
}

/// Verifies the view's links and blobs.
pub fn verify(view: &View) -> Result<VerifyReport, GcError> {
    let started = Instant::now();
    let sc = Scanner::new(view);
    let mut report = VerifyReport::default();
    let mut problems = Vec::new();
    let mut repos = sc.repositories()?;
    report.repositories = repos.len() as u64;
    // Each repository on its own: a bad one is reported, the rest still checked.
    let per_repo: Vec<(u64, Vec<Problem>)> = repos
        .par_iter_mut()
        .map(|r| {
            if let Err(e) = sc.scan_repo(r, false, false) {
                return (0, vec![problem(e)]);
            }
            let dirs = match sc.repo_link_dirs(r) {
                Ok(d) => d,
                Err(e) => return (0, vec![problem(e)]),
            };
            let found: Vec<Problem> = dirs
                .par_iter()
                .filter_map(|(d, dir, layers)| sc.check_link(dir, layers, d).err().map(problem))
                .collect();
            (dirs.len() as u64 + r.tags.iter().filter(|t| t.current.is_some()).count() as u64, found)
        })
        .collect();
    for (n, found) in per_repo {
        report.links_checked += n;
        problems.extend(found);
    }
    let prefixes = sc.blob_prefixes()?;
    let blobs = sc.blobs(&prefixes)?;
    let checked: Vec<Result<u64, Problem>> = blobs
        .par_iter()
        .map(|b| {
            let data = layout::blob_data(&b.digest);
            let at = |msg: &str| Problem { path: data.display().to_string(), problem: msg.to_string() };
            match sc.blob_data(b).map_err(problem)? {
                None => Err(at("missing: a blob directory without its data")),
                Some(e) => match hashes_to(view, &b.digest, &e).map_err(problem)? {
                    (true, len) => Ok(len),
                    (false, _) => Err(at("the data does not hash to the digest it is filed under (corrupt)")),
                },
            }
        })
        .collect();
    for c in checked {
        report.blobs_checked += 1;
        match c {
            Ok(len) => report.bytes_hashed += len,
            Err(p) => problems.push(p),
        }
    }
    problems.sort();
    report.ok = problems.is_empty();
    report.problems = problems;
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// `regfs verify`: prints the report; fails when anything is wrong.
pub fn command(layers: &Layers, json: bool) -> Result<()> {
    let _lock = store::lock_upper(&layers.upper, "regfs verify")?;
    let view = layers.view()?;
    let r = verify(&view).map_err(|e| anyhow::anyhow!(e)).map_err(|e| e.context("verify could not read the store"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        for p in &r.problems {
            println!("{}: {}", p.path, p.problem);
        }
        println!(
            "verified {} repositories: {} links, {} blobs ({}) in {} ms: {}",
            r.repositories,
            r.links_checked,
            r.blobs_checked,
            crate::util::human_bytes(r.bytes_hashed),
            r.elapsed_ms,
            if r.ok { "all good".to_string() } else { format!("{} problems", r.problems.len()) }
        );
    }
    if !r.ok {
        anyhow::bail!(
            "{} problems in the store (listed above): a link that does not name the digest it is filed under, or a \
             blob whose data does not hash to its digest, is damage; restore it from a bundle or the source",
            r.problems.len()
        );
    }
    Ok(())
}
