//! Unit tests of the tar reader.
use super::*;
use std::io::Cursor;

fn tar_of(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    build(&mut b);
    b.into_inner().unwrap()
}

fn header(ty: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(ty);
    h.set_size(size);
    h.set_mode(0o644);
    h
}

/// A tar of one entry whose name is written as is (the crate refuses
/// hostile names), with `data`, then the end marker.
fn raw_tar(name: &[u8], ty: tar::EntryType, data: &[u8]) -> Vec<u8> {
    let mut h = header(ty, data.len() as u64);
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(512) + 1024, 0);
    out
}

fn entries(bytes: &[u8]) -> Result<Vec<TarEntry>, TarError> {
    let mut r = TarReader::new(Cursor::new(bytes.to_vec()), bytes.len() as u64);
    let mut out = Vec::new();
    while let Some(e) = r.next_entry()? {
        out.push(e);
    }
    Ok(out)
}

#[test]
fn reads_files_dirs_and_long_names() {
    let long = format!("docker/{}/f", "d".repeat(300));
    let bytes = tar_of(|b| {
        b.append_data(&mut header(tar::EntryType::Directory, 0), "docker/", io::empty()).unwrap();
        b.append_data(&mut header(tar::EntryType::Regular, 3), "docker/a", &b"abc"[..]).unwrap();
        b.append_data(&mut header(tar::EntryType::Regular, 2), &long, &b"xy"[..]).unwrap();
    });
    let got = entries(&bytes).unwrap();
    assert_eq!(got.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(), ["docker", "docker/a", long.as_str()]);
    assert_eq!(&bytes[got[1].data_offset as usize..][..3], b"abc");
    assert_eq!(got[2].size, 2);
}

#[test]
fn refuses_hostile_entries() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (raw_tar(b"a/../b", tar::EntryType::Regular, b""), "'..'"),
        (raw_tar(b"/etc/x", tar::EntryType::Regular, b""), "absolute"),
        (raw_tar(b"a", tar::EntryType::Symlink, b""), "symlink"),
        (raw_tar(b"a", tar::EntryType::Link, b""), "hard link"),
        (raw_tar(b"d", tar::EntryType::Char, b""), "character device"),
        (raw_tar(b"f", tar::EntryType::Fifo, b""), "fifo"),
        (raw_tar(b"a//b", tar::EntryType::Regular, b""), "empty path component"),
        (
            tar_of(|b| {
                b.append_data(&mut header(tar::EntryType::Regular, 0), "a", io::empty()).unwrap();
                b.append_data(&mut header(tar::EntryType::Regular, 0), "a", io::empty()).unwrap();
            }),
            "listed twice",
        ),
        (
            tar_of(|b| {
                b.append_data(&mut header(tar::EntryType::Regular, 0), "a", io::empty()).unwrap();
                b.append_data(&mut header(tar::EntryType::Regular, 0), "a/b", io::empty()).unwrap();
            }),
            "which is a file",
        ),
        (
            tar_of(|b| {
                b.append_data(&mut header(tar::EntryType::Regular, 0), "a/b", io::empty()).unwrap();
                b.append_data(&mut header(tar::EntryType::Regular, 0), "a", io::empty()).unwrap();
            }),
            "have a directory",
        ),
        (raw_tar(b"L", tar::EntryType::GNULongName, &vec![b'a'; 5000]), "GNU long name of 5000"),
        (raw_tar(b"x", tar::EntryType::XHeader, b"29 SCHILY.xattr.user.x=value\n"), "SCHILY.xattr"),
        (raw_tar(b"g", tar::EntryType::XGlobalHeader, b""), "global PAX"),
    ];
    for (bytes, want) in cases {
        let e = entries(&bytes).unwrap_err().to_string();
        assert!(e.contains(want), "{e} should say {want}");
    }
    // Truncated: inside data, and with no end marker.
    let full = tar_of(|b| b.append_data(&mut header(tar::EntryType::Regular, 3000), "big", &[7u8; 3000][..]).unwrap());
    assert!(entries(&full[..2048]).unwrap_err().to_string().contains("runs past the end"));
    assert!(entries(&full[..512 + 3072]).unwrap_err().to_string().contains("truncated"));
    assert!(entries(&full).is_ok());
    // A damaged header.
    let mut bad = full.clone();
    bad[10] ^= 1;
    assert!(entries(&bad).unwrap_err().to_string().contains("checksum"));
}
