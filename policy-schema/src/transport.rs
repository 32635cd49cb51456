//! How repository documents are fetched. The verification core (`trust`) sees only this trait
//! and the bytes it returns; transports enforce byte caps while reading, so an endless response
//! is cut at the cap rather than buffered.

use std::future::Future;
use std::path::PathBuf;

/// Why a document could not be fetched. Each names the URL or path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: response exceeds the {limit}-byte cap")]
    TooLarge { url: String, limit: u64 },
    #[error("{url}: HTTP status {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: server asked to retry after {seconds}s (HTTP {status})")]
    RetryAfter { url: String, status: u16, seconds: u64 },
    #[error("{url}: redirect refused (to {location:?})")]
    Redirect { url: String, location: String },
    #[error("{url}: timed out ({what})")]
    Timeout { url: String, what: &'static str },
    #[error("{url}: slow retrieval: {bytes} bytes in {seconds}s is below the minimum rate")]
    SlowRetrieval { url: String, bytes: u64, seconds: u64 },
    #[error("{url}: {message}")]
    Transport { url: String, message: String },
    #[error("{path}: {message}")]
    Io { path: String, message: String },
}

/// Fetches repository-relative paths such as `root/2.json`, `timestamp.json`, `policy/<sha>.json`.
pub trait Fetch: Sync {
    /// `Ok(None)` means the document does not exist (HTTP 404, or no such file). Implementations
    /// must stop reading at `max_len` bytes and return [`FetchError::TooLarge`].
    fn fetch(&self, path: &str, max_len: u64) -> impl Future<Output = Result<Option<Vec<u8>>, FetchError>> + Send;
}

/// A repository in a local directory (offline devices, the demo, `file://` URLs).
#[derive(Debug, Clone)]
pub struct FileTransport {
    root: PathBuf,
}

impl FileTransport {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
}

/// Accepts only the repository's own path shapes, so no path can leave the repository.
pub fn is_repository_path(path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        ["timestamp.json"] => true,
        ["root", file] => file
            .strip_suffix(".json")
            .is_some_and(|n| !n.is_empty() && n.len() <= 20 && n.bytes().all(|b| b.is_ascii_digit())),
        ["policy", file] => file.strip_suffix(".json").is_some_and(crate::rules::is_sha256_hex),
        _ => false,
    }
}

impl Fetch for FileTransport {
    async fn fetch(&self, path: &str, max_len: u64) -> Result<Option<Vec<u8>>, FetchError> {
        if !is_repository_path(path) {
            return Err(FetchError::Io { path: path.into(), message: "not a repository path".into() });
        }
        let full = self.root.join(path);
        let url = full.display().to_string();
        match crate::fsutil::read_capped(&full, max_len) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::FileTooLarge => Err(FetchError::TooLarge { url, limit: max_len }),
            Err(e) => Err(FetchError::Io { path: url, message: e.to_string() }),
        }
    }
}
