//! What every `slough` program does around its command: load the settings, start
//! logging (quiet for a one-shot command, whose output is the answer), make the data
//! directory, and end with an exit code that says how the command went. Shared by the
//! `slough` binary and `slough-tools`.

use std::process::ExitCode;

use slough_telemetry::TelemetryGuard;

use crate::Settings;

/// How a command runs.
#[derive(Debug, Clone, Copy)]
pub struct Launch {
    /// Prints its answer and ends: logs only when something is wrong.
    pub one_shot: bool,
    /// Writes under the data directory, so it is made (owner-only) when missing.
    pub makes_data_dir: bool,
}

/// The settings and the logging guard, or the exit code to end with at once (the
/// reason already logged: 2 for settings that do not load).
pub fn start(launch: Launch) -> Result<(Settings, TelemetryGuard), ExitCode> {
    // Load settings first, but report problems only once logging is up.
    let loaded = Settings::load();
    let mut log = loaded
        .as_ref()
        .map(|settings| settings.common.log.clone())
        .unwrap_or_default();
    if launch.one_shot {
        log.level = "warn,qdrant_edge=error".to_owned();
    }
    let telemetry = match slough_telemetry::init("slough", &log) {
        Ok(guard) => guard,
        Err(err) => {
            eprintln!("error: {err}");
            return Err(ExitCode::FAILURE);
        }
    };
    let settings = match loaded {
        Ok(settings) => settings,
        Err(err) => {
            tracing::error!("{err}");
            return Err(ExitCode::from(2));
        }
    };
    if launch.makes_data_dir
        && let Err(err) = settings.common.create_data_dir()
    {
        tracing::error!(
            "cannot create the data directory {}: {err}",
            settings.common.data_dir.display()
        );
        return Err(ExitCode::FAILURE);
    }
    Ok((settings, telemetry))
}

/// The program `name` installed beside this one (as `cargo build` and `cargo install`
/// leave `slough` and `slough-tools`), else the first on `PATH`.
pub fn sibling(name: &str) -> Option<std::path::PathBuf> {
    let beside = std::env::current_exe().ok()?.with_file_name(name);
    if beside.is_file() {
        return Some(beside);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The exit code of a command that ended with `outcome` (an error is logged first).
pub fn finish(outcome: anyhow::Result<()>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}
