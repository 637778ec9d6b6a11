//! The JSON Schemas of every wire message, generated from the types in this crate.
//! `schemas/*.json` at the repository root are these, written by the `schemas` test
//! with `SLOUGH_UPDATE_SCHEMAS=1`; the same test fails when they differ.

use schemars::{Schema, schema_for};

use crate::{
    ErrorBody,
    health::{HealthReport, HealthRequest},
    inference::{
        DetokenizeRequest, DetokenizeResponse, EmbedRequest, EmbedResponse, GenerateChunk,
        GenerateEnd, GenerateRequest, InstanceLoad, ModelEvent, ModelInfo, ModelRequest,
        ModelsRequest, ModelsResponse, TokenizeRequest, TokenizeResponse,
    },
    personality::{
        Adherence, AdherenceRequest, AnalyzeRequest, ComposeRequest, Composed, CreatePersona,
        ListPersonas, Persona, PersonaList, PersonaPreview, PersonaRequest, StyleMetrics,
        UpdatePersona,
    },
    rag::{
        Collection, CollectionList, CollectionRequest, CreateCollection, CreateCollectionRequest,
        DocumentDeleted, DocumentRequest, IngestRequest, IngestResponse, ListCollections,
        SearchRequest, SearchResponse,
    },
    status::{StatusReport, StatusRequest},
    stream::{CancelRequest, StreamAck, StreamFrame},
    training::{
        CheckpointList, CreateJobRequest, DeleteModel, EraseOwner, EventList, Job, JobList,
        JobRequest, ListJobItems, ListJobs, ModelDeleted, OwnerErased, QueuedJob,
    },
};

/// Every message schema, by file name (without `.json`).
pub fn all() -> Vec<(&'static str, Schema)> {
    vec![
        ("error_body", schema_for!(ErrorBody)),
        ("health_request", schema_for!(HealthRequest)),
        ("health_report", schema_for!(HealthReport)),
        ("status_request", schema_for!(StatusRequest)),
        ("status_report", schema_for!(StatusReport)),
        ("stream_ack", schema_for!(StreamAck)),
        (
            "stream_frame",
            schema_for!(StreamFrame<serde_json::Value, serde_json::Value>),
        ),
        ("cancel_request", schema_for!(CancelRequest)),
        ("generate_request", schema_for!(GenerateRequest)),
        ("generate_chunk", schema_for!(GenerateChunk)),
        ("generate_end", schema_for!(GenerateEnd)),
        ("embed_request", schema_for!(EmbedRequest)),
        ("embed_response", schema_for!(EmbedResponse)),
        ("models_request", schema_for!(ModelsRequest)),
        ("models_response", schema_for!(ModelsResponse)),
        ("model_info", schema_for!(ModelInfo)),
        ("model_request", schema_for!(ModelRequest)),
        ("tokenize_request", schema_for!(TokenizeRequest)),
        ("tokenize_response", schema_for!(TokenizeResponse)),
        ("detokenize_request", schema_for!(DetokenizeRequest)),
        ("detokenize_response", schema_for!(DetokenizeResponse)),
        ("model_event", schema_for!(ModelEvent)),
        ("instance_load", schema_for!(InstanceLoad)),
        ("list_personas", schema_for!(ListPersonas)),
        ("persona_list", schema_for!(PersonaList)),
        ("persona_request", schema_for!(PersonaRequest)),
        ("persona", schema_for!(Persona)),
        ("create_persona", schema_for!(CreatePersona)),
        ("update_persona", schema_for!(UpdatePersona)),
        ("persona_preview", schema_for!(PersonaPreview)),
        ("compose_request", schema_for!(ComposeRequest)),
        ("composed", schema_for!(Composed)),
        ("analyze_request", schema_for!(AnalyzeRequest)),
        ("style_metrics", schema_for!(StyleMetrics)),
        ("adherence_request", schema_for!(AdherenceRequest)),
        ("adherence", schema_for!(Adherence)),
        ("create_collection", schema_for!(CreateCollection)),
        (
            "create_collection_request",
            schema_for!(CreateCollectionRequest),
        ),
        ("collection", schema_for!(Collection)),
        ("list_collections", schema_for!(ListCollections)),
        ("collection_list", schema_for!(CollectionList)),
        ("collection_request", schema_for!(CollectionRequest)),
        ("ingest_request", schema_for!(IngestRequest)),
        ("ingest_response", schema_for!(IngestResponse)),
        ("document_request", schema_for!(DocumentRequest)),
        ("document_deleted", schema_for!(DocumentDeleted)),
        ("search_request", schema_for!(SearchRequest)),
        ("search_response", schema_for!(SearchResponse)),
        ("create_job_request", schema_for!(CreateJobRequest)),
        ("job", schema_for!(Job)),
        ("list_jobs", schema_for!(ListJobs)),
        ("job_list", schema_for!(JobList)),
        ("job_request", schema_for!(JobRequest)),
        ("list_job_items", schema_for!(ListJobItems)),
        ("event_list", schema_for!(EventList)),
        ("checkpoint_list", schema_for!(CheckpointList)),
        ("queued_job", schema_for!(QueuedJob)),
        ("delete_model", schema_for!(DeleteModel)),
        ("model_deleted", schema_for!(ModelDeleted)),
        ("erase_owner", schema_for!(EraseOwner)),
        ("owner_erased", schema_for!(OwnerErased)),
    ]
}
