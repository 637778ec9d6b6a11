//! The GGUF reader: every value type and tensor type round-trips through the writer,
//! corrupt and truncated files give errors that name the problem (never a panic, also
//! for random bytes), and, when the setup has fetched it, the real SmolLM2 file reads.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]

use proptest::prelude::*;
use slough_modelkit::gguf::{
    GgmlType, GgufError, GgufFile, Value, ValueType, quant, writer::GgufWriter,
};

fn sample() -> GgufWriter {
    let weights: Vec<f32> = (0..64).map(|i| (i as f32 - 32.0) / 8.0).collect();
    GgufWriter::new()
        .metadata("general.architecture", Value::String("llama".into()))
        .metadata("u8", Value::U8(7))
        .metadata("i8", Value::I8(-7))
        .metadata("u16", Value::U16(700))
        .metadata("i16", Value::I16(-700))
        .metadata("u32", Value::U32(70_000))
        .metadata("i32", Value::I32(-70_000))
        .metadata("f32", Value::F32(1e-5))
        .metadata("bool", Value::Bool(true))
        .metadata("u64", Value::U64(1 << 40))
        .metadata("i64", Value::I64(-(1 << 40)))
        .metadata("f64", Value::F64(10_000.0))
        .metadata(
            "tokens",
            Value::Array(
                ValueType::String,
                vec![Value::String("a".into()), Value::String("é".into())],
            ),
        )
        .metadata(
            "nested",
            Value::Array(
                ValueType::Array,
                vec![Value::Array(
                    ValueType::I32,
                    vec![Value::I32(1), Value::I32(2)],
                )],
            ),
        )
        .metadata("empty", Value::Array(ValueType::U32, vec![]))
        .tensor(
            "f32",
            &[4, 2],
            GgmlType::F32,
            quant::quantize(GgmlType::F32, &weights[..8]).unwrap(),
        )
        .tensor(
            "q8",
            &[32, 2],
            GgmlType::Q8_0,
            quant::quantize(GgmlType::Q8_0, &weights).unwrap(),
        )
        .tensor(
            "q4_1",
            &[64],
            GgmlType::Q4_1,
            quant::quantize(GgmlType::Q4_1, &weights).unwrap(),
        )
}

#[test]
fn every_value_and_tensor_type_round_trips() {
    let file = GgufFile::from_bytes(sample().to_bytes()).unwrap();
    assert_eq!(file.version(), 3);
    assert_eq!(file.alignment(), 32);
    assert_eq!(file.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(file.get_u64("u8").unwrap(), 7);
    assert_eq!(file.get("i8").unwrap(), &Value::I8(-7));
    assert_eq!(file.get_u64("u16").unwrap(), 700);
    assert_eq!(file.get("i16").unwrap().as_i64(), Some(-700));
    assert_eq!(file.get_u64("u32").unwrap(), 70_000);
    assert_eq!(file.get("i32").unwrap().as_i64(), Some(-70_000));
    assert_eq!(file.get_f32("f32").unwrap(), 1e-5);
    assert_eq!(file.get("bool").unwrap().as_bool(), Some(true));
    assert_eq!(file.get_u64("u64").unwrap(), 1 << 40);
    assert_eq!(file.get("i64").unwrap().as_i64(), Some(-(1 << 40)));
    assert_eq!(file.get_f32("f64").unwrap(), 10_000.0);
    assert_eq!(file.get_str_array("tokens").unwrap(), vec!["a", "é"]);
    assert_eq!(
        file.get("nested").unwrap().as_array().unwrap()[0]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        file.get("empty").unwrap(),
        &Value::Array(ValueType::U32, vec![])
    );

    let names: Vec<&str> = file.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["f32", "q8", "q4_1"]);
    for tensor in file.tensors() {
        assert_eq!(tensor.offset % 32, 0, "{} is aligned", tensor.name);
    }
    let f32s = file.dequantize(file.tensor("f32").unwrap()).unwrap();
    assert_eq!(
        f32s,
        (0..8).map(|i| (i as f32 - 32.0) / 8.0).collect::<Vec<_>>()
    );
    let q8 = file.tensor("q8").unwrap();
    assert_eq!(q8.byte_size(), Some(68));
    assert_eq!(file.tensor_bytes(q8).unwrap().len(), 68);
    let q8_values = file.dequantize(q8).unwrap();
    assert!((q8_values[63] - 31.0 / 8.0).abs() < 0.02);
}

