//! Command-line tools of the `cordum` binary besides `serve`.
//!
//! `pack`: the pack author's toolchain (scaffold, build, test, sign,
//! publish, install).

pub mod pack;
