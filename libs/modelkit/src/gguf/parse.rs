//! The parser: a cursor over the file's bytes that checks every read.

use std::collections::BTreeMap;

use super::{GgmlType, GgufError, TensorInfo, Value, ValueType};

pub(crate) struct Parsed {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    pub data_start: usize,
}

/// GGUF allows arrays of arrays; real files nest at most once. Deeper nesting is
/// rejected so a hostile file cannot exhaust the stack.
const MAX_ARRAY_DEPTH: u32 = 4;

/// Tensors have at most 4 dimensions in ggml; allow a little slack.
const MAX_DIMS: u32 = 8;

const DEFAULT_ALIGNMENT: u64 = 32;

pub(crate) fn parse(bytes: &[u8]) -> Result<Parsed, GgufError> {
    let mut cursor = Cursor { bytes, pos: 0 };
    let magic: [u8; 4] = cursor.take(4, "magic")?.try_into().unwrap_or_default();
    if &magic != b"GGUF" {
        return Err(GgufError::NotGguf(magic));
    }
    let version = cursor.u32("version")?;
    if version != 3 {
        return Err(GgufError::UnsupportedVersion(version));
    }
    let tensor_count = cursor.u64("tensor count")?;
    let kv_count = cursor.u64("metadata count")?;
    // Each entry takes at least 12 (kv) or 24 (tensor info) bytes: a count beyond what
    // the file could hold is corruption, caught before allocating for it.
    cursor.check_count(kv_count, 12, "metadata entries")?;
    cursor.check_count(tensor_count, 24, "tensor infos")?;

    let mut metadata = BTreeMap::new();
    for _ in 0..kv_count {
        let key = cursor.string("metadata key")?;
        let type_id = cursor.u32("value type")?;
        let value_type =
            ValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownValueType {
                key: key.clone(),
                type_id,
            })?;
        let value = cursor.value(&key, value_type, 0)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(GgufError::Malformed(format!(
                "metadata key {key:?} appears twice"
            )));
        }
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(value) => match value.as_u64() {
            Some(alignment) if alignment > 0 && alignment.is_power_of_two() => alignment,
            _ => {
                return Err(GgufError::Malformed(format!(
                    "general.alignment must be a power of two, found {value}"
                )));
            }
        },
    };

    let mut tensors: Vec<TensorInfo> = Vec::new();
    for _ in 0..tensor_count {
        let name = cursor.string("tensor name")?;
        let n_dims = cursor.u32("tensor dimension count")?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(GgufError::Malformed(format!(
                "tensor {name:?} has {n_dims} dimensions"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(cursor.u64("tensor dimension")?);
        }
        if dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .is_none()
        {
            return Err(GgufError::Malformed(format!(
                "tensor {name:?} has dimensions {dims:?} whose product overflows"
            )));
        }
        let ggml_type = GgmlType::from_id(cursor.u32("tensor type")?);
        let offset = cursor.u64("tensor offset")?;
        if offset % alignment != 0 {
            return Err(GgufError::Malformed(format!(
                "tensor {name:?} starts at offset {offset}, not a multiple of the alignment {alignment}"
            )));
        }
        if tensors.iter().any(|tensor| tensor.name == name) {
            return Err(GgufError::Malformed(format!(
                "tensor {name:?} appears twice"
            )));
        }
        tensors.push(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
        });
    }

    let data_start = cursor
        .pos
        .div_ceil(alignment as usize)
        .saturating_mul(alignment as usize);
    if data_start > bytes.len() && !tensors.is_empty() {
        return Err(GgufError::Truncated {
            what: "data section".to_owned(),
            offset: cursor.pos,
            needed: (data_start - cursor.pos) as u64,
            available: bytes.len() - cursor.pos,
        });
    }
    Ok(Parsed {
        version,
        metadata,
        tensors,
        alignment,
        data_start,
    })
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], GgufError> {
        let truncated = || GgufError::Truncated {
            what: what.to_owned(),
            offset: self.pos,
            needed: n,
            available: self.remaining(),
        };
        let n = usize::try_from(n).map_err(|_| truncated())?;
        let end = self.pos.checked_add(n).ok_or_else(truncated)?;
        let slice = self.bytes.get(self.pos..end).ok_or_else(truncated)?;
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let slice = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn check_count(&self, count: u64, min_size: u64, what: &str) -> Result<(), GgufError> {
        if count.saturating_mul(min_size) > self.remaining() as u64 {
            return Err(GgufError::Malformed(format!(
                "the file announces {count} {what}, more than its {} remaining bytes can hold",
                self.remaining()
            )));
        }
        Ok(())
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| GgufError::InvalidUtf8 {
            what: what.to_owned(),
        })
    }

    fn value(&mut self, key: &str, value_type: ValueType, depth: u32) -> Result<Value, GgufError> {
        Ok(match value_type {
            ValueType::U8 => Value::U8(u8::from_le_bytes(self.array(key)?)),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.array(key)?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(key)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(key)?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.array(key)?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(key)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.array(key)?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            ValueType::Bool => match self.array::<1>(key)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                other => {
                    return Err(GgufError::Malformed(format!(
                        "metadata {key:?}: {other} is not a bool"
                    )));
                }
            },
            ValueType::String => Value::String(self.string(key)?),
            ValueType::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::Malformed(format!(
                        "metadata {key:?} nests arrays deeper than {MAX_ARRAY_DEPTH}"
                    )));
                }
                let type_id = self.u32(key)?;
                let item_type =
                    ValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownValueType {
                        key: key.to_owned(),
                        type_id,
                    })?;
                let count = self.u64(key)?;
                self.check_count(count, item_type.min_size(), &format!("items of {key:?}"))?;
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(key, item_type, depth + 1)?);
                }
                Value::Array(item_type, items)
            }
        })
    }
}
