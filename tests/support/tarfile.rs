//! Tars written and edited record by record, for the hostile-bundle corpora
//! (what the `tar` crate's builder would refuse to write).

use std::fs;
use std::path::Path;

/// One tar record: its effective name, its header block, its data.
#[derive(Clone)]
pub struct Rec {
    pub name: Vec<u8>,
    pub header: [u8; 512],
    pub data: Vec<u8>,
}

/// Reads a tar's records (GNU long names folded into the entry they name).
pub fn records(tar: &Path) -> Vec<Rec> {
    let bytes = fs::read(tar).expect("reading the tar");
    let mut out = Vec::new();
    let mut at = 0;
    let mut long: Option<Vec<u8>> = None;
    while at + 512 <= bytes.len() && bytes[at..at + 512].iter().any(|&b| b != 0) {
        let mut header = [0u8; 512];
        header.copy_from_slice(&bytes[at..at + 512]);
        let h = tar::Header::from_byte_slice(&header);
        let size = h.entry_size().expect("size") as usize;
        let data = bytes[at + 512..at + 512 + size].to_vec();
        at += 512 + size.next_multiple_of(512);
        if h.entry_type() == tar::EntryType::GNULongName {
            long = Some(data.into_iter().take_while(|&b| b != 0).collect());
            continue;
        }
        let name = long.take().unwrap_or_else(|| h.path_bytes().into_owned());
        out.push(Rec { name, header, data });
    }
    out
}

/// A raw header: any name (GNU long name where it needs one), type, size.
pub fn raw_header(name: &[u8], ty: tar::EntryType, size: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(ty);
    h.set_size(size);
    h.set_mode(0o644);
    if name.len() > 99 {
        out.extend(raw_header(b"././@LongLink", tar::EntryType::GNULongName, name.len() as u64 + 1));
        let mut data = name.to_vec();
        data.push(0);
        data.resize(data.len().next_multiple_of(512), 0);
        out.extend(data);
    }
    let n = name.len().min(99);
    h.as_old_mut().name[..n].copy_from_slice(&name[..n]);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out
}

/// Writes records back (headers rebuilt, `size` from the data), with the
/// end-of-archive marker unless `end` is false.
pub fn write_tar(path: &Path, recs: &[Rec], end: bool) {
    let mut out = Vec::new();
    for r in recs {
        let h = tar::Header::from_byte_slice(&r.header);
        out.extend(raw_header(&r.name, h.entry_type(), r.data.len() as u64));
        out.extend(&r.data);
        out.resize(out.len().next_multiple_of(512), 0);
    }
    if end {
        out.extend([0u8; 1024]);
    }
    fs::write(path, out).expect("writing the tar");
}

pub fn rec(name: &str, ty: tar::EntryType, data: &[u8]) -> Rec {
    let mut header = [0u8; 512];
    header.copy_from_slice(&raw_header(b"x", ty, 0)[..512]);
    Rec { name: name.as_bytes().to_vec(), header, data: data.to_vec() }
}

pub fn find(recs: &[Rec], pred: impl Fn(&str) -> bool) -> usize {
    recs.iter().position(|r| pred(&String::from_utf8_lossy(&r.name))).expect("a matching record")
}

/// An edit of a tar's records; false: write it without the end marker.
pub type Edit = Box<dyn Fn(&mut Vec<Rec>) -> bool>;

/// The edit that adds the record `r`.
pub fn adding(r: Rec) -> Edit {
    Box::new(move |recs| {
        recs.push(r.clone());
        true
    })
}
