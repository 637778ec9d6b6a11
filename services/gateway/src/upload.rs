//! Documents from an upload: a JSON body (`{"documents": [...]}`) or a multipart form
//! whose `file` parts are JSONL (one document per line: `id`, `text`, optional
//! `metadata` and `format`), Markdown (`.md`, `.markdown`) or plain text (anything
//! else), each of the last two one document named by its file name. Errors name the
//! file and line at fault.

use actix_web::web::Bytes;
use serde::Deserialize;
use slough_protocol::rag::{Document, DocumentFormat};
use utoipa::ToSchema;

use crate::{error::ApiError, http::parse_json};

/// Documents to add to a collection, or to replace there by id.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DocumentsBody {
    pub documents: Vec<Document>,
}

/// The documents in a request body of `content_type`.
pub async fn documents(content_type: &str, body: Bytes) -> Result<Vec<Document>, ApiError> {
    let Some(boundary) = multipart_boundary(content_type) else {
        let parsed: DocumentsBody = parse_json(&body)?;
        return Ok(parsed.documents);
    };
    let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(body) });
    let mut form = multer::Multipart::new(stream, boundary);
    let mut documents = Vec::new();
    let mut files = 0;
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|err| ApiError::malformed(format!("the multipart body is malformed: {err}")))?
    {
        if field.name() != Some("file") {
            let name = field.name().unwrap_or("(unnamed)").to_owned();
            return Err(ApiError::invalid(
                &name,
                format!("unknown form field `{name}`; upload documents as `file` parts"),
            ));
        }
        files += 1;
        let file_name = field.file_name().unwrap_or("upload.txt").to_owned();
        let content = field.bytes().await.map_err(|err| {
            ApiError::malformed(format!("cannot read the file {file_name}: {err}"))
        })?;
        let text = String::from_utf8(content.to_vec())
            .map_err(|_| ApiError::invalid("file", format!("{file_name} is not UTF-8 text")))?;
        documents.extend(parse_file(&file_name, &text)?);
    }
    if files == 0 {
        return Err(ApiError::invalid(
            "file",
            "the form holds no `file` part to ingest",
        ));
    }
    Ok(documents)
}

/// `multipart/form-data; boundary=...`'s boundary.
fn multipart_boundary(content_type: &str) -> Option<String> {
    multer::parse_boundary(content_type).ok()
}

/// One uploaded file's documents, by its extension.
pub fn parse_file(file_name: &str, text: &str) -> Result<Vec<Document>, ApiError> {
    let extension = file_name
        .rsplit_once('.')
        .map(|(_, extension)| extension.to_ascii_lowercase())
        .unwrap_or_default();
    let whole = |format| Document {
        id: file_name.to_owned(),
        text: text.to_owned(),
        format,
        metadata: None,
    };
    match extension.as_str() {
        "jsonl" | "ndjson" => parse_jsonl(file_name, text),
        "md" | "markdown" => Ok(vec![whole(DocumentFormat::Markdown)]),
        _ => Ok(vec![whole(DocumentFormat::Text)]),
    }
}

/// One document per non-blank line.
fn parse_jsonl(file_name: &str, text: &str) -> Result<Vec<Document>, ApiError> {
    let mut documents = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let document: Document = serde_json::from_str(line).map_err(|err| {
            ApiError::invalid("file", format!("{file_name}, line {}: {err}", number + 1))
        })?;
        documents.push(document);
    }
    if documents.is_empty() {
        return Err(ApiError::invalid(
            "file",
            format!("{file_name} holds no documents"),
        ));
    }
    Ok(documents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_lines_are_documents_and_errors_name_the_line() {
        let text = "{\"id\": \"a\", \"text\": \"one\"}\n\n\
                    {\"id\": \"b\", \"text\": \"two\", \"metadata\": {\"year\": 1}}\n";
        let documents = parse_file("docs.jsonl", text).unwrap();
        assert_eq!(documents.len(), 2);
        assert_eq!(documents[1].metadata.as_ref().unwrap()["year"], 1);
        let broken = "{\"id\": \"a\", \"text\": \"one\"}\n{\"id\": \"b\"}\n";
        let err = parse_file("docs.jsonl", broken).unwrap_err();
        assert!(err.to_string().contains("docs.jsonl, line 2"), "{err}");
    }

    #[test]
    fn other_files_are_one_document_by_extension() {
        let markdown = parse_file("guide.md", "# Title\n\nText").unwrap();
        assert_eq!(markdown[0].format, DocumentFormat::Markdown);
        assert_eq!(markdown[0].id, "guide.md");
        let text = parse_file("notes.txt", "Plain").unwrap();
        assert_eq!(text[0].format, DocumentFormat::Text);
    }
}
