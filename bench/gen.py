#!/usr/bin/env python3
"""Benchmark data for scripts/bench.sh (standard library only).

store: a synthetic docker registry store (distribution 2.8.2 layout) of N
       repositories x T tags: real, parsable manifests (Docker schema 2, OCI
       manifests, OCI indexes and Docker manifest lists) referencing real blobs
       whose digests are the sha256 of their data, _layers links, revisions,
       tags with history, an untagged revision per repository, a few _uploads
       and, optionally, one large layer blob of real (non-sparse) data.
oci:   OCI image layouts for a two-release push: one layout per repository
       holding tags r1 and r2; realistic uncompressed layer tars of a few MiB
       (pushed with skopeo --preserve-digests), r2 differs from r1 in every
       config and in the top layer of some images.

Everything but the large blob is deterministic (a seeded PRNG), so two runs
give the same digests. Prints a JSON summary on stdout.
"""

import argparse
import hashlib
import io
import json
import os
import random
import sys
import tarfile

V2 = os.path.join("docker", "registry", "v2")

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZ = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
REF_NAME = "org.opencontainers.image.ref.name"


def canonical(doc):
    return json.dumps(doc, indent=3, sort_keys=False).encode()


class Store:
    """Writes a registry store, remembering the directories it made."""

    def __init__(self, root):
        self.v2 = os.path.join(root, V2)
        self.dirs = set()
        self.blobs = set()
        self.files = 0
        self.bytes = 0

    def mkdirs(self, d):
        if d in self.dirs:
            return
        parent = os.path.dirname(d)
        if parent and parent not in self.dirs and not os.path.isdir(parent):
            self.mkdirs(parent)
        try:
            os.mkdir(d)
        except FileExistsError:
            pass
        self.dirs.add(d)

    def write(self, path, data):
        self.mkdirs(os.path.dirname(path))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        self.files += 1
        self.bytes += len(data)

    def blob(self, data):
        """Stores data as a blob; returns (digest, size)."""
        hexd = hashlib.sha256(data).hexdigest()
        if hexd not in self.blobs:
            self.write(os.path.join(self.v2, "blobs", "sha256", hexd[:2], hexd, "data"), data)
            self.blobs.add(hexd)
        return "sha256:" + hexd, len(data)

    def link(self, d, digest):
        hexd = digest[len("sha256:"):]
        self.write(os.path.join(d, "sha256", hexd, "link"), digest.encode())


