//! Assembling a graph: typed inputs and outputs, weights as initializers, and nodes
//! whose output names are made unique by the builder.

use std::{
    collections::HashMap,
    hash::{Hash as _, Hasher as _},
};

use prost::Message as _;

use super::proto::{
    AttributeProto, AttributeType, DataType, DimensionProto, DimensionValue, GraphProto,
    ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto,
    TensorShapeProto, TensorTypeProto, TypeProto, ValueInfoProto,
};

/// The IR version we write (ONNX 1.16+, onnxruntime 1.17+).
pub const IR_VERSION: i64 = 10;
/// The standard operator set version.
pub const ONNX_OPSET: i64 = 21;
/// onnxruntime's contrib operators (`com.microsoft`).
pub const MS_DOMAIN: &str = "com.microsoft";

/// One dimension of an input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    /// A fixed size.
    Fixed(i64),
    /// A size known only at run time, by name (`batch`, `sequence`).
    Named(String),
}

/// A node attribute.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    Int(i64),
    Float(f32),
    Ints(Vec<i64>),
    Floats(Vec<f32>),
    String(String),
}

/// Builds one graph. Node outputs get unique names derived from the node's name; a
/// weight equal to an earlier one (type, shape and bytes) is stored once.
#[derive(Debug, Default)]
pub struct GraphBuilder {
    graph: GraphProto,
    metadata: Vec<(String, String)>,
    /// Initializers by (type, shape, hash of the bytes), to find equal ones.
    by_content: HashMap<(i32, Vec<i64>, u64), Vec<usize>>,
}

impl GraphBuilder {
    /// An empty graph.
    pub fn new(name: &str) -> GraphBuilder {
        let mut builder = GraphBuilder::default();
        builder.graph.name = name.to_owned();
        builder
    }

    /// Declares a graph input.
    pub fn input(&mut self, name: &str, elem_type: DataType, dims: &[Dim]) {
        self.graph.input.push(value_info(name, elem_type, dims));
    }

    /// Declares a graph output (some node must produce `name`).
    pub fn output(&mut self, name: &str, elem_type: DataType, dims: &[Dim]) {
        self.graph.output.push(value_info(name, elem_type, dims));
    }

    /// Adds a weight whose little-endian bytes are `raw`; returns its name, or the name
    /// of an equal weight added before (a tied embedding and lm_head, say).
    pub fn initializer(
        &mut self,
        name: &str,
        data_type: DataType,
        dims: &[i64],
        raw: Vec<u8>,
    ) -> String {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        raw.hash(&mut hasher);
        let key = (data_type as i32, dims.to_vec(), hasher.finish());
        let same = self.by_content.entry(key).or_default();
        if let Some(&at) = same
            .iter()
            .find(|&&at| self.graph.initializer[at].raw_data == raw)
        {
            return self.graph.initializer[at].name.clone();
        }
        same.push(self.graph.initializer.len());
        self.graph.initializer.push(TensorProto {
            dims: dims.to_vec(),
            data_type: data_type as i32,
            name: name.to_owned(),
            raw_data: raw,
        });
        name.to_owned()
    }

    /// Adds an f32 weight.
    pub fn initializer_f32(&mut self, name: &str, dims: &[i64], values: &[f32]) -> String {
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(name, DataType::Float, dims, raw)
    }

    /// Adds an i64 weight (shapes, axes).
    pub fn initializer_i64(&mut self, name: &str, dims: &[i64], values: &[i64]) -> String {
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(name, DataType::Int64, dims, raw)
    }

    /// Adds a node with one output, the usual case (see [`GraphBuilder::node`]);
    /// returns the output's name.
    pub fn op(
        &mut self,
        domain: &str,
        op_type: &str,
        name: &str,
        inputs: &[&str],
        attributes: &[(&str, Attr)],
    ) -> String {
        let [output] = self.node(domain, op_type, name, inputs, attributes);
        output
    }

