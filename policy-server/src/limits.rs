//! Connection limits and I/O timeouts: what keeps one network client from taking the server down.
//!
//! Owns: the global and per-address connection counts (a permit is held for a connection's whole
//! life and released on drop), and `TimedIo`, a wrapper under TLS that fails a read or a write
//! making no progress for longer than its timeout. It does not parse anything or look at requests;
//! the per-request bounds (header read time, body size and time) are set where hyper and the
//! handlers are built.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Rows per page of every list on `/admin/` and `/admin/device/<id>` (rules, devices, a device's
/// rules and timeline). A page shows how many rows there are and links to the others, so nothing
/// is hidden; the HTML of one page stays a few hundred KiB whatever the policy or fleet size.
pub const ADMIN_PAGE_ROWS: u64 = 200;
/// Charts (one SVG per matched rule, built from the rule's state history) on one `/admin/` page.
/// The page's first matched rules get one; the page says how many more it has.
pub const ADMIN_PAGE_CHARTS: usize = 20;
/// Longest `?rule=` filter accepted (the longest rule id, `embargo_policy::limits::RULE_ID_LEN`).
pub const ADMIN_FILTER_LEN: usize = 128;
/// Rows an export reads from the store and writes out at a time: an export streams (a 64 KiB
/// pipe to the connection), so a 100,000-rule table never sits in memory as a whole.
pub const EXPORT_CHUNK_ROWS: u64 = 1000;

/// Every bound on what a client may hold. Defaults suit a server in front of a fleet whose
/// agents each open one short connection per sync; a loopback load test, where every simulated
/// agent comes from 127.0.0.1, raises `max_connections_per_ip`.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections open at once, over all clients. Past it, new connections are closed at accept.
    pub max_connections: usize,
    /// Connections open at once from one IP address.
    pub max_connections_per_ip: usize,
    /// Time for the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time from the connection's start (or the end of the previous response) to a request's
    /// complete header.
    pub header_timeout: Duration,
    /// A connection on which nothing is read or written for this long is closed.
    pub idle_timeout: Duration,
    /// A write that makes no progress for this long (a client that stopped reading) closes the
    /// connection.
    pub write_timeout: Duration,
    /// Time to receive a whole request body (reports, sign-in forms).
    pub body_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 2048,
            max_connections_per_ip: 32,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(30),
        }
    }
}

/// The live connection counts. Cheap to clone.
#[derive(Clone)]
pub struct ConnectionGate {
    inner: Arc<GateInner>,
}

struct GateInner {
    max_total: usize,
    max_per_ip: usize,
    counts: Mutex<Counts>,
    refused_total: AtomicU64,
    refused_per_ip: AtomicU64,
    last_warning: Mutex<Option<Instant>>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Which bound refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Total,
    PerAddress,
}

/// Held for a connection's life; dropping it frees the slot.
pub struct Permit {
    gate: ConnectionGate,
    ip: IpAddr,
}

impl ConnectionGate {
    pub fn new(limits: &Limits) -> Self {
        ConnectionGate {
            inner: Arc::new(GateInner {
                max_total: limits.max_connections.max(1),
                max_per_ip: limits.max_connections_per_ip.max(1),
                counts: Mutex::new(Counts::default()),
                refused_total: AtomicU64::new(0),
                refused_per_ip: AtomicU64::new(0),
                last_warning: Mutex::new(None),
            }),
        }
    }

    /// Takes a slot for a connection from `ip`, or says which bound is full. A refusal is counted
    /// and logged (at most once every ten seconds, so a flood does not flood the log too).
    pub fn admit(&self, ip: IpAddr) -> Result<Permit, Refused> {
        let refused = {
            let mut c = self.inner.counts.lock().expect("connection counts");
            let here = c.per_ip.get(&ip).copied().unwrap_or(0);
            if c.total >= self.inner.max_total {
                Some(Refused::Total)
            } else if here >= self.inner.max_per_ip {
                Some(Refused::PerAddress)
            } else {
                c.total += 1;
                c.per_ip.insert(ip, here + 1);
                None
            }
        };
        match refused {
            None => Ok(Permit { gate: self.clone(), ip }),
            Some(why) => {
                let counter = match why {
                    Refused::Total => &self.inner.refused_total,
                    Refused::PerAddress => &self.inner.refused_per_ip,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                self.warn(why, ip);
                Err(why)
            }
        }
    }

    fn warn(&self, why: Refused, ip: IpAddr) {
        let mut last = self.inner.last_warning.lock().expect("warning time");
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(10)) {
            return;
        }
        *last = Some(Instant::now());
        let (total, per_ip) = self.refused();
        match why {
            Refused::Total => tracing::warn!(
                limit = self.inner.max_total,
                refused_total = total,
                refused_per_address = per_ip,
                "connection limit reached: closing new connections (--max-connections)"
            ),
            Refused::PerAddress => tracing::warn!(
                %ip,
                limit = self.inner.max_per_ip,
                refused_total = total,
                refused_per_address = per_ip,
                "per-address connection limit reached: closing new connections from this address (--max-connections-per-ip)"
            ),
        }
    }