#[test]
fn wrong_types_and_missing_things_are_named() {
    let file = GgufFile::from_bytes(sample().to_bytes()).unwrap();
    let err = file
        .get_u64("general.architecture")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("general.architecture") && err.contains("\"llama\""),
        "{err}"
    );
    assert!(
        matches!(file.get_u64("i8"), Err(GgufError::WrongType { .. })),
        "negative is not a u64"
    );
    assert!(
        file.get_str("nope")
            .unwrap_err()
            .to_string()
            .contains("\"nope\" is missing")
    );
    assert!(
        file.tensor("blk.9.attn_q.weight")
            .unwrap_err()
            .to_string()
            .contains("blk.9.attn_q.weight")
    );
}

#[test]
fn corrupt_files_give_clear_errors() {
    let good = sample().to_bytes();

    let mut bad_magic = good.clone();
    bad_magic[0] = b'X';
    assert!(matches!(
        GgufFile::from_bytes(bad_magic),
        Err(GgufError::NotGguf(_))
    ));

    let mut v2 = good.clone();
    v2[4] = 2;
    assert!(
        GgufFile::from_bytes(v2)
            .unwrap_err()
            .to_string()
            .contains("version 2")
    );

    // Cut so early that the announced entries cannot fit: refused up front.
    let err = GgufFile::from_bytes(good[..60].to_vec()).unwrap_err();
    assert!(
        err.to_string().contains("announces 15 metadata entries"),
        "{err}"
    );

    // Cut inside the metadata: truncated, naming what was being read.
    let at = good.windows(6).position(|w| w == b"nested").unwrap() + 10;
    let err = GgufFile::from_bytes(good[..at].to_vec()).unwrap_err();
    assert!(matches!(err, GgufError::Truncated { .. }), "{err}");
    assert!(err.to_string().contains("nested"), "{err}");

    // Cut inside the tensor data: the header parses, the tensor read fails.
    let short = GgufFile::from_bytes(good[..good.len() - 10].to_vec()).unwrap();
    let err = short.dequantize(short.tensor("q4_1").unwrap()).unwrap_err();
    assert!(
        err.to_string().contains("q4_1") && err.to_string().contains("outside"),
        "{err}"
    );

    // A count far beyond the file's size is refused before allocating.
    let mut huge = good.clone();
    huge[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(
        GgufFile::from_bytes(huge)
            .unwrap_err()
            .to_string()
            .contains("announces")
    );

    // An unsupported tensor type opens, and names the type when read.
    let other = GgufWriter::new()
        .tensor("iq2", &[256], GgmlType::Other(16), vec![0; 66])
        .to_bytes();
    let file = GgufFile::from_bytes(other).unwrap();
    let err = file
        .dequantize(file.tensor("iq2").unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ggml type 16") && err.contains("not supported"),
        "{err}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random bytes after a valid magic and version: any outcome but a panic.
    #[test]
    fn random_headers_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut bytes = b"GGUF".to_vec();
        bytes.extend(3u32.to_le_bytes());
        bytes.extend(tail);
        if let Ok(file) = GgufFile::from_bytes(bytes) {
            for tensor in file.tensors() {
                let _ = file.dequantize(tensor);
            }
        }
    }

    /// A valid file with some bytes flipped or cut short: any outcome but a panic.
    #[test]
    fn damaged_files_never_panic(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), cut in any::<prop::sample::Index>()) {
        let mut bytes = sample().to_bytes();
        for (at, value) in flips {
            let at = at.index(bytes.len());
            bytes[at] = value;
        }
        bytes.truncate(cut.index(bytes.len() + 1).max(1));
        if let Ok(file) = GgufFile::from_bytes(bytes) {
            for tensor in file.tensors() {
                let _ = file.dequantize(tensor);
            }
        }
    }
}
