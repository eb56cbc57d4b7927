//! The one reader of bundle tars. It trusts nothing in the file: every
//! header's checksum and size are checked against the file, paths must be
//! plain relative names, and only regular files and directories are
//! accepted (no links, devices, fifos, sparse files, global or unknown PAX
//! records), each name once. ustar and GNU headers are read, with GNU
//! long names and PAX `path`/`size` records, each capped in size so a
//! hostile header cannot make regfs buffer it.
//!
//! Field decoding is the `tar` crate's (`tar::Header`); the sequencing, the
//! limits and the offsets are here, so every entry's data offset is known
//! (a reader can serve it in place).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufReader, Read, Seek};
use std::path::Path;

/// A tar block.
const BLOCK: u64 = 512;
/// Longest path accepted (Linux's PATH_MAX).
const MAX_PATH: usize = 4096;
/// Largest PAX extended header accepted.
const MAX_PAX: u64 = 64 << 10;

/// What an entry is; nothing else is accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
}

/// One entry of the tar, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TarEntry {
    /// Relative, `/`-separated, without a trailing `/`.
    pub path: String,
    pub kind: EntryKind,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    /// Data bytes (0 for a directory).
    pub size: u64,
    /// Where the data starts in the file.
    pub data_offset: u64,
    /// Owner and modification time, as the header gives them.
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
}

/// Why a tar is refused: where (an entry's path, or a header's offset) and what.
#[derive(Debug, thiserror::Error)]
#[error("{at}: {msg}")]
pub struct TarError {
    pub at: String,
    pub msg: String,
}

impl TarError {
    fn new(at: impl Into<String>, msg: impl Into<String>) -> TarError {
        TarError { at: at.into(), msg: msg.into() }
    }
}

fn io_at(at: String) -> impl FnOnce(io::Error) -> TarError {
    move |e| TarError::new(at, format!("read error: {e}"))
}

/// Reads a tar entry by entry; the caller may read each entry's data
/// ([`TarReader::read_data`]) before asking for the next one.
pub struct TarReader<R: Read + Seek> {
    inner: BufReader<R>,
    /// Offset of the next byte `inner` gives.
    pos: u64,
    len: u64,
    /// Data of the current entry not yet read, then its padding.
    left: u64,
    pad: u64,
    /// Every name so far and what it is.
    seen: HashMap<String, EntryKind>,
    /// Every directory an entry so far lies in.
    parents: HashSet<String>,
    /// Whether `seen` and `parents` are kept (a caller that builds a tree of
    /// the names checks them itself, in the same words).
    track_names: bool,
    done: bool,
}

impl TarReader<File> {
    /// Opens a tar file.
    pub fn open(path: &Path) -> io::Result<TarReader<File>> {
        let f = File::open(path)?;
        let len = f.metadata()?.len();
        Ok(TarReader::new(f, len))
    }
}

impl<R: Read + Seek> TarReader<R> {
    /// A reader of `inner`, `len` bytes long, positioned at its start.
    pub fn new(inner: R, len: u64) -> TarReader<R> {
        TarReader {
            inner: BufReader::with_capacity(1 << 20, inner),
            pos: 0,
            len,
            left: 0,
            pad: 0,
            seen: HashMap::new(),
            parents: HashSet::new(),
            track_names: true,
            done: false,
        }
    }

    /// A reader that leaves the checks between names (each once, no file
    /// where a directory is, nothing below a file) to its caller, who must
    /// make them with [`DUPLICATE`], [`FILE_OVER_DIR`] and [`below_file`].
    pub fn without_name_checks(mut self) -> TarReader<R> {
        self.track_names = false;
        self
    }

