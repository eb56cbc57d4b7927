//! The report that ends every GC run: kept and deleted, per kind.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::time::Duration;

use serde::Serialize;

use super::{Kind, Plan};

/// A count of entries and the bytes of their files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub count: u64,
    pub bytes: u64,
}

impl Tally {
    pub fn add(&mut self, count: u64, bytes: u64) {
        self.count += count;
        self.bytes += bytes;
    }
}

/// Kept and deleted entries of one kind. Bytes are those of the files the
/// kind holds: blob data; link files; all files of tags, repositories,
/// uploads (a kept repository: its kept links).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KindReport {
    pub kept: Tally,
    pub deleted: Tally,
    /// Of `deleted`, the entries only history held: hidden by a whiteout,
    /// nothing freed (the history is never written).
    pub hidden_history: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Nothing was deleted: `deleted` is what a real run would delete.
    pub dry_run: bool,
    pub delete_untagged: bool,
    pub kinds: BTreeMap<Kind, KindReport>,
    pub manifests_read: u64,
    pub warnings: Vec<String>,
    pub plan_ms: u64,
    pub sweep_ms: u64,
}

impl Report {
    pub fn new(plan: &Plan, dry_run: bool, planned: Duration, swept: Duration) -> Report {
        let mut kinds: BTreeMap<Kind, KindReport> = Kind::ALL.iter().map(|k| (*k, KindReport::default())).collect();
        for (k, t) in &plan.kept {
            kinds.entry(*k).or_default().kept = *t;
        }
        for d in &plan.deletions {
            let k = kinds.entry(d.kind).or_default();
            k.deleted.add(1, d.bytes);
            if d.files == 0 {
                k.hidden_history += 1;
            }
        }
        if let Some(r) = kinds.get_mut(&Kind::Repository) {
            // A stale repository loses up to two sections: count it once.
            let mut names: Vec<_> = plan
                .deletions
                .iter()
                .filter(|d| d.kind == Kind::Repository)
                .filter_map(|d| d.repo.as_deref())
                .collect();
            names.sort_unstable();
            names.dedup();
            r.deleted.count = names.len() as u64;
        }
        Report {
            dry_run,
            delete_untagged: plan.delete_untagged,
            kinds,
            manifests_read: plan.manifests_read,
            warnings: plan.warnings.clone(),
            plan_ms: planned.as_millis() as u64,
            sweep_ms: swept.as_millis() as u64,
        }
    }

    pub fn kind(&self, k: Kind) -> KindReport {
        self.kinds.get(&k).copied().unwrap_or_default()
    }

    /// Bytes of every file deleted (or to delete, on a dry run).
    pub fn deleted_bytes(&self) -> u64 {
        self.kinds.values().map(|k| k.deleted.bytes).sum()
    }

    /// A one-line summary (used by the on-unmount hook).
    pub fn summary(&self) -> String {
        let b = self.kind(Kind::Blob);
        let from_upper = b.deleted.count - b.hidden_history;
        format!(
            "gc {} {from_upper} blobs from upper ({}) and {} {} history blobs (a whiteout each; history untouched), \
             kept {} ({}), removed {} stale repositories",
            if self.dry_run { "would delete" } else { "deleted" },
            human_bytes(b.deleted.bytes),
            if self.dry_run { "would hide" } else { "hid" },
            b.hidden_history,
            b.kept.count,
            human_bytes(b.kept.bytes),
            self.kind(Kind::Repository).deleted.count
        )
    }

    pub fn write_human(&self, out: &mut impl Write) -> io::Result<()> {
        let verb = if self.dry_run { "to delete" } else { "deleted" };
        writeln!(out, "regfs gc{}:", if self.dry_run { " (dry run, nothing deleted)" } else { "" })?;
        writeln!(out, "  {:<24} {:>22} {:>22}", "", "kept", verb)?;
        let cell = |t: Tally| format!("{} ({})", t.count, human_bytes(t.bytes));
        for (k, r) in &self.kinds {
            let kept = if *k == Kind::EmptyDir || *k == Kind::Upload { "-".into() } else { cell(r.kept) };
            writeln!(out, "  {:<24} {:>22} {:>22}", k.label(), kept, cell(r.deleted))?;
        }
        writeln!(
            out,
            "  {} manifests read; planned in {} ms, swept in {} ms",
            self.manifests_read, self.plan_ms, self.sweep_ms
        )?;
        for w in &self.warnings {
            writeln!(out, "  warning: {w}")?;
        }
        Ok(())
    }
}

/// Every path a plan deletes, in sweep order.
pub fn write_plan(out: &mut impl Write, plan: &Plan) -> io::Result<()> {
    for d in &plan.deletions {
        // The path's own bytes: a plan lists tens of thousands of them.
        write!(out, "delete {:<12} ", d.kind.name())?;
        out.write_all(d.path.as_os_str().as_encoded_bytes())?;
        match d.kind {
            Kind::EmptyDir => writeln!(out)?,
            _ => writeln!(out, " ({})", human_bytes(d.bytes))?,
        }
    }
    Ok(())
}

pub use crate::util::human_bytes;