def gen_store(args):
    rng = random.Random(args.seed)
    st = Store(args.root)
    st.mkdirs(os.path.join(st.v2, "repositories"))
    st.mkdirs(os.path.join(st.v2, "blobs", "sha256"))

    def data(lo, hi):
        return rng.randbytes(rng.randint(lo, hi))

    # Base layers shared by every repository (as distro base images are).
    bases = [st.blob(data(2048, 4096)) for _ in range(64)]
    repos = []
    manifests = 0
    for i in range(args.repos):
        team = "team%02d" % (i % 20)
        name = "%s/svc-%04d" % (team, i) if i % 7 else "%s/group/svc-%04d" % (team, i)
        repos.append(name)
        rdir = os.path.join(st.v2, "repositories", name)
        docker = i % 2 == 0
        mt_manifest, mt_config, mt_layer = (
            (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER) if docker else (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER_GZ)
        )
        shared = [bases[(i * 7) % 64], bases[(i * 13 + 5) % 64]]
        shared += [st.blob(data(1024, 3072)) for _ in range(3)]
        for d in shared:
            st.link(os.path.join(rdir, "_layers"), d[0])

        def image(label, extra_layers):
            """One image manifest: blobs, _layers links, revision. Returns (digest, size)."""
            own = [st.blob(data(512, 2048)) for _ in range(extra_layers)]
            layers = shared + own
            config = {
                "architecture": "amd64",
                "os": "linux",
                "config": {"Labels": {"bench.repo": name, "bench.image": label}},
                "rootfs": {"type": "layers", "diff_ids": [d for d, _ in layers]},
            }
            cfg = st.blob(canonical(config))
            for d in [cfg] + own:
                st.link(os.path.join(rdir, "_layers"), d[0])
            manifest = {
                "schemaVersion": 2,
                "mediaType": mt_manifest,
                "config": {"mediaType": mt_config, "digest": cfg[0], "size": cfg[1]},
                "layers": [{"mediaType": mt_layer, "digest": d, "size": s} for d, s in layers],
            }
            m = st.blob(canonical(manifest))
            st.link(os.path.join(rdir, "_manifests", "revisions"), m[0])
            return m

        def tag(t, digests):
            tdir = os.path.join(rdir, "_manifests", "tags", t)
            st.write(os.path.join(tdir, "current", "link"), digests[-1].encode())
            for d in digests:
                st.link(os.path.join(tdir, "index"), d)

        tagged = []
        for t in range(args.tags):
            tname = "1.%d" % t
            if i % 10 == 0 and t == args.tags - 1 and len(tagged) >= 2:
                # A multi-platform tag: an index over two earlier manifests.
                kids = []
                for arch, (d, s) in zip(("amd64", "arm64"), tagged[-2:]):
                    kids.append({"mediaType": mt_manifest, "digest": d, "size": s,
                                 "platform": {"architecture": arch, "os": "linux"}})
                index = {"schemaVersion": 2, "mediaType": DOCKER_LIST if docker else OCI_INDEX, "manifests": kids}
                m = st.blob(canonical(index))
                st.link(os.path.join(rdir, "_manifests", "revisions"), m[0])
                tag(tname, [m[0]])
                manifests += 1
                continue
            m = image(tname, 1)
            manifests += 1
            if t == 0:
                # The tag moved once: an older, now untagged revision in its history.
                old = image("1.0-old", 1)
                manifests += 1
                tag(tname, [old[0], m[0]])
            else:
                tag(tname, [m[0]])
            tagged.append(m)
        if args.uploads and i % max(1, args.repos // args.uploads) == 3:
            udir = os.path.join(rdir, "_uploads", "%08x-0000-4000-8000-%012x" % (i, rng.getrandbits(48)))
            st.write(os.path.join(udir, "data"), data(100, 4000))
            st.write(os.path.join(udir, "startedat"), b"2024-01-01T00:00:00Z")
            st.write(os.path.join(udir, "hashstates", "sha256", "0"), data(100, 120))

    big = None
    if args.big_blob_mib > 0:
        big = write_big_blob(st, args.big_blob_mib)
        name = "bench/big"
        rdir = os.path.join(st.v2, "repositories", name)
        cfg = st.blob(canonical({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [big[0]]}}))
        for d in (cfg, big):
            st.link(os.path.join(rdir, "_layers"), d[0])
        m = st.blob(canonical({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": cfg[0], "size": cfg[1]},
            "layers": [{"mediaType": OCI_LAYER, "digest": big[0], "size": big[1]}],
        }))
        st.link(os.path.join(rdir, "_manifests", "revisions"), m[0])
        st.write(os.path.join(rdir, "_manifests", "tags", "1.0", "current", "link"), m[0].encode())
        st.link(os.path.join(rdir, "_manifests", "tags", "1.0", "index"), m[0])
        repos.append(name)

    # Entries below the store root (what `find` lists, root excluded).
    entries = len(st.dirs) + st.files
    out = {
        "root": args.root,
        "repos": len(repos),
        "tags": args.tags,
        "manifests": manifests,
        "blobs": len(st.blobs),
        "files": st.files,
        "dirs": len(st.dirs),
        "entries": entries,
        "bytes": st.bytes,
    }
    if big:
        out["big_blob"] = {"digest": big[0], "size": big[1],
                           "path": os.path.join(V2, "blobs", "sha256", big[0][7:9], big[0][7:], "data")}
    json.dump(out, sys.stdout)
    print()


def write_big_blob(st, mib):
    """mib MiB of real random data (no holes), hashed while written."""
    tmp = os.path.join(st.v2, "blobs", ".big.tmp")
    h = hashlib.sha256()
    chunk = 1 << 20
    with open(tmp, "wb") as f:
        for _ in range(mib):
            b = os.urandom(chunk)
            h.update(b)
            f.write(b)
    hexd = h.hexdigest()
    d = os.path.join(st.v2, "blobs", "sha256", hexd[:2], hexd)
    st.mkdirs(d)
    os.rename(tmp, os.path.join(d, "data"))
    st.files += 1
    st.bytes += mib * chunk
    st.blobs.add(hexd)
    return "sha256:" + hexd, mib * chunk


# ---------------------------------------------------------------- OCI layouts