    /// Connections refused so far: (over the global bound, over the per-address bound).
    pub fn refused(&self) -> (u64, u64) {
        (self.inner.refused_total.load(Ordering::Relaxed), self.inner.refused_per_ip.load(Ordering::Relaxed))
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.inner.counts.lock().expect("connection counts").total
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut c = self.gate.inner.counts.lock().expect("connection counts");
        c.total -= 1;
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
    }
}

/// A byte stream whose reads fail after `idle` without progress and whose writes fail after
/// `write` without progress. It sits under TLS, so it also bounds a stalled handshake and a
/// client that trickles bytes no faster than the timeout resets only its own timer — the header
/// timeout (hyper's) and the body timeout (the handlers') bound the whole exchange.
pub struct TimedIo<S> {
    inner: S,
    idle: Duration,
    write: Duration,
    read_deadline: Option<Pin<Box<Sleep>>>,
    write_deadline: Option<Pin<Box<Sleep>>>,
}

impl<S> TimedIo<S> {
    pub fn new(inner: S, idle: Duration, write: Duration) -> Self {
        TimedIo { inner, idle, write, read_deadline: None, write_deadline: None }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

/// Arms `deadline` on the first pending poll and reports whether it has passed.
fn expired(deadline: &mut Option<Pin<Box<Sleep>>>, after: Duration, cx: &mut Context<'_>) -> bool {
    let sleep = deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(after)));
    sleep.as_mut().poll(cx).is_ready()
}

use std::future::Future as _;

impl<S: AsyncRead + Unpin> AsyncRead for TimedIo<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.read_deadline = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                if expired(&mut this.read_deadline, this.idle, cx) {
                    Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout")))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl<S> TimedIo<S> {
    /// A write or flush that made progress clears the write deadline; one still pending past it
    /// fails (the client stopped reading).
    fn within_write_deadline<T>(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(r) => {
                self.write_deadline = None;
                Poll::Ready(r)
            }
            Poll::Pending if expired(&mut self.write_deadline, self.write, cx) => {
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "write timeout: the client stopped reading")))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TimedIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.within_write_deadline(cx, polled)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.within_write_deadline(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_counts_per_address_and_in_total_and_frees_on_drop() {
        let gate = ConnectionGate::new(&Limits { max_connections: 3, max_connections_per_ip: 2, ..Limits::default() });
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let p1 = gate.admit(a).unwrap();
        let _p2 = gate.admit(a).unwrap();
        assert_eq!(gate.admit(a).err(), Some(Refused::PerAddress));
        let _p3 = gate.admit(b).unwrap();
        assert_eq!(gate.admit(b).err(), Some(Refused::Total));
        drop(p1);
        assert_eq!(gate.open(), 2);
        let _p4 = gate.admit(a).unwrap();
        assert_eq!(gate.refused(), (1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_without_progress_times_out() {
        use tokio::io::AsyncReadExt as _;
        let (client, _server_end) = tokio::io::duplex(64);
        let mut io = TimedIo::new(client, Duration::from_secs(5), Duration::from_secs(5));
        let mut buf = [0u8; 8];
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_the_peer_never_reads_times_out() {
        use tokio::io::AsyncWriteExt as _;
        let (client, _server_end) = tokio::io::duplex(64);
        let mut io = TimedIo::new(client, Duration::from_secs(5), Duration::from_secs(5));
        let err = io.write_all(&[0u8; 1024]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
