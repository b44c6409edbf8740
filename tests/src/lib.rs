//! Test harness for podcr: a private containerd per test run, locally built images, `ctr` and CRI
//! helpers, and cleanup that runs whether tests pass or fail.
//!
//! A test typically does:
//!
//! ```no_run
//! use podcr_tests::{images, Containerd, Runtime};
//! let cd = Containerd::shared()?;                  // one containerd per test binary
//! let ns = cd.namespace("stdout");                 // own namespace, cleaned up on drop
//! let image = ns.import(&images::BUSYBOX)?;
//! let out = ns.ctr().run(["run", "--rm", "--runtime", Runtime::Podcr.runtime_type(), &image, "c1", "echo", "hi"])?;
//! assert_eq!(out.stdout.trim(), "hi");
//! # anyhow::Ok(())
//! ```

/// Generates `<case>::runc` and `<case>::podcr` tests from `fn <case>(Runtime) -> Result<()>`:
/// every behaviour is checked on runc.v2, the reference, and on podcr with the same assertions.
#[macro_export]
macro_rules! both_runtimes {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[test]
            fn runc() -> anyhow::Result<()> {
                super::$case($crate::Runtime::Runc)
            }
            #[test]
            fn podcr() -> anyhow::Result<()> {
                super::$case($crate::Runtime::Podcr)
            }
        }
    )*};
}

pub mod cleanup;
pub mod cmd;
pub mod containerd;
pub mod cri;
pub mod cri_pod;
pub mod faults;
pub mod images;
pub mod node_config;
pub mod pods;
pub mod procs;
pub mod upstream;
pub mod wait;

use std::path::PathBuf;

use anyhow::{Context, Result};

pub use cmd::{Output, Running};
pub use containerd::{Containerd, Ctr, Installed, Runtime, TaskInfo, TestNs, CRI_NAMESPACE};
pub use images::{Helper, ImageSpec};
pub use wait::{wait_for, wait_until};

/// `<target>/<profile>`: where cargo put this test binary's sibling binaries (the shim). Test binaries
/// live in `<target>/<profile>/deps/`.
pub fn target_profile_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("current_exe")?;
    let deps = exe.parent().context("test binary has no parent dir")?;
    Ok(if deps.ends_with("deps") { deps.parent().unwrap().to_path_buf() } else { deps.to_path_buf() })
}

/// The cargo target dir (parent of the profile dir).
pub fn target_dir() -> Result<PathBuf> {
    Ok(target_profile_dir()?.parent().context("profile dir has no parent")?.to_path_buf())
}
