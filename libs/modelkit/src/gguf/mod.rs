//! GGUF (version 3) files: the header, every metadata value type, tensor infos and
//! alignment, and tensor data as raw blocks or dequantized to f32. The file is
//! memory-mapped; every offset and count read from it is checked before use, so a
//! truncated or corrupt file is an error, never a panic or a huge allocation.

mod parse;
pub mod quant;
mod value;
pub mod writer;

use std::{collections::BTreeMap, fs::File, path::Path};

pub use quant::GgmlType;
pub use value::{Value, ValueType};

/// What can be wrong with a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be opened or mapped.
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// The file does not start with `GGUF`.
    #[error("not a GGUF file (starts with {0:02x?}, expected \"GGUF\")")]
    NotGguf([u8; 4]),
    /// A GGUF version other than 3.
    #[error("GGUF version {0} is not supported (only version 3)")]
    UnsupportedVersion(u32),
    /// The file ends before what it announces.
    #[error("file is truncated: {what} at byte {offset} needs {needed} bytes, {available} left")]
    Truncated {
        what: String,
        offset: usize,
        needed: u64,
        available: usize,
    },
    /// A metadata value has a type id GGUF does not define.
    #[error("metadata {key:?} has unknown value type {type_id}")]
    UnknownValueType { key: String, type_id: u32 },
    /// A string is not UTF-8.
    #[error("{what} is not valid UTF-8")]
    InvalidUtf8 { what: String },
    /// A value is malformed (nested too deep, zero alignment, a duplicate, ...).
    #[error("{0}")]
    Malformed(String),
    /// A tensor's data lies outside the file.
    #[error(
        "tensor {name:?} ({bytes} bytes at offset {offset}) lies outside the data section ({available} bytes)"
    )]
    TensorOutOfBounds {
        name: String,
        offset: u64,
        bytes: u64,
        available: usize,
    },
    /// A tensor type this reader does not decode.
    #[error(
        "tensor {name:?} has type {ggml_type}, which is not supported (F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q6_K are)"
    )]
    UnsupportedType { name: String, ggml_type: GgmlType },
    /// A metadata key is missing.
    #[error("metadata key {0:?} is missing")]
    MissingKey(String),
    /// A metadata key has another type than asked for.
    #[error("metadata key {key:?} is {found}, expected {expected}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: String,
    },
    /// No tensor by that name.
    #[error("tensor {0:?} is not in the file")]
    MissingTensor(String),
}

/// A tensor's description: where its data lies and how it is encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// E.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions, innermost (contiguous) first, as GGUF stores them.
    pub dims: Vec<u64>,
    /// How the values are encoded.
    pub ggml_type: GgmlType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// How many values the tensor holds.
    pub fn element_count(&self) -> u64 {
        self.dims.iter().product()
    }

    /// How many bytes its data takes, or `None` for an unknown type or a row length
    /// that is not a whole number of blocks.
    pub fn byte_size(&self) -> Option<u64> {
        let (block_values, block_bytes) = self.ggml_type.block_layout()?;
        let elements = self.element_count();
        if self.dims.first().is_some_and(|row| row % block_values != 0) {
            return None;
        }
        (elements / block_values).checked_mul(block_bytes)
    }
}

/// Where the bytes of a file live.
enum Bytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped(map) => map,
            Bytes::Owned(bytes) => bytes,
        }
    }
}

/// An open GGUF file.
pub struct GgufFile {
    bytes: Bytes,
    version: u32,
    metadata: BTreeMap<String, Value>,
    tensors: Vec<TensorInfo>,
    alignment: u64,
    data_start: usize,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .finish_non_exhaustive()
    }
}

impl GgufFile {
    /// Memory-maps and parses the file at `path`.
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
        let io = |source| GgufError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let map = crate::mmap::map_read_only(&file).map_err(io)?;
        GgufFile::from_bytes_inner(Bytes::Mapped(map))
    }

    /// Parses a file already in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
        GgufFile::from_bytes_inner(Bytes::Owned(bytes))
    }

    fn from_bytes_inner(bytes: Bytes) -> Result<GgufFile, GgufError> {
        let parsed = parse::parse(bytes.as_slice())?;
        Ok(GgufFile {
            bytes,
            version: parsed.version,
            metadata: parsed.metadata,
            tensors: parsed.tensors,
            alignment: parsed.alignment,
            data_start: parsed.data_start,
        })
    }

    /// The format version (3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Every metadata entry, by key.
    pub fn metadata(&self) -> &BTreeMap<String, Value> {
        &self.metadata
    }

    /// The alignment of the data section and of each tensor (`general.alignment`, 32 by
    /// default).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Every tensor, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.tensors
            .iter()
            .find(|tensor| tensor.name == name)
            .ok_or_else(|| GgufError::MissingTensor(name.to_owned()))
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Result<&Value, GgufError> {
        self.metadata
            .get(key)
            .ok_or_else(|| GgufError::MissingKey(key.to_owned()))
    }

    /// An integer of any width and signedness that fits a u64.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        let value = self.get(key)?;
        value
            .as_u64()
            .ok_or_else(|| wrong_type(key, "a non-negative integer", value))
    }

    /// A float (f32 or f64).
    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        let value = self.get(key)?;
        value
            .as_f32()
            .ok_or_else(|| wrong_type(key, "a float", value))
    }

    /// A string.
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        let value = self.get(key)?;
        value
            .as_str()
            .ok_or_else(|| wrong_type(key, "a string", value))
    }

    /// An array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        let value = self.get(key)?;
        let items = value
            .as_array()
            .ok_or_else(|| wrong_type(key, "an array of strings", value))?;
        items
            .iter()
            .map(|item| {
                item.as_str()
                    .ok_or_else(|| wrong_type(key, "an array of strings", value))
            })
            .collect()
    }

    /// The raw bytes of a tensor (its blocks, as stored).
    pub fn tensor_bytes(&self, tensor: &TensorInfo) -> Result<&[u8], GgufError> {
        let unsupported = || GgufError::UnsupportedType {
            name: tensor.name.clone(),
            ggml_type: tensor.ggml_type,
        };
        let size = tensor.byte_size().ok_or_else(unsupported)?;
        let data = self
            .bytes
            .as_slice()
            .get(self.data_start..)
            .unwrap_or_default();
        let out_of_bounds = || GgufError::TensorOutOfBounds {
            name: tensor.name.clone(),
            offset: tensor.offset,
            bytes: size,
            available: data.len(),
        };
        let start = usize::try_from(tensor.offset).map_err(|_| out_of_bounds())?;
        let len = usize::try_from(size).map_err(|_| out_of_bounds())?;
        let end = start.checked_add(len).ok_or_else(out_of_bounds)?;
        data.get(start..end).ok_or_else(out_of_bounds)
    }

    /// A tensor's values as f32, in storage order (innermost dimension fastest).
    pub fn dequantize(&self, tensor: &TensorInfo) -> Result<Vec<f32>, GgufError> {
        let bytes = self.tensor_bytes(tensor)?;
        quant::dequantize(tensor.ggml_type, bytes).ok_or_else(|| GgufError::UnsupportedType {
            name: tensor.name.clone(),
            ggml_type: tensor.ggml_type,
        })
    }
}

fn wrong_type(key: &str, expected: &'static str, found: &Value) -> GgufError {
    GgufError::WrongType {
        key: key.to_owned(),
        expected,
        found: found.describe(),
    }
}
