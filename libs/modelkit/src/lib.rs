//! The model toolkit: reads model files (GGUF today), and will build the ONNX model
//! packages that inference serves. Must not depend on any service crate or on the bus:
//! it is a plain library used by the `slough` command and by inference.

pub mod bert;
pub mod chat;
pub mod gguf;
pub mod llama;
mod mmap;
pub mod onnx;
pub mod package;
pub mod safetensors;
pub mod tokenizer;
