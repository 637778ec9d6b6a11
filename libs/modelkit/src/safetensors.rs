//! safetensors checkpoints (Hugging Face's format): memory-mapped, tensors read as f32
//! whatever their stored float type.

use std::{fs::File, path::Path};

use safetensors::{Dtype, SafeTensors, tensor::Metadata};

/// What can be wrong with a safetensors file.
#[derive(Debug, thiserror::Error)]
pub enum SafetensorsError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a valid safetensors file: {reason}")]
    Invalid { path: String, reason: String },
    #[error("tensor {0:?} is not in the checkpoint")]
    Missing(String),
    #[error("tensor {name:?} is {dtype:?}, not a float type")]
    NotFloat { name: String, dtype: Dtype },
    #[error("tensor {name:?} has shape {found:?}, expected {expected:?}")]
    Shape {
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
}

/// An open checkpoint: the mapped file and its header, parsed once.
pub struct SafetensorsFile {
    path: String,
    map: memmap2::Mmap,
    /// Where the tensor data starts (after the length prefix and the JSON header).
    data_start: usize,
    metadata: Metadata,
}

impl std::fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SafetensorsFile {
    /// Maps the file and checks its header.
    pub fn open(path: &Path) -> Result<SafetensorsFile, SafetensorsError> {
        let shown = path.display().to_string();
        let io = |source| SafetensorsError::Io {
            path: shown.clone(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let map = crate::mmap::map_read_only(&file).map_err(io)?;
        // read_metadata also checks that every tensor's bytes lie inside the file.
        let (header_len, metadata) =
            SafeTensors::read_metadata(&map).map_err(|err| SafetensorsError::Invalid {
                path: shown.clone(),
                reason: err.to_string(),
            })?;
        Ok(SafetensorsFile {
            path: shown,
            map,
            data_start: 8 + header_len,
            metadata,
        })
    }

    /// Every tensor's name and shape.
    pub fn names(&self) -> Vec<(String, Vec<usize>)> {
        self.metadata
            .tensors()
            .into_iter()
            .map(|(name, info)| (name, info.shape.clone()))
            .collect()
    }

    /// Whether a tensor exists.
    pub fn contains(&self, name: &str) -> bool {
        self.metadata.info(name).is_some()
    }

    /// A tensor as f32, checked against `expected` shape.
    pub fn f32(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>, SafetensorsError> {
        let info = self
            .metadata
            .info(name)
            .ok_or_else(|| SafetensorsError::Missing(name.to_owned()))?;
        if info.shape != expected {
            return Err(SafetensorsError::Shape {
                name: name.to_owned(),
                found: info.shape.clone(),
                expected: expected.to_vec(),
            });
        }
        let (start, end) = info.data_offsets;
        let data = &self.map[self.data_start + start..self.data_start + end];
        Ok(match info.dtype {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            dtype => {
                return Err(SafetensorsError::NotFloat {
                    name: name.to_owned(),
                    dtype,
                });
            }
        })
    }
}