    /// Reads the current entry's data (0 at its end).
    pub fn read_data(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let max = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        if max == 0 {
            return Ok(0);
        }
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the tar ends inside an entry's data"));
        }
        self.left -= n as u64;
        self.pos += n as u64;
        Ok(n)
    }

    /// Reads all of the current entry's data; `max` bounds it.
    pub fn read_all(&mut self, max: u64) -> io::Result<Vec<u8>> {
        if self.left > max {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{} bytes, more than {max}", self.left)));
        }
        let mut buf = vec![0; self.left as usize];
        let mut got = 0;
        while got < buf.len() {
            got += self.read_data(&mut buf[got..])?;
        }
        Ok(buf)
    }

    fn skip(&mut self, n: u64) -> io::Result<()> {
        self.inner.seek_relative(n as i64)?;
        self.pos += n;
        Ok(())
    }

    fn block(&mut self, what: &str) -> Result<[u8; BLOCK as usize], TarError> {
        let at = self.pos;
        if at + BLOCK > self.len {
            return Err(TarError::new(
                format!("offset {at}"),
                format!("the tar ends inside {what} (the file has {} bytes): a truncated bundle", self.len),
            ));
        }
        let mut b = [0u8; BLOCK as usize];
        self.inner.read_exact(&mut b).map_err(io_at(format!("offset {at}")))?;
        self.pos += BLOCK;
        Ok(b)
    }

    /// The data of a metadata entry (long name, PAX), `size` bytes.
    fn meta_data(&mut self, size: u64, max: u64, what: &str, at: u64) -> Result<Vec<u8>, TarError> {
        if size > max {
            return Err(TarError::new(
                format!("offset {at}"),
                format!("{what} of {size} bytes (at most {max} accepted)"),
            ));
        }
        self.check_fits(size, &format!("offset {at}"))?;
        self.left = size;
        let data = self.read_all(max).map_err(io_at(format!("offset {at}")))?;
        self.skip(padding(size)).map_err(io_at(format!("offset {at}")))?;
        Ok(data)
    }

    fn check_fits(&self, size: u64, at: &str) -> Result<(), TarError> {
        let end = self.pos.checked_add(size).and_then(|e| e.checked_add(padding(size)));
        if end.is_none_or(|e| e > self.len) {
            return Err(TarError::new(
                at,
                format!(
                    "its size ({size} bytes) runs past the end of the file ({} bytes): a truncated or damaged bundle",
                    self.len
                ),
            ));
        }
        Ok(())
    }

    /// The next entry, checked; `None` at the end-of-archive marker.
    pub fn next_entry(&mut self) -> Result<Option<TarEntry>, TarError> {
        if self.done {
            return Ok(None);
        }
        let rest = self.left + self.pad;
        self.skip(rest).map_err(io_at(format!("offset {}", self.pos)))?;
        (self.left, self.pad) = (0, 0);
        let mut long_name: Option<Vec<u8>> = None;
        let mut pax_path: Option<Vec<u8>> = None;
        let mut pax_size: Option<u64> = None;
        loop {
            let at = self.pos;
            let block = self.block("a header")?;
            if block.iter().all(|&b| b == 0) {
                self.block("the end-of-archive marker")?;
                if long_name.is_some() || pax_path.is_some() || pax_size.is_some() {
                    return Err(TarError::new(format!("offset {at}"), "the tar ends after an extended header"));
                }
                self.done = true;
                return Ok(None);
            }
            let header = tar::Header::from_byte_slice(&block);
            check_header(&block, header).map_err(|m| TarError::new(format!("offset {at}"), m))?;
            let size = header.entry_size().map_err(|e| TarError::new(format!("offset {at}"), e.to_string()))?;
            match header.entry_type().as_byte() {
                b'L' => long_name = Some(trim_nul(self.meta_data(size, MAX_PATH as u64, "a GNU long name", at)?)),
                b'x' => {
                    let data = self.meta_data(size, MAX_PAX, "a PAX header", at)?;
                    for ext in tar::PaxExtensions::new(&data) {
                        let ext =
                            ext.map_err(|e| TarError::new(format!("offset {at}"), format!("bad PAX record: {e}")))?;
                        match ext.key_bytes() {
                            b"path" => pax_path = Some(ext.value_bytes().to_vec()),
                            b"size" => {
                                let v = ext.value().ok().and_then(|v| v.parse().ok());
                                pax_size = Some(v.ok_or_else(|| {
                                    TarError::new(format!("offset {at}"), "PAX size is not a number")
                                })?);
                            }
                            b"mtime" | b"atime" | b"ctime" | b"uid" | b"gid" | b"uname" | b"gname" => {}
                            key => {
                                return Err(TarError::new(
                                    format!("offset {at}"),
                                    format!(
                                        "PAX record {:?}: not part of a plain bundle (no xattrs, sparse files or links)",
                                        String::from_utf8_lossy(key)
                                    ),
                                ));
                            }
                        }
                    }
                }
                t => {
                    let raw = pax_path.take().or(long_name.take()).unwrap_or_else(|| header.path_bytes().into_owned());
                    let size = pax_size.take().unwrap_or(size);
                    return self.entry(t, &raw, size, header).map(Some);
                }
            }
        }
    }

    /// Each name once, no file where a directory is, nothing below a file.
    fn check_names(&mut self, path: &str, kind: EntryKind) -> Result<(), TarError> {
        if self.seen.contains_key(path) {
            return Err(TarError::new(path, DUPLICATE));
        }
        if kind == EntryKind::File && self.parents.contains(path) {
            return Err(TarError::new(path, FILE_OVER_DIR));
        }
        let mut parent = path;
        while let Some((p, _)) = parent.rsplit_once('/') {
            if self.seen.get(p) == Some(&EntryKind::File) {
                return Err(TarError::new(path, below_file(p)));
            }
            if !self.parents.insert(p.to_string()) {
                break;
            }
            parent = p;
        }
        self.seen.insert(path.to_string(), kind);
        Ok(())
    }

    fn entry(&mut self, t: u8, raw: &[u8], size: u64, header: &tar::Header) -> Result<TarEntry, TarError> {
        let shown = String::from_utf8_lossy(raw).into_owned();
        let kind = match t {
            b'0' | b'\0' | b'7' => EntryKind::File,
            b'5' => EntryKind::Dir,
            other => {
                let what = match other {
                    b'1' => "a hard link",
                    b'2' => "a symlink",
                    b'3' => "a character device",
                    b'4' => "a block device",
                    b'6' => "a fifo",
                    b'g' => "a global PAX header",
                    b'S' => "a sparse file",
                    b'K' => "a GNU long link name",
                    _ => "an entry of an unknown type",
                };
                return Err(TarError::new(
                    shown,
                    format!("{what} (type {:?}): a bundle holds only regular files and directories", other as char),
                ));
            }
        };
        let path = clean_path(raw, kind).map_err(|m| TarError::new(shown.clone(), m))?;
        if kind == EntryKind::Dir && size != 0 {
            return Err(TarError::new(path, format!("a directory with {size} bytes of data")));
        }
        self.check_fits(size, &path)?;
        if self.track_names {
            self.check_names(&path, kind)?;
        }
        let bad = |what: &str, e: io::Error| TarError::new(path.clone(), format!("bad {what}: {e}"));
        let mode = header.mode().map_err(|e| bad("mode", e))? & 0o7777;
        // An empty numeric field (as some writers leave owner fields) is 0.
        let old = header.as_old();
        let or_zero = |r: io::Result<u64>, raw: &[u8]| match r {
            Err(_) if raw.iter().all(|&b| b == 0 || b == b' ') => Ok(0),
            r => r,
        };
        let uid = or_zero(header.uid(), &old.uid).map_err(|e| bad("uid", e))?;
        let gid = or_zero(header.gid(), &old.gid).map_err(|e| bad("gid", e))?;
        let mtime = or_zero(header.mtime(), &old.mtime).map_err(|e| bad("mtime", e))?;
        let (Ok(uid), Ok(gid), Ok(mtime)) = (u32::try_from(uid), u32::try_from(gid), i64::try_from(mtime)) else {
            return Err(TarError::new(path, "an owner or time out of range"));
        };
        self.left = size;
        self.pad = padding(size);
        Ok(TarEntry { path, kind, mode, size, data_offset: self.pos, uid, gid, mtime })
    }
}

