//! A release's record: what `regfs absorb` keeps in the history of each
//! release it folds in (at [`crate::layout::release_record`]), so that
//! `regfs release --rebuild` can make the same bundle again from the history
//! alone: the bundle's description (its images, lock and blobs, and the base
//! it was cut against) and the tar's digest and size.

use serde::{Deserialize, Serialize};

use super::Description;

/// `format` of every record.
pub const FORMAT: &str = "regfs-release-record";
pub const VERSION: u32 = 1;
/// Largest record read (its description is the most of it).
pub const MAX_BYTES: u64 = super::MAX_DESCRIPTION_BYTES + (1 << 20);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub description: Description,
    /// The sha256 of the bundle tar, hex.
    pub tar_sha256: String,
    pub tar_bytes: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordFile {
    format: String,
    version: u32,
    release: String,
    tar_sha256: String,
    tar_bytes: u64,
    /// The description's own bytes, as the bundle holds them.
    description: String,
}

impl Record {
    pub fn new(description: &Description, tar_sha256: &str, tar_bytes: u64) -> Record {
        Record { description: description.clone(), tar_sha256: tar_sha256.to_string(), tar_bytes }
    }

    pub fn release(&self) -> &str {
        &self.description.release
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let file = RecordFile {
            format: FORMAT.into(),
            version: VERSION,
            release: self.description.release.clone(),
            tar_sha256: self.tar_sha256.clone(),
            tar_bytes: self.tar_bytes,
            description: String::from_utf8_lossy(&self.description.to_bytes()).into_owned(),
        };
        let mut out = serde_json::to_vec_pretty(&file).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Parses and checks a record (its description checked as a bundle's is).
    pub fn parse(bytes: &[u8]) -> Result<Record, String> {
        let f: RecordFile = serde_json::from_slice(bytes).map_err(|e| format!("not a release record: {e}"))?;
        if f.format != FORMAT {
            return Err(format!("format {:?}, expected {FORMAT:?}", f.format));
        }
        if f.version != VERSION {
            return Err(format!("version {} (this regfs reads version {VERSION}: upgrade regfs)", f.version));
        }
        if f.tar_sha256.len() != 64 || !f.tar_sha256.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
            return Err(format!("tar_sha256 {:?} is not 64 lowercase hex digits", f.tar_sha256));
        }
        let description = Description::parse(f.description.as_bytes()).map_err(|e| format!("description: {e}"))?;
        if description.release != f.release {
            return Err(format!("names release {:?} but its description {:?}", f.release, description.release));
        }
        Ok(Record { description, tar_sha256: f.tar_sha256, tar_bytes: f.tar_bytes })
    }
}