    /// Adds a node of `op_type` in `domain` (`""` for standard ONNX, [`MS_DOMAIN`] for
    /// contrib ops) named `name`, reading `inputs` (`""` for an absent optional input);
    /// returns its `N` output names, `<name>/out<k>`, to destructure
    /// (`let [normed, _, _, residual] = g.node(...)`).
    pub fn node<const N: usize>(
        &mut self,
        domain: &str,
        op_type: &str,
        name: &str,
        inputs: &[&str],
        attributes: &[(&str, Attr)],
    ) -> [String; N] {
        let outputs: [String; N] = std::array::from_fn(|k| format!("{name}/out{k}"));
        self.node_named(domain, op_type, name, inputs, &outputs, attributes);
        outputs
    }

    /// Like [`GraphBuilder::node`], with the output names given (graph outputs,
    /// `present.*`).
    pub fn node_named(
        &mut self,
        domain: &str,
        op_type: &str,
        name: &str,
        inputs: &[&str],
        outputs: &[String],
        attributes: &[(&str, Attr)],
    ) {
        self.graph.node.push(NodeProto {
            input: inputs.iter().map(|input| (*input).to_owned()).collect(),
            output: outputs.to_vec(),
            name: name.to_owned(),
            op_type: op_type.to_owned(),
            attribute: attributes
                .iter()
                .map(|(name, attr)| attribute(name, attr))
                .collect(),
            domain: domain.to_owned(),
        });
    }

    /// Adds a model-level metadata entry.
    pub fn metadata(&mut self, key: &str, value: &str) {
        self.metadata.push((key.to_owned(), value.to_owned()));
    }

    /// The model, with the standard and `com.microsoft` operator sets, and ours
    /// ([`slough_operators::DOMAIN`]) when a node uses it.
    pub fn into_model(self) -> ModelProto {
        let mut opset_import = vec![
            OperatorSetIdProto {
                domain: String::new(),
                version: ONNX_OPSET,
            },
            OperatorSetIdProto {
                domain: MS_DOMAIN.to_owned(),
                version: 1,
            },
        ];
        if self
            .graph
            .node
            .iter()
            .any(|node| node.domain == slough_operators::DOMAIN)
        {
            opset_import.push(OperatorSetIdProto {
                domain: slough_operators::DOMAIN.to_owned(),
                version: 1,
            });
        }
        ModelProto {
            ir_version: IR_VERSION,
            producer_name: "slough-modelkit".to_owned(),
            producer_version: env!("CARGO_PKG_VERSION").to_owned(),
            graph: Some(self.graph),
            opset_import,
            metadata_props: self
                .metadata
                .into_iter()
                .map(|(key, value)| StringStringEntryProto { key, value })
                .collect(),
        }
    }

    /// The serialized model (`model.onnx`'s bytes).
    pub fn into_bytes(self) -> Vec<u8> {
        self.into_model().encode_to_vec()
    }
}

fn value_info(name: &str, elem_type: DataType, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|dim| DimensionProto {
            value: Some(match dim {
                Dim::Fixed(size) => DimensionValue::DimValue(*size),
                Dim::Named(name) => DimensionValue::DimParam(name.clone()),
            }),
        })
        .collect();
    ValueInfoProto {
        name: name.to_owned(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type: elem_type as i32,
                shape: Some(TensorShapeProto { dim }),
            }),
        }),
    }
}

fn attribute(name: &str, attr: &Attr) -> AttributeProto {
    let mut proto = AttributeProto {
        name: name.to_owned(),
        ..AttributeProto::default()
    };
    match attr {
        Attr::Int(value) => {
            proto.i = Some(*value);
            proto.r#type = AttributeType::Int as i32;
        }
        Attr::Float(value) => {
            proto.f = Some(*value);
            proto.r#type = AttributeType::Float as i32;
        }
        Attr::Ints(values) => {
            proto.ints = values.clone();
            proto.r#type = AttributeType::Ints as i32;
        }
        Attr::Floats(values) => {
            proto.floats = values.clone();
            proto.r#type = AttributeType::Floats as i32;
        }
        Attr::String(value) => {
            proto.s = Some(value.as_bytes().to_vec());
            proto.r#type = AttributeType::String as i32;
        }
    }
    proto
}
