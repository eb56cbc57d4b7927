//! Unit tests of the bundle description.
use super::*;

fn d(c: char) -> Digest {
    Digest::from_hex(&c.to_string().repeat(64)).unwrap()
}

fn sample() -> Description {
    Description {
        format: FORMAT.into(),
        version: VERSION,
        release: "release-2".into(),
        base: Some(BaseRef { blobs_digest: d('e'), blobs: 3, bytes: 10 }),
        images: vec![Image {
            repo: "team/app".into(),
            tag: "r2".into(),
            digest: d('a'),
            media_type: Some("application/vnd.oci.image.manifest.v1+json".into()),
            platforms: vec!["linux/amd64".into()],
        }],
        lock: vec![Locked {
            requested: "team/app:r2".into(),
            repo: "team/app".into(),
            tag: Some("r2".into()),
            digest: d('a'),
            platforms: vec!["linux/amd64".into()],
            attachments: vec![Attachment {
                kind: AttachmentKind::Signature,
                digest: d('b'),
                subject: d('a'),
                tag: AttachmentKind::Signature.tag_for(&d('a')),
                artifact_type: None,
            }],
        }],
        blobs: vec![
            Blob { digest: d('a'), size: 400, shipped: true },
            Blob { digest: d('b'), size: 4, shipped: false },
        ],
    }
}

#[test]
fn round_trips_one_entry_per_line() {
    let s = sample();
    let bytes = s.to_bytes();
    assert_eq!(Description::parse(&bytes).unwrap(), s);
    assert_eq!(String::from_utf8(bytes).unwrap().lines().count(), 11);
    assert_eq!(s.lock[0].attachments[0].tag.as_deref(), Some(&*format!("sha256-{}.sig", "a".repeat(64))));
}

#[test]
fn version_1_descriptions_are_still_read() {
    let mut s = sample();
    s.version = 1;
    s.lock.clear();
    let bytes = s.to_bytes();
    assert!(!String::from_utf8_lossy(&bytes).contains("lock"));
    assert_eq!(Description::parse(&bytes).unwrap(), s);
}

#[test]
fn refuses_what_it_does_not_understand() {
    let mut s = sample();
    s.blobs.swap(0, 1);
    assert!(Description::parse(&s.to_bytes()).unwrap_err().contains("sorted"));
    let mut s = sample();
    s.version = VERSION + 1;
    assert!(Description::parse(&s.to_bytes()).unwrap_err().contains("newer regfs"));
    let mut s = sample();
    s.lock[0].attachments[0].digest = d('c');
    assert!(Description::parse(&s.to_bytes()).unwrap_err().contains("lock[0]"));
    let mut s = sample();
    s.lock.push(s.lock[0].clone());
    assert!(Description::parse(&s.to_bytes()).unwrap_err().contains("listed twice"));
    let mut s = sample();
    s.images[0].digest = d('c');
    assert!(Description::parse(&s.to_bytes()).unwrap_err().contains("not among the blobs"));
    let mut s = sample();
    s.release = "../x".into();
    assert!(Description::parse(&s.to_bytes()).is_err());
    assert!(Description::parse(b"{\"format\":\"regfs-bundle\",\"extra\":1}").is_err());
    assert!(Description::parse(b"\xff").is_err());
}
