//! Finds the binaries under test in the cargo target directory the test
//! itself was built into, so the tests always run what `cargo build` just
//! produced for the same profile.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Paths of the executables the end-to-end tests start.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `loa-controller`, the system under test's central part.
    pub controller: PathBuf,
    /// `loa-receiver`, started once per simulated loudspeaker pole.
    pub receiver: PathBuf,
}

impl Binaries {
    /// Locates both next to the running test executable
    /// (`target/<profile>/deps/<test>` → `target/<profile>/<bin>`).
    pub fn locate() -> Result<Self> {
        let dir = profile_dir()?;
        Ok(Binaries {
            controller: find(&dir, "loa-controller")?,
            receiver: find(&dir, "loa-receiver")?,
        })
    }
}

/// `target/<profile>` of the running test executable.
pub fn profile_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the running test executable")?;
    let mut dir = exe
        .parent()
        .context("test executable has no directory")?
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    Ok(dir)
}

/// The binary `name` in `target/<profile>`, or an error saying how to build it.
pub fn find(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} not found: run `cargo build --bins` first (the end-to-end tests start the real binaries)",
            path.display()
        );
    }
    Ok(path)
}
