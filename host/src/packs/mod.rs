//! Packs: manifests, bundle archives, catalogs, installation and the
//! in-memory registry of what is installed (topics, components).

pub mod archive;
pub mod catalog;
pub mod install;
pub mod manifest;
pub mod market;
pub mod overlay;
pub mod plugins;
pub mod registry;
pub mod runner;
pub mod service;
pub mod signing;

pub use registry::{InstalledPack, PackRecord, PackRegistry, TopicEntry};
