//! sea-orm entities, one module per table.

pub mod api_key;
pub mod audit_event;
pub mod collection;
pub mod collection_document;
pub mod file;
pub mod fine_tuning_checkpoint;
pub mod fine_tuning_event;
pub mod fine_tuning_job;
pub mod persona;
pub mod stored_completion;
pub mod usage;
