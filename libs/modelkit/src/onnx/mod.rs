//! Writing ONNX models ourselves: the protobuf messages (the subset of `onnx.proto` we
//! emit), a small graph builder, and the mapping of ggml weight blocks onto
//! onnxruntime's `MatMulNBits` (see `shared/notes/onnx-llama.md`) or our own
//! `BlockMatMul` and `BlockGather` (see [`slough_operators`]).

pub mod graph;
pub mod nbits;
pub mod proto;

pub use graph::{Attr, Dim, GraphBuilder};
