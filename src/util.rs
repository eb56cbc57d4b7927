//! Small helpers several commands share: byte counts for people, streaming
//! sha256, atomic file replacement.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::Path;

use sha2::Digest as _;

use crate::layout::Digest;

/// `1.5 MiB`-style byte counts for reports.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{b} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

/// The lines of a list file (`--keep`, `--images`): numbered from 1,
/// `#` comments cut, blanks trimmed, empty lines left out.
pub fn list_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().filter_map(|(i, raw)| {
        let line = raw.split('#').next().unwrap_or("").trim();
        (!line.is_empty()).then_some((i + 1, line))
    })
}

/// The sha256 of everything `r` yields, read 1 MiB at a time.
pub fn sha256_reader(mut r: impl Read) -> io::Result<Digest> {
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Digest::from_sha256(&h.finalize()))
}

/// The sha256 of a file.
pub fn sha256_file(path: &Path) -> io::Result<Digest> {
    sha256_reader(File::open(path)?)
}

/// Replaces `path` with `data`: a temporary file beside it, synced, renamed.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new().prefix(".regfs-tmp.").tempfile_in(dir)?;
    tmp.write_all(data)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    let _ = fs::File::open(dir).and_then(|d| d.sync_all());
    Ok(())
}

/// The names of the subdirectories of `dir`, sorted; none if it is missing.
pub fn subdir_names(dir: &Path) -> anyhow::Result<Vec<String>> {
    use anyhow::Context;
    let names = || -> io::Result<Vec<String>> {
        let rd = match fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for de in rd {
            let de = de?;
            if de.file_type()?.is_dir() {
                out.push(de.file_name().to_string_lossy().into_owned());
            }
        }
        out.sort();
        Ok(out)
    };
    names().with_context(|| format!("reading {}", dir.display()))
}

/// A whole file of at most `limit` bytes (more is an `InvalidData` error).
pub fn read_limited(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let f = std::fs::File::open(path)?;
    let mut out = Vec::new();
    f.take(limit + 1).read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("larger than {limit} bytes")));
    }
    Ok(out)
}
