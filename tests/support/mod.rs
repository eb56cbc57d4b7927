//! Shared integration-test support: synthetic OCI images and a real registry.
//!
//! Each test binary pulls this in with `mod support;`; not every binary uses every
//! helper, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod fixtures;
pub mod mount;
pub mod oci;
pub mod overlay_model;
pub mod pause;
pub mod registry;
pub mod release;
pub mod signed;
pub mod tarfile;
pub mod tree;
