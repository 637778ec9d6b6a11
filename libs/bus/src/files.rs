//! Uploaded files' content, in a JetStream object store bucket (`slough-files`): any
//! service on the bus reads what the gateway stored, whatever machine it runs on, and
//! large files travel in chunks under NATS's message limit. The files' metadata lives in
//! the store; this holds only the bytes, by file id.

use async_nats::jetstream::{self, object_store};
use slough_protocol::{ErrorBody, ErrorCode};
use tokio::io::{AsyncRead, AsyncReadExt as _};

use crate::{Bus, BusError};

/// The bucket's name.
pub const BUCKET: &str = "slough-files";

/// The file content store.
#[derive(Clone)]
pub struct FileStore {
    bucket: object_store::ObjectStore,
}

impl std::fmt::Debug for FileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStore")
            .field("bucket", &BUCKET)
            .finish()
    }
}

fn nats(context: &str) -> impl FnOnce(String) -> BusError {
    let context = context.to_owned();
    move |err| BusError::Nats(format!("{context}: {err}"))
}

impl FileStore {
    /// Opens the bucket, creating it on first use (file storage, kept until deleted, on
    /// up to three servers of a cluster).
    pub async fn open(bus: &Bus) -> Result<FileStore, BusError> {
        let js = jetstream::new(bus.client().clone());
        let bucket = match js.get_object_store(BUCKET).await {
            Ok(bucket) => bucket,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: BUCKET.to_owned(),
                    description: Some("SloughGPT uploaded files".to_owned()),
                    num_replicas: bus.jetstream_replicas(),
                    ..Default::default()
                })
                .await
                .map_err(|err| nats("cannot create the file bucket")(err.to_string()))?,
        };
        bus.keep_copies(&js, &format!("OBJ_{BUCKET}")).await?;
        Ok(FileStore { bucket })
    }

    /// Stores `data` under `id`; answers its size in bytes.
    pub async fn put(
        &self,
        id: &str,
        data: &mut (impl AsyncRead + Unpin),
    ) -> Result<u64, BusError> {
        let info = self
            .bucket
            .put(id, data)
            .await
            .map_err(|err| nats(&format!("cannot store file {id}"))(err.to_string()))?;
        Ok(info.size as u64)
    }

    /// The content of `id`: `not_found` when the bucket has none, `unavailable` when
    /// it cannot be read now (a NATS server lost, JetStream electing a new leader).
    pub async fn get(&self, id: &str) -> Result<Vec<u8>, BusError> {
        let unavailable = |err: String| {
            BusError::Service(ErrorBody::new(
                ErrorCode::Unavailable,
                format!("the content of file {id} cannot be read now: {err}"),
            ))
        };
        let mut object = self.bucket.get(id).await.map_err(|err| match err.kind() {
            object_store::GetErrorKind::NotFound => BusError::Service(ErrorBody::new(
                ErrorCode::NotFound,
                format!("file {id} has no content in the file store"),
            )),
            _ => unavailable(err.to_string()),
        })?;
        let mut bytes = Vec::new();
        object
            .read_to_end(&mut bytes)
            .await
            .map_err(|err| unavailable(err.to_string()))?;
        Ok(bytes)
    }

    /// Removes the content of `id` (nothing when it is not there).
    pub async fn delete(&self, id: &str) -> Result<(), BusError> {
        match self.bucket.delete(id).await {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == object_store::DeleteErrorKind::NotFound => Ok(()),
            Err(err) => Err(nats(&format!("cannot delete file {id}"))(err.to_string())),
        }
    }
}
