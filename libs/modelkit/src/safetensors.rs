//! safetensors checkpoints (Hugging Face's format): memory-mapped, tensors read as f32
//! whatever their stored float type.

use std::{fs::File, path::Path};

use safetensors::{Dtype, SafeTensors};

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

/// An open checkpoint.
pub struct SafetensorsFile {
    path: String,
    map: memmap2::Mmap,
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
        let opened = SafetensorsFile { path: shown, map };
        opened.parsed()?;
        Ok(opened)
    }

    fn parsed(&self) -> Result<SafeTensors<'_>, SafetensorsError> {
        SafeTensors::deserialize(&self.map).map_err(|err| SafetensorsError::Invalid {
            path: self.path.clone(),
            reason: err.to_string(),
        })
    }

    /// Whether a tensor exists.
    pub fn contains(&self, name: &str) -> bool {
        self.parsed()
            .is_ok_and(|tensors| tensors.tensor(name).is_ok())
    }

    /// A tensor as f32, checked against `expected` shape.
    pub fn f32(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>, SafetensorsError> {
        let tensors = self.parsed()?;
        let view = tensors
            .tensor(name)
            .map_err(|_| SafetensorsError::Missing(name.to_owned()))?;
        if view.shape() != expected {
            return Err(SafetensorsError::Shape {
                name: name.to_owned(),
                found: view.shape().to_vec(),
                expected: expected.to_vec(),
            });
        }
        let data = view.data();
        Ok(match view.dtype() {
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
