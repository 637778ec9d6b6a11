//! sea-orm entities, one module per table.

pub mod api_key;
pub mod collection;
pub mod collection_document;
pub mod persona;
pub mod usage;
