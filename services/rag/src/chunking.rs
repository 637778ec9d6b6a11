//! Splitting a document into chunks of at most `size` tokens of the collection's
//! embedding model (its own `tokenizer.json`), neighbours sharing up to `overlap`
//! tokens: `text-splitter` does the splitting, along headings first for Markdown and
//! along paragraphs, sentences and words for plain text.

use std::{ops::Range, path::Path};

use slough_protocol::rag::DocumentFormat;
use text_splitter::{ChunkConfig, MarkdownSplitter, TextSplitter};
use tokenizers::Tokenizer;

/// One chunk: its text and where it is in the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub text: String,
    /// Byte offsets in the document's text.
    pub range: Range<usize>,
}

/// Splits documents for one collection.
pub struct Chunker {
    text: TextSplitter<Tokenizer>,
    markdown: MarkdownSplitter<Tokenizer>,
}

impl Chunker {
    /// A chunker counting with the tokenizer at `tokenizer_file`.
    pub fn new(tokenizer_file: &Path, size: usize, overlap: usize) -> Result<Chunker, String> {
        let tokenizer = Tokenizer::from_file(tokenizer_file)
            .map_err(|err| format!("cannot read {}: {err}", tokenizer_file.display()))?;
        let config = |tokenizer: Tokenizer| {
            ChunkConfig::new(size)
                .with_overlap(overlap)
                .map(|config| config.with_sizer(tokenizer))
                .map_err(|err| err.to_string())
        };
        Ok(Chunker {
            text: TextSplitter::new(config(tokenizer.clone())?),
            markdown: MarkdownSplitter::new(config(tokenizer)?),
        })
    }

    /// The chunks of `text`, in order.
    pub fn split(&self, text: &str, format: DocumentFormat) -> Vec<Chunk> {
        let chunk = |(start, piece): (usize, &str)| Chunk {
            text: piece.to_owned(),
            range: start..start + piece.len(),
        };
        match format {
            DocumentFormat::Text => self.text.chunk_indices(text).map(chunk).collect(),
            DocumentFormat::Markdown => self.markdown.chunk_indices(text).map(chunk).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minilm_tokenizer() -> std::path::PathBuf {
        slough_testkit::test_models_dir()
            .join(slough_testkit::EMBED_MODEL)
            .join("tokenizer.json")
    }

    #[test]
    fn chunks_fit_the_size_in_tokens_and_point_into_the_text() {
        let tokenizer = Tokenizer::from_file(minilm_tokenizer()).unwrap();
        let chunker = Chunker::new(&minilm_tokenizer(), 32, 8).unwrap();
        let text = "The wing of an aircraft produces lift. ".repeat(40);
        let chunks = chunker.split(&text, DocumentFormat::Text);
        assert!(chunks.len() > 5, "{}", chunks.len());
        for chunk in &chunks {
            assert_eq!(&text[chunk.range.clone()], chunk.text);
            let tokens = tokenizer.encode(chunk.text.as_str(), false).unwrap().len();
            assert!(tokens <= 32, "{tokens} tokens: {:?}", chunk.text);
        }
        // Neighbours overlap.
        assert!(chunks[1].range.start < chunks[0].range.end);
    }

    #[test]
    fn markdown_splits_along_headings_first() {
        let chunker = Chunker::new(&minilm_tokenizer(), 20, 0).unwrap();
        let text = "# Lift\n\nWings produce lift when air flows over them.\n\n\
                    # Drag\n\nDrag opposes the motion of the aircraft through the air.\n";
        let chunks = chunker.split(text, DocumentFormat::Markdown);
        assert!(chunks[0].text.starts_with("# Lift"), "{chunks:#?}");
        assert!(
            chunks.iter().any(|chunk| chunk.text.starts_with("# Drag")),
            "{chunks:#?}"
        );
        assert!(
            chunks
                .iter()
                .all(|chunk| !(chunk.text.contains("Lift") && chunk.text.contains("Drag"))),
            "{chunks:#?}"
        );
    }
}
