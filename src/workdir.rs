//! A release's work dir (`FILE.tar.work` by default), as `regfs release`
//! leaves it and `absorb` and `export` read it: `upper/`, `mnt/`, the keep
//! list, and once the tar is written the `release.done` marker and the
//! release's record.

use std::io;
use std::path::Path;

use anyhow::{Context, Result};

use crate::bundle::record::Record;

/// The keep list a release's work dir holds (what makes it one).
pub const KEEP_LIST: &str = "keep.list";
/// Written into the work dir when the release's tar is complete.
pub const DONE: &str = "release.done";
/// The release's record (its bundle's description and the tar's digest),
/// written with [`DONE`]: what `regfs absorb` keeps in the history.
pub const RECORD: &str = "release.record.json";

/// What the directory holding an upper says of it.
#[derive(Debug, PartialEq, Eq)]
pub enum UpperOrigin {
    /// Not a `regfs release` work dir.
    Other,
    /// The upper of a release that wrote its tar.
    Finished,
    /// The upper of a release that failed or was stopped (its GC may not
    /// have run: it can hold uploads and blobs nothing references).
    Unfinished,
}

/// Whether `upper` is a release's upper, and whether that release finished.
pub fn upper_origin(upper: &Path) -> UpperOrigin {
    let Some(dir) = upper.parent() else { return UpperOrigin::Other };
    if !dir.join(KEEP_LIST).is_file() || upper.file_name() != Some(std::ffi::OsStr::new("upper")) {
        UpperOrigin::Other
    } else if dir.join(DONE).is_file() {
        UpperOrigin::Finished
    } else {
        UpperOrigin::Unfinished
    }
}

/// The record a finished release left beside its upper, if it is one.
pub fn finished_record(upper: &Path) -> Result<Option<Record>> {
    if upper_origin(upper) != UpperOrigin::Finished {
        return Ok(None);
    }
    let Some(dir) = upper.parent() else { return Ok(None) };
    read_record(&dir.join(RECORD))
}

/// A record file, `None` when there is none; one that does not parse is an error.
pub fn read_record(path: &Path) -> Result<Option<Record>> {
    let bytes = match crate::util::read_limited(path, crate::bundle::record::MAX_BYTES) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    Record::parse(&bytes).map(Some).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}
