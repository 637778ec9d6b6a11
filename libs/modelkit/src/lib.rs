//! The model toolkit: reads model files (GGUF, safetensors), writes ONNX graphs for
//! them (a Llama decoder, a BERT sentence encoder), builds their tokenizers and chat
//! prompts, and assembles the model packages inference serves; its own ONNX Runtime
//! operators (`kernels`) run inside those graphs. Must not depend on any
//! service crate or on the bus: it is a plain library used by `slough` and inference.

pub mod bert;
pub mod chat;
pub mod checkpoint;
pub mod gguf;
#[allow(
    unsafe_code,
    reason = "SIMD intrinsics, and one output written by several threads"
)]
pub mod kernels;
pub mod llama;
mod mmap;
pub mod onnx;
pub mod package;
pub mod safetensors;
pub mod tokenizer;
