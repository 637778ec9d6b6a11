//! The packages of a models directory: listing them, removing one, recording a
//! package's measured quality, finding a package's source again, and writing a
//! classifier package over an embedding model.

use std::{
    fs,
    path::{Path, PathBuf},
};

use crate::llama::BuildOptions;

use super::{
    PackageError, Quiet,
    import::{sha256_file, validate_id},
    io,
    manifest::*,
};

/// Where a package's weights came from, to read them again (the trainer): the path
/// recorded at import, else a file of the same name under `fallback_dir` (where
/// `scripts/fetch-assets` puts the default models' sources), if either exists.
pub fn source_path(manifest: &Manifest, fallback_dir: &Path) -> Option<PathBuf> {
    let recorded = manifest.source.path.as_ref().map(PathBuf::from);
    let fallback = match manifest.source.format.as_str() {
        "gguf" => fallback_dir.join(&manifest.source.file),
        _ => fallback_dir.join(&manifest.id),
    };
    recorded.into_iter().chain([fallback]).find(|p| p.exists())
}

/// The file a classifier package keeps its head in: `weight` `[labels, dimensions]` and
/// `bias` `[labels]`, f32.
pub const CLASSIFIER_WEIGHTS: &str = "classifier.safetensors";

/// Writes a classifier package `id` over the embedding model `parent` (its manifest
/// gives the context length): `tensors` hold `weight` and `bias`, `labels` name the
/// rows. Staged beside the target and renamed into place, as imports are.
pub fn write_classifier(
    models_dir: &Path,
    id: &str,
    parent: &Manifest,
    labels: Vec<String>,
    tensors: &std::collections::BTreeMap<String, crate::checkpoint::FloatTensor>,
) -> Result<Manifest, PackageError> {
    validate_id(id)?;
    let target = models_dir.join(id);
    if target.exists() {
        return Err(PackageError::Conflict {
            id: id.to_owned(),
            existing: "a package of that id".to_owned(),
        });
    }
    let staging = tempfile::Builder::new()
        .prefix(&format!(".classifier-{id}-"))
        .tempdir_in(models_dir)
        .map_err(io("cannot create a staging directory"))?;
    let weights = staging.path().join(CLASSIFIER_WEIGHTS);
    crate::checkpoint::write_tensors(&weights, tensors).map_err(|err| PackageError::Manifest {
        path: weights.display().to_string(),
        reason: err.to_string(),
    })?;
    let dimensions = tensors
        .get("weight")
        .map_or(0, |w| w.shape.get(1).copied().unwrap_or(0));
    let manifest = Manifest {
        id: id.to_owned(),
        kind: ModelKind::Classifier,
        architecture: "linear".to_owned(),
        context_length: parent.context_length,
        quantization: "fp32".to_owned(),
        source: Source {
            format: "classifier".to_owned(),
            file: CLASSIFIER_WEIGHTS.to_owned(),
            sha256: sha256_file(&weights, &Quiet)?,
            path: None,
        },
        parent: Some(parent.id.clone()),
        labels: Some(labels.clone()),
        graph: GraphShape {
            layers: 1,
            hidden: dimensions,
            vocab_size: labels.len(),
            kv_heads: None,
            head_dim: None,
        },
        special_tokens: SpecialTokens::default(),
        stop_tokens: Vec::new(),
        chat_template: None,
        default_sampling: None,
        created_at: chrono::Utc::now().to_rfc3339(),
        modelkit_version: env!("CARGO_PKG_VERSION").to_owned(),
        graph_version: GRAPH_VERSION,
        build: BuildOptions::default(),
        quality: None,
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|err| PackageError::Manifest {
        path: MANIFEST.to_owned(),
        reason: err.to_string(),
    })?;
    fs::write(staging.path().join(MANIFEST), json).map_err(io("cannot write the manifest"))?;
    let staged = staging.keep();
    fs::rename(&staged, &target).map_err(io(format!(
        "cannot move the package to {}",
        target.display()
    )))?;
    Ok(manifest)
}

/// Every package in `models_dir`, sorted by id. Directories without a valid manifest
/// (staging leftovers, foreign files) are skipped.
pub fn list(models_dir: &Path) -> Result<Vec<Manifest>, PackageError> {
    let entries = match fs::read_dir(models_dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(io(format!("cannot read {}", models_dir.display()))(err)),
    };
    let mut manifests: Vec<Manifest> = entries
        .filter_map(Result::ok)
        .filter(|entry| !entry.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|entry| read_manifest(&entry.path()).ok())
        .collect();
    manifests.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(manifests)
}

/// The directory of package `id` in `models_dir`. `id` is a package id, never a path
/// (`..`, `/` and absolute paths are refused), so a request naming a model cannot
/// reach outside the models directory.
pub fn package_dir(models_dir: &Path, id: &str) -> Result<PathBuf, PackageError> {
    validate_id(id)?;
    Ok(models_dir.join(id))
}

/// The manifest of package `id` in `models_dir`: [`PackageError::InvalidId`] for what
/// is not an id, [`PackageError::NotFound`] when there is no such package.
pub fn find(models_dir: &Path, id: &str) -> Result<Manifest, PackageError> {
    read_manifest(&package_dir(models_dir, id)?).map_err(|_| PackageError::NotFound(id.to_owned()))
}

/// Removes package `id`: renamed out of sight first, so a reader never sees it half gone.
pub fn remove(models_dir: &Path, id: &str) -> Result<Manifest, PackageError> {
    validate_id(id)?;
    let target = models_dir.join(id);
    let manifest = read_manifest(&target).map_err(|_| PackageError::NotFound(id.to_owned()))?;
    let doomed = models_dir.join(format!(".remove-{id}-{}", std::process::id()));
    fs::rename(&target, &doomed).map_err(io(format!("cannot remove {}", target.display())))?;
    fs::remove_dir_all(&doomed).map_err(io(format!("cannot delete {}", doomed.display())))?;
    Ok(manifest)
}

/// Records `quality` in the manifest of the package in `dir` (written whole to a
/// temporary file, then renamed over the old one).
pub fn record_quality(dir: &Path, quality: Quality) -> Result<Manifest, PackageError> {
    let mut manifest = read_manifest(dir)?;
    manifest.quality = Some(quality);
    let json = serde_json::to_vec_pretty(&manifest).map_err(|err| PackageError::Manifest {
        path: MANIFEST.to_owned(),
        reason: err.to_string(),
    })?;
    let staged = dir.join(format!(".{MANIFEST}.{}", std::process::id()));
    fs::write(&staged, json).map_err(io("cannot write the manifest"))?;
    fs::rename(&staged, dir.join(MANIFEST)).map_err(io("cannot replace the manifest"))?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_package_is_found_by_id_never_by_path() {
        let models = tempfile::tempdir().unwrap();
        for path in ["../models/x", "/etc", "a/b", "..", ".hidden", ""] {
            assert!(
                matches!(find(models.path(), path), Err(PackageError::InvalidId(_))),
                "{path}"
            );
        }
        assert!(matches!(
            find(models.path(), "absent"),
            Err(PackageError::NotFound(_))
        ));
    }
}
