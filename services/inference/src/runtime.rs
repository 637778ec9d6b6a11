//! ONNX Runtime: finding and loading libonnxruntime, and building sessions on the
//! execution providers the configuration asks for.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use ort::{
    environment::Environment,
    ep::{self, ExecutionProvider as _},
    session::{Session, builder::GraphOptimizationLevel},
};

use crate::config::{OnUnavailable, Provider, RuntimeConfig};

/// Why the runtime or a session could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "libonnxruntime not found at {0} (run scripts/setup, or set ORT_DYLIB_PATH or inference.runtime.library)"
    )]
    Missing(PathBuf),
    #[error("cannot load {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("execution provider {provider} is not available: {reason}")]
    ProviderUnavailable {
        provider: &'static str,
        reason: String,
    },
    #[error("cannot load {model}: {reason}")]
    Session { model: String, reason: String },
}

/// The loaded library and how sessions are built.
#[derive(Clone)]
pub struct Runtime {
    environment: Arc<Environment>,
    config: RuntimeConfig,
    tensorrt_cache: PathBuf,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Where libonnxruntime is looked for: the setting, `ORT_DYLIB_PATH`, then setup's copy.
fn library_path(config: &RuntimeConfig, data_dir: &Path) -> PathBuf {
    config
        .library
        .clone()
        .or_else(|| std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from))
        .unwrap_or_else(|| data_dir.join("runtime/libonnxruntime.so"))
}

/// The process's ONNX Runtime environment. The library can be loaded only once per
/// process, so the first successful load is shared (several inference services in one
/// process, as tests run them, use it together).
fn environment(path: &Path) -> Result<Arc<Environment>, RuntimeError> {
    static LOADED: Mutex<Option<(PathBuf, Arc<Environment>)>> = Mutex::new(None);
    let mut loaded = LOADED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((first, environment)) = loaded.as_ref() {
        if first != path {
            tracing::warn!(
                loaded = %first.display(),
                asked = %path.display(),
                "ONNX Runtime is already loaded in this process; using the loaded library"
            );
        }
        return Ok(environment.clone());
    }
    if !path.exists() {
        return Err(RuntimeError::Missing(path.to_path_buf()));
    }
    let load = |reason: String| RuntimeError::Load {
        path: path.to_path_buf(),
        reason,
    };
    let environment = ort::init_from(path)
        .map_err(|err| load(err.to_string()))?
        .with_name("slough-inference")
        .build()
        .map_err(|err| load(err.to_string()))?;
    tracing::info!(library = %path.display(), "ONNX Runtime loaded");
    let environment = Arc::new(environment);
    *loaded = Some((path.to_path_buf(), environment.clone()));
    Ok(environment)
}

impl Runtime {
    /// Loads libonnxruntime (once per process; later calls reuse it). A library older
    /// than the API `ort` needs is refused with both versions named.
    pub fn load(config: &RuntimeConfig, data_dir: &Path) -> Result<Runtime, RuntimeError> {
        let path = library_path(config, data_dir);
        let environment = environment(&path)?;
        Ok(Runtime {
            environment,
            config: config.clone(),
            tensorrt_cache: config
                .tensorrt_cache_dir
                .clone()
                .unwrap_or_else(|| data_dir.join("cache/tensorrt")),
        })
    }

    /// Builds a session for `model_file` on the first provider (in the configured order)
    /// that can take it; returns the session and the provider it runs on.
    pub fn session(&self, model_file: &Path) -> Result<(Session, Provider), RuntimeError> {
        let shown = model_file.display().to_string();
        let mut last_error = None;
        for &provider in &self.config.providers {
            match self.session_on(model_file, provider) {
                Ok(session) => {
                    tracing::info!(model = %shown, provider = provider.name(), "session ready");
                    return Ok((session, provider));
                }
                Err(err) if self.config.on_unavailable == OnUnavailable::Fallback => {
                    tracing::warn!(model = %shown, provider = provider.name(), "{err}; trying the next provider");
                    last_error = Some(err);
                }
                Err(err) => return Err(err),
            }
        }
        Err(last_error.unwrap_or_else(|| RuntimeError::Session {
            model: shown,
            reason: "no execution provider configured".to_owned(),
        }))
    }

    fn session_on(&self, model_file: &Path, provider: Provider) -> Result<Session, RuntimeError> {
        let shown = model_file.display().to_string();
        let session_error = |reason: String| RuntimeError::Session {
            model: shown.clone(),
            reason,
        };
        let unavailable = |reason: String| RuntimeError::ProviderUnavailable {
            provider: provider.name(),
            reason,
        };
        let mut builder = Session::builder(&self.environment)
            .map_err(|err| session_error(err.to_string()))?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|err| session_error(err.to_string()))?;
        builder = builder
            .with_intra_op_spinning(self.config.intra_op_spinning)
            .map_err(|err| session_error(err.to_string()))?;
        // The graphs modelkit writes may use its own operators.
        let operators = slough_operators::domain().map_err(|err| session_error(err.to_string()))?;
        builder = builder
            .with_operators(operators)
            .map_err(|err| session_error(err.to_string()))?;
        if self.config.intra_threads > 0 {
            builder = builder
                .with_intra_threads(self.config.intra_threads)
                .map_err(|err| session_error(err.to_string()))?;
        }
        match provider {
            Provider::Cpu => {}
            Provider::Cuda => {
                if !ep::CUDA::is_available().unwrap_or(false) {
                    return Err(unavailable(
                        "this libonnxruntime was built without CUDA (install the onnxruntime-gpu wheel's library)".to_owned(),
                    ));
                }
                ep::CUDA::default()
                    .with_device_id(self.config.device_id)
                    .register(&mut builder)
                    .map_err(|err| unavailable(err.to_string()))?;
            }
            Provider::Tensorrt => {
                if !ep::TensorRT::is_available().unwrap_or(false) {
                    return Err(unavailable(
                        "this libonnxruntime was built without TensorRT (install the onnxruntime-gpu wheel's library)".to_owned(),
                    ));
                }
                std::fs::create_dir_all(&self.tensorrt_cache)
                    .map_err(|err| unavailable(format!("cannot create the engine cache: {err}")))?;
                ep::TensorRT::default()
                    .with_device_id(self.config.device_id)
                    .with_fp16(self.config.tensorrt_fp16)
                    .with_engine_cache(true)
                    .with_engine_cache_path(self.tensorrt_cache.display())
                    .with_timing_cache(true)
                    .with_timing_cache_path(self.tensorrt_cache.display())
                    .register(&mut builder)
                    .map_err(|err| unavailable(err.to_string()))?;
            }
        }
        slough_operators::create_session(|| builder.commit_from_file(model_file))
            .map_err(|err| session_error(err.to_string()))
    }
}
