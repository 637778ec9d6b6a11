//! Memory-mapping model files, the one place this crate uses `unsafe`.

use std::fs::File;

/// Maps `file` read-only.
#[allow(unsafe_code)]
pub(crate) fn map_read_only(file: &File) -> std::io::Result<memmap2::Mmap> {
    // SAFETY: the map is read-only and private to this process. Another process
    // truncating the file while it is mapped would fault; model files are written once
    // (to a temporary name, then renamed) and never modified in place.
    unsafe { memmap2::Mmap::map(file) }
}
