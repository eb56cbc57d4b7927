//! The on-unmount release work (`mount --export`): gc, then export, on the
//! view the daemon served, with the commands to finish by hand on failure.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::{MountRequest, layer_args, shown_command};
use crate::export::{self, ExportOptions};
use crate::gc::{self, GcOptions};
use crate::store::Layers;
use crate::view::View;
use std::ffi::OsString;

/// The on-unmount release work: gc, then export to `export`.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub(super) struct Finish {
    pub(super) keep: Option<PathBuf>,
    pub(super) policy: Option<PathBuf>,
    pub(super) export: PathBuf,
    pub(super) delete_untagged: bool,
}

impl Finish {
    pub(super) fn of(req: &MountRequest) -> Option<Finish> {
        req.export.as_ref().map(|export| Finish {
            keep: req.keep.as_ref().map(|k| std::path::absolute(k).unwrap_or_else(|_| k.clone())),
            policy: req.policy.as_ref().map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone())),
            export: std::path::absolute(export).unwrap_or_else(|_| export.clone()),
            delete_untagged: req.delete_untagged,
        })
    }
}

/// The `--export` hook: gc, then export, on the view the daemon served and
/// still holds the upper lock for. The same functions `regfs gc` and
/// `regfs export` run, so a failure can be finished by hand.
pub(super) fn release_on_unmount(view: &View, layers: &Layers, req: &Finish) -> Result<String> {
    let out = &req.export;
    let layers_of = layer_args(&layers.lowers, &layers.upper, req.keep.as_deref(), req.policy.as_deref());
    let mut gc_args: Vec<OsString> = vec!["gc".into()];
    gc_args.extend(layers_of.iter().cloned());
    if req.delete_untagged {
        gc_args.push("--delete-untagged".into());
    }
    let mut export_args: Vec<OsString> = vec!["export".into()];
    export_args.extend(layers_of);
    export_args.extend(["-o".into(), out.into()]);
    let (gc_cmd, export_cmd) = (shown_command(&gc_args), shown_command(&export_args));
    let (_, report) = gc::run(view, &GcOptions { delete_untagged: req.delete_untagged, ..Default::default() }, false)
        .with_context(|| {
        format!(
            "the gc after unmount failed and nothing was exported; the upper {} is intact (gc deletes \
             nothing before its plan is complete, and each deletion is whole). Fix the cause, then run by \
             hand:\n  {gc_cmd}\n  {export_cmd}\nerror",
            layers.upper.display()
        )
    })?;
    for w in &report.warnings {
        tracing::warn!("gc: {w}");
    }
    let exported =
        export::export(view, out, &ExportOptions::default(), &export::BundleSpec::full(out)).with_context(|| {
            format!(
                "the export after unmount failed ({}; no tar was written to {}); the upper {} is intact. Fix \
             the cause, then run by hand:\n  {export_cmd}\nerror",
                report.summary(),
                out.display(),
                layers.upper.display()
            )
        })?;
    Ok(format!("{}; {}", report.summary(), exported.summary()))
}
