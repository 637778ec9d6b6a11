//! The NATS endpoints: decode, hand to [`Collections`], reply.

use std::sync::Arc;

use slough_bus::{BusError, ServiceHost};
use slough_protocol::{
    ErrorBody,
    rag::{
        self, Collection, CollectionList, CollectionRequest, CreateCollectionRequest,
        DocumentDeleted, DocumentRequest, IngestRequest, IngestResponse, ListCollections,
        SearchRequest, SearchResponse,
    },
};

use crate::collections::Collections;

/// Adds every RAG endpoint to `host`.
pub async fn add(host: &mut ServiceHost, collections: Arc<Collections>) -> Result<(), BusError> {
    host.serve(&rag::CREATE_COLLECTION, collections.clone(), create)
        .await?;
    host.serve(&rag::LIST_COLLECTIONS, collections.clone(), list)
        .await?;
    host.serve(&rag::GET_COLLECTION, collections.clone(), get)
        .await?;
    host.serve(&rag::DELETE_COLLECTION, collections.clone(), delete)
        .await?;
    host.serve(&rag::INGEST, collections.clone(), ingest)
        .await?;
    host.serve(&rag::DELETE_DOCUMENT, collections.clone(), delete_document)
        .await?;
    host.serve(&rag::SEARCH, collections, search).await?;
    Ok(())
}

async fn create(
    collections: Arc<Collections>,
    request: CreateCollectionRequest,
) -> Result<Collection, ErrorBody> {
    Ok(collections
        .create(request.collection, &request.owner)
        .await?)
}

async fn list(
    collections: Arc<Collections>,
    request: ListCollections,
) -> Result<CollectionList, ErrorBody> {
    Ok(CollectionList {
        collections: collections.list(request.owner.as_deref()).await?,
    })
}

async fn get(
    collections: Arc<Collections>,
    request: CollectionRequest,
) -> Result<Collection, ErrorBody> {
    Ok(collections
        .get(&request.name, request.owner.as_deref())
        .await?)
}

async fn delete(
    collections: Arc<Collections>,
    request: CollectionRequest,
) -> Result<Collection, ErrorBody> {
    Ok(collections
        .delete(&request.name, request.owner.as_deref())
        .await?)
}

async fn ingest(
    collections: Arc<Collections>,
    request: IngestRequest,
) -> Result<IngestResponse, ErrorBody> {
    Ok(collections.ingest(request).await?)
}

async fn delete_document(
    collections: Arc<Collections>,
    request: DocumentRequest,
) -> Result<DocumentDeleted, ErrorBody> {
    Ok(collections
        .delete_document(&request.collection, &request.id, request.owner.as_deref())
        .await?)
}

async fn search(
    collections: Arc<Collections>,
    request: SearchRequest,
) -> Result<SearchResponse, ErrorBody> {
    Ok(collections.search(request).await?)
}
