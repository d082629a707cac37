//! `--run-dir`: a local directory, or a URL of an object store (`s3://`, `gs://`, `az://`,
//! `file://`) whose local working copy the commands work on.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sspo_engine::remote::sync::{self, PullMode};
use sspo_engine::remote::{is_url, RemoteLocation, RemoteRun};

use crate::cli::Failure;

/// A run directory, opened.
pub(crate) struct RunDir {
    /// Where the commands read and write: the directory itself, or the working copy.
    pub(crate) local: PathBuf,
    pub(crate) remote: Option<Arc<RemoteRun>>,
}

impl RunDir {
    /// The run directory as the user named it (the URL for an object store).
    pub(crate) fn shown(&self) -> String {
        match &self.remote {
            Some(r) => r.url().to_string(),
            None => self.local.display().to_string(),
        }
    }
}

/// Opens `dir`: a URL names an object store, reached with the cloud's environment
/// variables, with its working copy in `cache_dir` (or the default cache directory).
pub(crate) fn open(dir: &Path, cache_dir: Option<&Path>) -> Result<RunDir, Failure> {
    let text = dir.to_string_lossy();
    if !is_url(&text) {
        return Ok(RunDir {
            local: dir.to_path_buf(),
            remote: None,
        });
    }
    let location = RemoteLocation::parse(&text).map_err(|e| Failure::error(2, &e))?;
    let local = match cache_dir {
        Some(d) => d.to_path_buf(),
        None => location.default_cache_dir(|k| std::env::var(k).ok()),
    };
    let remote = RemoteRun::open(&location, local.clone()).map_err(|e| Failure::error(1, &e))?;
    Ok(RunDir {
        local,
        remote: Some(remote),
    })
}

/// Opens `dir` for a command that only reads it (`status`, `sql`, `show`, `verify`,
/// `export`): an object store's manifests and the files they list are fetched into the
/// working copy first. No lease is taken, so this reads while a run writes; a file
/// deleted under it fails the read, which can then be run again.
pub(crate) fn open_for_reading(dir: &Path, cache_dir: Option<&Path>) -> Result<RunDir, Failure> {
    let run_dir = open(dir, cache_dir)?;
    if let Some(remote) = &run_dir.remote {
        sync::pull_logged(remote, PullMode::Add, &|line| eprintln!("{line}"))
            .map_err(|e| Failure::error(1, &e))?;
    }
    Ok(run_dir)
}
