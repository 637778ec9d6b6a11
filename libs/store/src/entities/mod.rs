//! sea-orm entities, one module per table.

pub mod api_key;
pub mod persona;
pub mod usage;
