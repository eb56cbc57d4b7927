#!/usr/bin/env python3
"""Turns scripts/bench.sh's raw results into the table (markdown, stdout) and JSON.

results: TSV lines `figure size target unit value`, one per measurement.
meta:    TSV lines `key value` (JSON values are parsed).
"""

import argparse
import json
import statistics
import sys
from collections import OrderedDict

# figure -> (title, baseline target, what the ratio means)
FIGURES = OrderedDict([
    ("du", ("warm `du -s` of the view", "kernel-overlay")),
    ("find", ("warm `find -ls` of the view", "kernel-overlay")),
    ("rss", ("daemon peak RSS (VmHWM) after the traversal", "fuse-overlayfs")),
    ("read_cold", ("read the large blob, cold cache (dd bs=1M)", "kernel-overlay")),
    ("read_second", ("read the large blob again right after the cold read (dd bs=1M)", "kernel-overlay")),
    ("read_warm", ("read the large blob, warm cache: third read (dd bs=1M)", "kernel-overlay")),
    ("push", ("release-2 push (skopeo x4 through docker-registry)", "kernel-overlay")),
    ("push_upper", ("bytes written by the push (upper / store size)", "empty-store")),
    ("gc_cold", ("GC dry run, cold cache", "docker-registry")),
    ("gc_warm", ("GC dry run, warm cache", "docker-registry")),
    ("export", ("release tar of the view (warm)", "tar")),
    ("mount", ("mount (regfs kernel mode includes materialising the policy)", "kernel-overlay")),
    ("bundle_mount", ("mount of a view over the store as a bundle tar (cold cache)", "regfs-fuse-dir")),
    ("bundle_du", ("warm `du -s` of the view over the bundle tar", "regfs-fuse-dir")),
    ("bundle_find", ("warm `find -ls` of the view over the bundle tar", "regfs-fuse-dir")),
    ("bundle_rss", ("daemon peak RSS over the bundle tar", "regfs-fuse-dir")),
    ("release", ("the whole release of release 2 over the history, to its tar", "seed-pipeline")),
    ("release_phase", ("time per phase of the whole release (median of the runs)", "none")),
    ("release_tar", ("bytes of the release's tar", "seed-pipeline")),
])
INFO = ("entries", "tar_entries", "tar_bytes", "gc_cold_reads")


def fmt(v, unit):
    if unit == "s":
        if v >= 100:
            return "%.0f s" % v
        if v >= 10:
            return "%.1f s" % v
        if v >= 1:
            return "%.2f s" % v
        return "%.0f ms" % (v * 1000) if v >= 0.01 else "%.1f ms" % (v * 1000)
    if unit == "MB":
        return "%.0f MB" % v
    if unit == "B":
        return "%.0f MiB" % (v / 2**20)
    return "%g" % v