def layer_tar(name, size, rng):
    """An uncompressed tar holding one file of `size` pseudo-random bytes."""
    info = tarfile.TarInfo("data/%s.bin" % name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        tf.addfile(info, io.BytesIO(rng.randbytes(size)))
    return buf.getvalue()


class Layout:
    def __init__(self, d):
        self.dir = d
        os.makedirs(os.path.join(d, "blobs", "sha256"), exist_ok=True)
        with open(os.path.join(d, "oci-layout"), "w") as f:
            f.write('{"imageLayoutVersion": "1.0.0"}')
        self.refs = []

    def blob(self, data):
        hexd = hashlib.sha256(data).hexdigest()
        p = os.path.join(self.dir, "blobs", "sha256", hexd)
        if not os.path.exists(p):
            with open(p, "wb") as f:
                f.write(data)
        return {"digest": "sha256:" + hexd, "size": len(data)}

    def finish(self):
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.refs}
        with open(os.path.join(self.dir, "index.json"), "wb") as f:
            f.write(canonical(index))


def gen_oci(args):
    mib = 1 << 20
    unit = int(args.layer_mib * mib)
    nbases = max(1, args.images // 10)
    # Each base is a pure function of its index, shared by every image using it.
    base_tars = [layer_tar("base-%d" % b, 2 * unit, random.Random("%s-base-%d" % (args.seed, b))) for b in range(nbases)]
    own_sizes = [3 * unit // 2, unit, unit // 2]
    changed = 0
    total_layers = set()
    changed_layers = set()
    total_bytes = 0
    repos = []
    for j in range(args.images):
        repo = "release/app-%02d" % j
        repos.append(repo)
        lay = Layout(os.path.join(args.root, repo))
        own = [layer_tar("app-%d-%d" % (j, k), sz, random.Random("%s-%d-%d" % (args.seed, j, k)))
               for k, sz in enumerate(own_sizes)]
        # r2 rebuilds the top layer of 3 images in 10 (about 10% of the layers).
        change = j % 10 in (0, 3, 6)
        changed += change
        for rel in ("r1", "r2"):
            layers = [base_tars[j % nbases]] + own[:-1]
            if rel == "r2" and change:
                top = layer_tar("app-%d-top-r2" % j, own_sizes[-1], random.Random("%s-%d-r2" % (args.seed, j)))
            else:
                top = own[-1]
            layers.append(top)
            descs = [lay.blob(t) for t in layers]
            for d, t in zip(descs, layers):
                if d["digest"] not in total_layers:
                    total_bytes += len(t)
                total_layers.add(d["digest"])
                if rel == "r2" and t is top and change:
                    changed_layers.add(d["digest"])
            config = {
                "architecture": "amd64", "os": "linux",
                "config": {"Labels": {"bench.repo": repo, "bench.release": rel}},
                "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in descs]},
            }
            cfg = lay.blob(canonical(config))
            manifest = {
                "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": dict(mediaType=OCI_CONFIG, **cfg),
                "layers": [dict(mediaType=OCI_LAYER, **d) for d in descs],
            }
            m = lay.blob(canonical(manifest))
            lay.refs.append(dict(mediaType=OCI_MANIFEST, annotations={REF_NAME: rel}, **m))
        lay.finish()
    json.dump({
        "root": args.root, "images": args.images, "repos": repos,
        "layers": len(total_layers), "changed_layers": len(changed_layers),
        "changed_images": changed, "layer_bytes": total_bytes,
    }, sys.stdout)
    print()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("store", help="a synthetic registry store")
    s.add_argument("--root", required=True, help="the store's rootdirectory (created)")
    s.add_argument("--repos", type=int, default=2000)
    s.add_argument("--tags", type=int, default=10)
    s.add_argument("--uploads", type=int, default=5, help="repositories with an upload in flight")
    s.add_argument("--big-blob-mib", type=int, default=0, help="size of the one large blob (0: none)")
    s.add_argument("--seed", default="regfs-bench")
    o = sub.add_parser("oci", help="OCI layouts of a two-release push")
    o.add_argument("--root", required=True, help="layouts go to ROOT/<repo>")
    o.add_argument("--images", type=int, default=40)
    o.add_argument("--layer-mib", type=float, default=4.0, help="size unit of the layers (base 2x, own 1.5x/1x/0.5x)")
    o.add_argument("--seed", default="regfs-bench-oci")
    args = ap.parse_args()
    os.makedirs(args.root, exist_ok=True)
    (gen_store if args.cmd == "store" else gen_oci)(args)


if __name__ == "__main__":
    main()