/// Why a name listed a second time is refused.
pub const DUPLICATE: &str = "listed twice: a bundle holds each name once";
/// Why a file where earlier entries have a directory is refused.
pub const FILE_OVER_DIR: &str = "a file where earlier entries have a directory";

/// Why an entry below the file `p` is refused.
pub fn below_file(p: &str) -> String {
    format!("lies below {p}, which is a file")
}

/// Bytes of padding after `size` data bytes.
fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

fn trim_nul(mut v: Vec<u8>) -> Vec<u8> {
    while v.last() == Some(&0) {
        v.pop();
    }
    v
}

/// A header's magic and checksum.
fn check_header(block: &[u8; BLOCK as usize], header: &tar::Header) -> Result<(), String> {
    if header.as_ustar().is_none() && header.as_gnu().is_none() {
        return Err("not a ustar or GNU tar header (not a bundle, or a damaged one)".into());
    }
    let stored = header.cksum().map_err(|e| format!("bad header checksum field: {e}"))?;
    let sum: u32 = block.iter().enumerate().map(|(i, &b)| if (148..156).contains(&i) { 32 } else { b as u32 }).sum();
    if stored != sum {
        return Err(format!("header checksum {stored} does not match its bytes ({sum}): a damaged bundle"));
    }
    Ok(())
}

/// A plain relative path: UTF-8, no `/` at the start, no empty, `.` or
/// `..` component, no NUL; a directory's trailing `/` is dropped.
fn clean_path(raw: &[u8], kind: EntryKind) -> Result<String, String> {
    let s = std::str::from_utf8(raw).map_err(|_| "the name is not UTF-8".to_string())?;
    if s.len() > MAX_PATH {
        return Err(format!("a name of {} bytes (at most {MAX_PATH})", s.len()));
    }
    if s.starts_with('/') {
        return Err("an absolute path: a bundle holds relative names only".into());
    }
    let trimmed = match kind {
        EntryKind::Dir => s.trim_end_matches('/'),
        EntryKind::File if s.ends_with('/') => return Err("a file whose name ends in '/'".into()),
        EntryKind::File => s,
    };
    let trimmed = trimmed.strip_prefix("./").unwrap_or(trimmed);
    if trimmed.is_empty() {
        return Err("an empty name".into());
    }
    for c in trimmed.split('/') {
        match c {
            "" => return Err("an empty path component ('//')".into()),
            "." | ".." => return Err(format!("a '{c}' component: a bundle names every entry plainly")),
            _ if c.bytes().any(|b| b == 0 || b < 0x20) => return Err("a control character in the name".into()),
            _ => {}
        }
    }
    Ok(trimmed.to_string())
}

#[cfg(test)]
#[path = "tarball_tests.rs"]
mod tests;
