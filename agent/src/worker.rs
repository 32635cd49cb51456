//! Work off the core loop: a few dedicated threads that run jobs the loop hands them and send
//! each result back to the loop as the job owner's own message type (the loop wraps it in one
//! `daemon::Event` variant; this module and the job owners never import the loop).
//!
//! Why: anything whose cost a device's contents decide — reading a package database of 150,000
//! listed files, `dpkg --purge` loading that database, waiting for a package manager — must not
//! run on the loop, or `status`, confirmations and every other enforcement wait behind it.
//! The loop still owns all state and makes every decision; a job only reads or executes what
//! was already decided, and its result is applied on the loop.
//!
//! A worker with one thread runs its jobs in the order they were submitted (the package worker
//! relies on this: a read submitted after a removal sees the database after that removal).
//! Job owners bound what they submit (the package source keeps at most one read per root in
//! flight, and one removal per package).

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

type Job<R> = Box<dyn FnOnce() -> R + Send>;

/// What a job becomes when it panics (so the loop always hears back about every job).
type OnPanic<R> = Box<dyn FnOnce(String) -> R + Send>;

/// Threads that run jobs returning `R` and send each `R` back to the loop.
pub struct Worker<R> {
    jobs: std::sync::mpsc::Sender<(Job<R>, OnPanic<R>)>,
}

impl<R: Send + 'static> Worker<R> {
    /// Starts `threads` threads named `name`; results arrive on the returned receiver. The
    /// threads end when the `Worker` is dropped and the queued jobs are done.
    pub fn spawn(name: &str, threads: usize) -> std::io::Result<(Self, mpsc::UnboundedReceiver<R>)> {
        let (jobs, queue) = std::sync::mpsc::channel::<(Job<R>, OnPanic<R>)>();
        let (results, rx) = mpsc::unbounded_channel();
        let queue = Arc::new(Mutex::new(queue));
        for n in 0..threads.max(1) {
            let queue = queue.clone();
            let results = results.clone();
            std::thread::Builder::new().name(format!("{name}-{n}")).spawn(move || loop {
                // The lock is held only while taking the next job, never while running it.
                let next = match queue.lock() {
                    Ok(q) => q.recv(),
                    Err(_) => return,
                };
                let Ok((job, on_panic)) = next else { return };
                let out = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)) {
                    Ok(out) => out,
                    Err(p) => {
                        let why = p
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| p.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "a job panicked".into());
                        tracing::error!(worker = %std::thread::current().name().unwrap_or("?"), %why, "worker job panicked");
                        on_panic(why)
                    }
                };
                if results.send(out).is_err() {
                    return;
                }
            })?;
        }
        Ok((Self { jobs }, rx))
    }

    /// Queues `job`; its result (or `on_panic`'s, should it panic) comes back on the receiver.
    pub fn submit(
        &self,
        job: impl FnOnce() -> R + Send + 'static,
        on_panic: impl FnOnce(String) -> R + Send + 'static,
    ) {
        // Fails only when every thread is gone (after a shutdown); nothing is left to do then.
        let _ = self.jobs.send((Box::new(job), Box::new(on_panic)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_order_and_a_panic_is_reported() {
        let (w, mut rx) = Worker::<Result<u32, String>>::spawn("test-worker", 1).unwrap();
        w.submit(|| Ok(1), Err);
        w.submit(|| panic!("boom"), Err);
        w.submit(|| Ok(3), Err);
        assert_eq!(rx.blocking_recv(), Some(Ok(1)));
        assert_eq!(rx.blocking_recv(), Some(Err("boom".into())));
        assert_eq!(rx.blocking_recv(), Some(Ok(3)));
        drop(w);
        assert_eq!(rx.blocking_recv(), None, "threads end when the worker is dropped");
    }
}
