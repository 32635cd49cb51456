//! The control socket: newline-delimited JSON over a Unix socket (mode 0666: any local user may
//! connect and read). Who may change anything is decided by the core loop from the peer's
//! credentials (SO_PEERCRED), never from anything the client says.
//!
//! Bounds (finding 10 of the hardening review): at most `MAX_CONNECTIONS` at once, of which
//! `ROOT_RESERVED` only root (or the daemon's uid) may use, at most `MAX_PER_UID` per other uid,
//! and `REQUEST_DEADLINE` to send the request line. A refused connection is closed at accept.

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

/// Connections served at once, in all.
pub const MAX_CONNECTIONS: usize = 64;
/// Of those, slots only root (and the daemon's own uid) may use: no other user can lock root out.
pub const ROOT_RESERVED: usize = 16;
/// Connections one non-root uid may hold at once.
pub const MAX_PER_UID: usize = 8;
/// Time a client has to send its request line; an idle connection is closed after it.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(2);

/// Who holds the connection slots (see the limits above). Decided from SO_PEERCRED at accept.
#[derive(Debug, Default)]
struct Slots {
    total: usize,
    unprivileged: usize,
    per_uid: std::collections::HashMap<u32, usize>,
}

impl Slots {
    /// Takes a slot for `uid`, or says why not.
    fn take(&mut self, uid: u32, privileged: bool) -> Result<(), &'static str> {
        if self.total >= MAX_CONNECTIONS {
            return Err("all connection slots are busy");
        }
        if !privileged {
            if self.unprivileged >= MAX_CONNECTIONS - ROOT_RESERVED {
                return Err("all unprivileged connection slots are busy");
            }
            let n = self.per_uid.entry(uid).or_default();
            if *n >= MAX_PER_UID {
                return Err("too many connections from this user");
            }
            *n += 1;
            self.unprivileged += 1;
        }
        self.total += 1;
        Ok(())
    }

    fn give_back(&mut self, uid: u32, privileged: bool) {
        self.total -= 1;
        if !privileged {
            self.unprivileged -= 1;
            if let Some(n) = self.per_uid.get_mut(&uid) {
                *n -= 1;
                if *n == 0 {
                    self.per_uid.remove(&uid);
                }
            }
        }
    }
}

/// A taken slot, given back when the connection ends.
struct Slot {
    slots: std::sync::Arc<std::sync::Mutex<Slots>>,
    uid: u32,
    privileged: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).give_back(self.uid, self.privileged);
    }
}

pub async fn serve(listener: UnixListener, calls: mpsc::Sender<Call>) {
    let slots = std::sync::Arc::new(std::sync::Mutex::new(Slots::default()));
    let me = rustix::process::geteuid().as_raw();
    let refused = std::sync::atomic::AtomicU64::new(0);
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let Ok(uid) = stream.peer_cred().map(|c| c.uid()) else { continue };
        let privileged = uid == 0 || uid == me;
        let taken = slots.lock().unwrap_or_else(|p| p.into_inner()).take(uid, privileged);
        if let Err(why) = taken {
            // Dropped at once (the client sees the connection closed); counted and logged
            // now and then, never per connection (a flood must not flood the log).
            let n = refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if n.is_power_of_two() {
                tracing::warn!(uid, refused = n + 1, "control connection refused: {why}");
            }
            continue;
        }
        let slot = Slot { slots: slots.clone(), uid, privileged };
        let calls = calls.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _ = tokio::time::timeout(Duration::from_secs(120), handle(stream, uid, calls)).await;
        });
    }
}

async fn handle(stream: UnixStream, uid: u32, calls: mpsc::Sender<Call>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = tokio::io::BufReader::new(read).take(MAX_REQUEST as u64 + 1);
    let mut line = String::new();
    if tokio::time::timeout(REQUEST_DEADLINE, reader.read_line(&mut line)).await.is_err() {
        // Idle: the slot goes back; the client is told why if it is still there.
        let mut out =
            serde_json::to_vec(&Response::err("bad_request", format!("no request line within {REQUEST_DEADLINE:?}")))
                .expect("response serializes");
        out.push(b'\n');
        let _ = tokio::time::timeout(Duration::from_millis(100), write.write_all(&out)).await;
        return Ok(());
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_user_cannot_take_roots_slots_and_users_cannot_take_each_others() {
        let mut s = Slots::default();
        for _ in 0..MAX_PER_UID {
            s.take(1000, false).unwrap();
        }
        assert!(s.take(1000, false).is_err(), "per-uid limit");
        // Other users fill the unprivileged slots...
        let mut uid = 2000;
        while s.take(uid, false).is_ok() {
            uid += (s.per_uid[&uid] == MAX_PER_UID) as u32;
        }
        assert_eq!(s.unprivileged, MAX_CONNECTIONS - ROOT_RESERVED);
        // ...root still has its reserved ones, and only those.
        for _ in 0..ROOT_RESERVED {
            s.take(0, true).unwrap();
        }
        assert!(s.take(0, true).is_err());
        s.give_back(1000, false);
        assert!(s.take(1000, false).is_ok());
    }
}
