//! The repository's documents over HTTP: `root/<N>.json`, `timestamp.json`, `policy/<sha256>.json`.
//!
//! Owns: path checking, caching headers and 304s, and streaming a file from disk. A response holds
//! one open file and one 64 KiB read buffer, never the whole document, so a client that stops
//! reading a 60 MB policy costs the server kilobytes (and is closed by the write timeout).
//! **Invariant:** only the three repository path shapes are served, matched literally.

use std::os::unix::fs::MetadataExt as _;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use embargo_policy::metadata::limits;
use embargo_policy::transport::is_repository_path;
use tokio::io::AsyncReadExt as _;

use crate::{plain, AppState};

/// Bytes read from disk per chunk of a streamed document.
const CHUNK: usize = 64 * 1024;

fn if_none_match(headers: &HeaderMap, tag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"))
}

pub(crate) async fn serve(State(state): State<AppState>, req: Request) -> Response {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    }
    let path = req.uri().path().trim_start_matches('/');
    // Checked literally: `..`, percent-escapes, doubled slashes and anything else that is not
    // one of the three repository shapes is refused before any file system access.
    if !is_repository_path(path) {
        return plain(StatusCode::NOT_FOUND, "not a repository path\n");
    }
    let cap = if path == "timestamp.json" {
        limits::TIMESTAMP_BYTES
    } else if path.starts_with("root/") {
        limits::ROOT_BYTES
    } else {
        limits::POLICY_BYTES
    };
    let immutable = path.starts_with("policy/");
    let file_path = state.repo.join(path);
    let file = match tokio::fs::File::open(&file_path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return plain(StatusCode::NOT_FOUND, "no such document\n");
        }
        Err(e) => {
            tracing::error!(path, error = %e, "opening repository file");
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot read document\n");
        }
    };
    // Everything below is about the opened file: a rename of a new timestamp.json over the old
    // one between the stat and the read cannot mix two documents.
    let meta = match file.metadata().await {
        Ok(m) if m.is_file() => m,
        Ok(_) => return plain(StatusCode::NOT_FOUND, "no such document\n"),
        Err(e) => {
            tracing::error!(path, error = %e, "stat of repository file");
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot read document\n");
        }
    };
    if meta.len() > cap {
        tracing::error!(path, size = meta.len(), cap, "repository document exceeds its size cap; not served");
        return plain(StatusCode::INTERNAL_SERVER_ERROR, "document too large\n");
    }
    // Policies are content-addressed: their name is their strong tag. The timestamp is rewritten
    // by an atomic rename, so (inode, mtime, size) changes with every new timestamp; agents poll
    // it with If-None-Match and get a 304 costing one stat.
    let etag = if immutable {
        format!("\"{}\"", &path["policy/".len()..path.len() - ".json".len()])
    } else {
        format!("\"{:x}-{:x}.{:x}-{:x}\"", meta.ino(), meta.mtime(), meta.mtime_nsec(), meta.len())
    };
    if if_none_match(req.headers(), &etag) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    let len = meta.len();
    let body = if req.method() == Method::HEAD {
        Body::empty()
    } else {
        Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file.take(len), CHUNK))
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ETAG, HeaderValue::from_str(&etag).expect("hex etag is a valid header"));
    if immutable {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable"));
    } else {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    resp
}
