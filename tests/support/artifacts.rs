//! Per-test artifact directory `tests/artifacts/<test>/` (git-ignored):
//! process logs, data directories, recordings and the measured figures stay
//! there after the run for a human to inspect.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// One test's artifact directory and its figures report.
pub struct Artifacts {
    /// `tests/artifacts/<test>/`, emptied when the test starts.
    pub dir: PathBuf,
    /// Lines of `figures.txt`, also printed as they are added.
    figures: String,
}

impl Artifacts {
    /// Creates (or empties) the directory for test `name`.
    pub fn new(name: &str) -> Result<Self> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("artifacts")
            .join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot empty {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Artifacts {
            dir,
            figures: String::new(),
        })
    }

    /// The existing directory of a test that has run, keeping its figures,
    /// so more can be appended.
    pub fn reopen(name: &str) -> Result<Self> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("artifacts")
            .join(name);
        let figures = std::fs::read_to_string(dir.join("figures.txt")).unwrap_or_default();
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Artifacts { dir, figures })
    }

    /// A path inside the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A fresh sub-directory.
    pub fn subdir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(dir)
    }

    /// Prints a measured figure and appends it to `figures.txt` at once, so
    /// the figures survive a failing assertion later in the test.
    pub fn figure(&mut self, line: impl AsRef<str>) {
        let line = line.as_ref();
        println!("{line}");
        let _ = writeln!(self.figures, "{line}");
        let _ = std::fs::write(self.dir.join("figures.txt"), &self.figures);
    }
}
