//! The model toolkit: reads model files (GGUF, safetensors), writes ONNX graphs for
//! them (a Llama decoder, a BERT sentence encoder), builds their tokenizers and chat
//! prompts, and assembles the model packages inference serves; the graphs may use our
//! own ONNX Runtime operators (`slough-operators`). Must not depend on any
//! service crate or on the bus: it is a plain library used by `slough` and inference.

pub mod bert;
pub mod chat;
pub mod checkpoint;
pub mod gguf;
pub mod llama;
mod mmap;
pub mod onnx;
pub mod package;
pub mod safetensors;
pub mod tokenizer;
