//! Wiring: starts the engine, watchers, API and jobs, and waits on them.

pub mod dev;

use std::{path::Path, process::ExitCode};

/// `rekey serve --config FILE`
pub async fn serve(_config: &Path) -> anyhow::Result<ExitCode> {
    anyhow::bail!("serve: not wired yet")
}
