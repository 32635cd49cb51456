//! The control socket: newline-delimited JSON over a Unix socket (mode 0666: any local user may
//! connect and read). Who may change anything is decided by the core loop from the peer's
//! credentials (SO_PEERCRED), never from anything the client says.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use crate::proto::{Frame, Request, Response, MAX_REQUEST, PROTOCOL_VERSION};

/// One request for the core loop, with the caller's uid (from SO_PEERCRED) and where to reply.
pub struct Call {
    pub request: Request,
    pub uid: u32,
    pub reply: oneshot::Sender<Response>,
}

/// Binds the socket, replacing a stale one (only if it is a socket), mode 0666.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    if let Some(dir) = path.parent() {
        embargo_policy::fsutil::ensure_dir(dir, 0o755)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => return Err(std::io::Error::other("exists and is not a socket; refusing to replace it")),
        Err(_) => {}
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(l)
}

pub async fn serve(listener: UnixListener, calls: mpsc::Sender<Call>) {
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let Ok(permit) = limit.clone().try_acquire_owned() else { continue };
        let calls = calls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(Duration::from_secs(120), handle(stream, calls)).await;
        });
    }
}

async fn handle(stream: UnixStream, calls: mpsc::Sender<Call>) -> std::io::Result<()> {
    let uid = stream.peer_cred()?.uid();
    let (read, mut write) = stream.into_split();
    let mut reader = tokio::io::BufReader::new(read).take(MAX_REQUEST as u64 + 1);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let response = if line.len() > MAX_REQUEST {
        Response::err("bad_request", format!("request longer than {MAX_REQUEST} bytes"))
    } else {
        match serde_json::from_str::<Frame>(&line) {
            Err(e) => Response::err("bad_request", format!("malformed request: {e}")),
            Ok(f) if f.v != PROTOCOL_VERSION => {
                Response::err("bad_request", format!("protocol version {} (daemon speaks {PROTOCOL_VERSION})", f.v))
            }
            Ok(f) => {
                let (tx, rx) = oneshot::channel();
                if calls.send(Call { request: f.request, uid, reply: tx }).await.is_err() {
                    Response::err("failed", "daemon is shutting down")
                } else {
                    rx.await.unwrap_or_else(|_| Response::err("failed", "no reply"))
                }
            }
        }
    };
    let mut out = serde_json::to_vec(&response).expect("response serializes");
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await
}

/// Client side: one request, one response, with a deadline.
pub async fn call(socket: &Path, request: crate::proto::Request, timeout: Duration) -> Result<Response, String> {
    let go = async {
        let mut s = UnixStream::connect(socket)
            .await
            .map_err(|e| format!("cannot reach embargod at {}: {e}", socket.display()))?;
        let mut line = serde_json::to_vec(&Frame { v: PROTOCOL_VERSION, request }).expect("request serializes");
        line.push(b'\n');
        s.write_all(&line).await.map_err(|e| e.to_string())?;
        let mut reader = tokio::io::BufReader::new(s);
        let mut resp = String::new();
        reader.read_line(&mut resp).await.map_err(|e| e.to_string())?;
        serde_json::from_str::<Response>(&resp).map_err(|e| format!("malformed response from embargod: {e}"))
    };
    tokio::time::timeout(timeout, go)
        .await
        .map_err(|_| format!("embargod at {} did not answer within {timeout:?}", socket.display()))?
}
