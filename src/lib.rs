//! regfs: a curated, copy-on-write view of docker registry storage.
//!
//! The architecture (README "Layout", and the project's design reference,
//! `shared/DESIGN.md` beside this repository): one [`view`] core shared by
//! the FUSE front end, the kernel front end, GC and export, reading every
//! layer through [`view::Layer`]; [`store`] checks
//! layers and locks upper; [`layout`] knows registry paths; [`sys`] holds
//! the only `unsafe`. Commands depend one way: `cli` → commands →
//! `store`/`view`/`bundle` → `layout`/`sys`.

pub mod absorb;
pub mod apply;
pub mod bundle;
pub mod cli;
pub mod client;
pub mod durability;
pub mod export;
pub mod fuse;
pub mod gc;
pub mod inventory;
pub mod kernel;
pub mod layout;
pub mod mount;
pub mod plan;
pub mod progress;
pub mod push;
pub mod release;
pub mod sample;
pub mod serve;
pub mod store;
pub mod sys;
pub mod testhook;
pub mod util;
pub mod view;
pub mod workdir;