def load(path):
    rows = []
    with open(path) as f:
        for line in f:
            fig, size, target, unit, value = line.rstrip("\n").split("\t")
            rows.append((fig, size, target, unit, float(value)))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--meta", required=True)
    ap.add_argument("--out")
    a = ap.parse_args()

    meta = OrderedDict()
    with open(a.meta) as f:
        for line in f:
            k, v = line.rstrip("\n").split("\t", 1)
            try:
                meta[k] = json.loads(v) if v[:1] in "{[" else v
            except ValueError:
                meta[k] = v

    groups = OrderedDict()
    for fig, size, target, unit, value in load(a.results):
        groups.setdefault((fig, size, target, unit), []).append(value)
    stat = {}
    for (fig, size, target, unit), vs in groups.items():
        stat[(fig, size, target)] = {
            "figure": fig, "size": size, "target": target, "unit": unit, "runs": vs,
            "median": statistics.median(vs), "min": min(vs), "max": max(vs),
        }

    def med(fig, size, target):
        s = stat.get((fig, size, target))
        return s["median"] if s else None

    figures = []
    for fig, (title, base) in FIGURES.items():
        for size in ("full", "tenth", "empty"):
            b = med(fig, size, base)
            for (f, sz, target), s in stat.items():
                if f != fig or sz != size:
                    continue
                s = dict(s, title=title, baseline=base)
                s["ratio"] = s["median"] / b if b else None
                if fig in ("du", "find"):
                    n = med("entries", size, target)
                    if n:
                        s["entries"] = int(n)
                        s["us_per_entry"] = s["median"] / n * 1e6
                    if target == "fuse-overlayfs" and med(fig, size, "plain-overlay"):
                        s["ratio_to_plain_overlay"] = s["median"] / med(fig, size, "plain-overlay")
                if fig.startswith("gc_") and size != "empty":
                    n = meta.get("history_entries" if size == "full" else "history_10_entries")
                    if n:
                        s["entries"] = int(n)
                        s["us_per_entry"] = s["median"] / int(n) * 1e6
                        # What a store without entries costs (start-up, loading
                        # the binary after drop_caches) is no cost per entry.
                        start = med(fig, "empty", target)
                        if start is not None:
                            s["start_s"] = start
                            s["net_us_per_entry"] = (s["median"] - start) / int(n) * 1e6
                figures.append(s)

    # Per-entry cost at both sizes.
    scaling = []
    for fig in ("du", "find", "gc_cold", "gc_warm"):
        for target in sorted({t for (f, sz, t) in stat if f == fig}):
            big = next((s for s in figures if s["figure"] == fig and s["size"] == "full" and s["target"] == target), None)
            small = next((s for s in figures if s["figure"] == fig and s["size"] == "tenth" and s["target"] == target), None)
            if big and small and big.get("us_per_entry") and small.get("us_per_entry"):
                scaling.append({
                    "figure": fig, "target": target,
                    "entries_full": big["entries"], "entries_tenth": small["entries"],
                    "us_per_entry_full": big["us_per_entry"], "us_per_entry_tenth": small["us_per_entry"],
                    "ratio": big["us_per_entry"] / small["us_per_entry"],
                })
                # A cold GC waits on disk reads: reads per entry, and the
                # time per read, at both sizes.
                rb, rs = med("gc_cold_reads", "full", target), med("gc_cold_reads", "tenth", target)
                if fig == "gc_cold" and rb and rs:
                    scaling[-1].update({
                        "reads_full": rb, "reads_tenth": rs,
                        "reads_per_kentry_full": rb / big["entries"] * 1e3,
                        "reads_per_kentry_tenth": rs / small["entries"] * 1e3,
                        "us_per_read_full": big["median"] / rb * 1e6,
                        "us_per_read_tenth": small["median"] / rs * 1e6,
                    })
                if big.get("net_us_per_entry") and small.get("net_us_per_entry"):
                    scaling[-1].update({
                        "start_s": big["start_s"],
                        "net_us_per_entry_full": big["net_us_per_entry"],
                        "net_us_per_entry_tenth": small["net_us_per_entry"],
                        "net_ratio": big["net_us_per_entry"] / small["net_us_per_entry"],
                    })

    # Issue 7's targets.
    targets = []

    def target(name, goal, value, ok):
        targets.append({"target": name, "goal": goal, "value": value, "met": ok})

    def r(fig, t="regfs-fuse", size="full"):
        s = next((x for x in figures if x["figure"] == fig and x["size"] == size and x["target"] == t), None)
        return s and s["ratio"]

    for fig in ("du", "find"):
        v = r(fig)
        if v is not None:
            target("traversal %s" % fig, "<= 1.5x kernel overlay", "%.2fx" % v, v <= 1.5)
    for fig in ("read_cold", "read_warm"):
        # The goal is without passthrough: regfs-fuse, or regfs-fuse-nopt
        # for builds that used passthrough whenever root (bbc98e2..745634e).
        v, t = r(fig, "regfs-fuse-nopt"), "without passthrough"
        if v is None:
            v, t = r(fig), ("without passthrough" if meta.get("passthrough_flag") == "1" else "as mounted")
        if v is not None:
            target("blob %s (%s)" % (fig.replace("_", " "), t), "<= 1.5x kernel overlay", "%.2fx" % v, v <= 1.5)
        v = r(fig, "regfs-fuse-passthrough")
        if v is not None:
            target("blob %s (passthrough)" % fig.replace("_", " "), "<= 1.1x kernel overlay", "%.2fx" % v, v <= 1.1)
    for t, how in (("regfs-fuse", "--fsync full"), ("regfs-fuse-finalize", "--fsync finalize")):
        v = r("push", t)
        if v is not None:
            target("push (%s)" % how, "<= 1.1x kernel overlay", "%.2fx" % v, v <= 1.1)
    for fig in ("gc_cold", "gc_warm"):
        v = r(fig, "regfs-gc")
        if v:
            target("gc %s" % fig[3:], ">= 20x faster than docker-registry", "%.1fx faster" % (1 / v), 1 / v >= 20)
    for fig in ("gc_cold", "gc_warm"):
        v = r(fig, "regfs-gc-all")
        if v:
            target("gc full job %s" % fig[3:], ">= 20x faster than docker-registry", "%.1fx faster" % (1 / v), 1 / v >= 20)
    ra, rs = med("gc_cold_reads", "full", "regfs-gc-all"), med("gc_cold_reads", "full", "docker-registry")
    if ra is not None and rs:
        target("gc full job cold disk reads", "fewer than docker-registry", "%d vs %d" % (ra, rs), ra < rs)
    for t, goal in (("regfs-release", 10), ("regfs-release-delta", 20)):
        v = r("release", t)
        if v:
            target("whole release (%s)" % t, ">= %dx faster than the seed pipeline" % goal, "%.1fx faster" % (1 / v), 1 / v >= goal)
    v = r("export", "regfs-export")
    if v is not None:
        target("export", "<= GNU tar time", "%.2fx tar" % v, v <= 1.0)
    v = med("rss", "full", "regfs-fuse")
    if v is not None:
        n = med("entries", "full", "regfs-fuse")
        target("daemon RSS", "<= 150 MB at 460k entries", "%.0f MB (%d entries in the view)" % (v, n or 0), v <= 150)
    for s in scaling:
        if s["target"] not in ("regfs-fuse", "regfs-gc"):
            continue
        value = "%.2fx (%.2f -> %.2f us/entry)" % (s["ratio"], s["us_per_entry_tenth"], s["us_per_entry_full"])
        if "net_ratio" in s:
            value += "; %.2fx net of the %.0f ms an empty store takes" % (s["net_ratio"], s["start_s"] * 1e3)
        target("per-entry %s" % s["figure"], "flat +-30% from 1/10 to full size", value, abs(s["ratio"] - 1) <= 0.3)

    # The table.
    out = sys.stdout
    runs = meta.get("runs", "?")
    if meta.get("read_runs"):
        runs = "%s (blob reads: %s, in rotating order)" % (runs, meta["read_runs"])
    out.write("regfs bench (%s size, median of %s runs; kernel %s, %s CPUs; regfs %s, git %s)\n\n" % (
        meta.get("size"), runs, meta.get("kernel"), meta.get("cpus"), meta.get("regfs_version"), meta.get("git_head")))
    st = meta.get("store", {})
    if isinstance(st, dict):
        out.write("store: %s repos x %s tags, %s entries, %s manifests, %s blobs; large blob %s MiB\n" % (
            st.get("repos"), st.get("tags"), meta.get("history_entries"), st.get("manifests"), st.get("blobs"),
            (st.get("big_blob") or {}).get("size", 0) // 2**20))
    oc = meta.get("oci", {})
    if isinstance(oc, dict):
        out.write("push: %s images, %s layers (%s MiB), %s layers changed in release 2\n" % (
            oc.get("images"), oc.get("layers"), oc.get("layer_bytes", 0) // 2**20, oc.get("changed_layers")))
    for size in ("full", "tenth"):
        ents = [(t, med("entries", size, t)) for t in ("kernel-overlay", "plain-overlay", "regfs-fuse", "fuse-overlayfs")]
        if any(n for _, n in ents):
            out.write("entries in the %s view: %s\n" % (size, ", ".join("%s %d" % (t, n) for t, n in ents if n)))
    out.write("\n| figure | size | target | median | min–max | ratio | note |\n|---|---|---|---|---|---|---|\n")
    for s in figures:
        u = s["unit"]
        note = []
        if s["target"] == s["baseline"]:
            ratio = "1×"
        elif s["ratio"] is None:
            ratio = ""
        else:
            ratio = "%.2f×" % s["ratio"]
        if s["figure"].startswith("gc_") and s["ratio"] and s["target"] != s["baseline"]:
            note.append("%.1f× faster" % (1 / s["ratio"]))
        if "ratio_to_plain_overlay" in s:
            note.append("%.2f× plain overlay (same entries)" % s["ratio_to_plain_overlay"])
        if "us_per_entry" in s:
            note.append("%.2f µs/entry" % s["us_per_entry"])
        out.write("| %s | %s | %s | %s | %s–%s | %s | %s |\n" % (
            s["figure"], s["size"], s["target"], fmt(s["median"], u), fmt(s["min"], u), fmt(s["max"], u),
            ratio, "; ".join(note)))
    info = [(k, s) for k, s in stat.items() if k[0] in INFO and k[0] != "entries"]
    if info:
        out.write("\n" + "; ".join("%s %s %s: %s" % (k[0], k[1], k[2], fmt(s["median"], s["unit"])) for k, s in info) + "\n")
    if scaling:
        out.write("\n| per-entry cost | target | µs/entry at 1/10 | µs/entry full | full ÷ 1/10 | net of start-up |\n"
                  "|---|---|---|---|---|---|\n")
        for s in scaling:
            net = ""
            if "net_ratio" in s:
                net = "%.2f (%.2f -> %.2f µs/entry; empty store %s)" % (
                    s["net_ratio"], s["net_us_per_entry_tenth"], s["net_us_per_entry_full"], fmt(s["start_s"], "s"))
            out.write("| %s | %s | %.2f (%d entries) | %.2f (%d entries) | %.2f | %s |\n" % (
                s["figure"], s["target"], s["us_per_entry_tenth"], s["entries_tenth"],
                s["us_per_entry_full"], s["entries_full"], s["ratio"], net))
        reads = [s for s in scaling if "reads_full" in s]
        if reads:
            out.write("\n| cold GC, disk reads | target | reads at 1/10 (per 1k entries) | reads full (per 1k entries) "
                      "| full ÷ 1/10 per entry | µs per read, 1/10 → full |\n|---|---|---|---|---|---|\n")
            for s in reads:
                out.write("| gc_cold | %s | %d (%.1f) | %d (%.1f) | %.2f | %.0f → %.0f |\n" % (
                    s["target"], s["reads_tenth"], s["reads_per_kentry_tenth"], s["reads_full"],
                    s["reads_per_kentry_full"], s["reads_per_kentry_full"] / s["reads_per_kentry_tenth"],
                    s["us_per_read_tenth"], s["us_per_read_full"]))
    if targets:
        out.write("\n| issue-7 target | goal | measured | met |\n|---|---|---|---|\n")
        for t in targets:
            out.write("| %s | %s | %s | %s |\n" % (t["target"], t["goal"], t["value"], "yes" if t["met"] else "**no**"))
    loads = ", ".join("%s %s" % (k[len("load_before_"):], v) for k, v in meta.items() if k.startswith("load_before_"))
    out.write("\nload average: %s at start, %s at end; 1-minute load before each figure: %s\n" % (
        meta.get("load_at_start"), meta.get("load_at_end"), loads))

    if a.out:
        with open(a.out, "w") as f:
            json.dump({"meta": meta, "figures": figures, "scaling": scaling, "targets": targets}, f, indent=2)
            f.write("\n")
        out.write("wrote %s\n" % a.out)


if __name__ == "__main__":
    main()
