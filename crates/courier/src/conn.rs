//! One connection: its sender, its table of calls in flight, and its
//! death. The reader task is in `reader.rs`, what it does with each frame
//! in `dispatch.rs`, and the call primitive on top of this in `call.rs`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::Poll;

use bytes::Bytes;
use courier_transport::{Address as WireAddr, DynSender};
use tokio::sync::{oneshot, Notify};
use tokio::task::AbortHandle;

use crate::error::{Error, Result};
use crate::frame::{self, Header, Kind, Status};
use crate::limits::ConnLimits;
use crate::progress::Progress;
use crate::sync::lock;

/// A reply to a call: the response or error frame's header and payload.
pub(crate) type Reply = (Header, Bytes);

struct Pending {
    calls: HashMap<u64, oneshot::Sender<Reply>>,
    /// Set once the connection is dead: why.
    closed: Option<String>,
}

pub(crate) struct Conn {
    pub(crate) id: u64,
    /// The address the peer is known by: the one dialed, the one it announced
    /// in its Hello, or the transport's view of it.
    transport_peer: WireAddr,
    announced: OnceLock<WireAddr>,
    sender: tokio::sync::Mutex<Option<Box<dyn DynSender>>>,
    pending: Mutex<Pending>,
    next_seq: AtomicU64,
    dead: AtomicBool,
    /// Woken when the connection is killed, to end sends blocked on it.
    killed: Notify,
    reader: OnceLock<AbortHandle>,
    pub(crate) progress: Arc<Progress>,
    /// Budgets for the requests this connection brings (`limits.rs`).
    pub(crate) limits: ConnLimits,
    /// What the transport connection offers besides messages (bulk fast path).
    pub(crate) capabilities: OnceLock<courier_transport::Capabilities>,
}

impl Conn {
    pub(crate) fn new(
        id: u64,
        peer: WireAddr,
        sender: Box<dyn DynSender>,
        progress: Arc<Progress>,
        limits: ConnLimits,
    ) -> Self {
        Self {
            id,
            transport_peer: peer,
            announced: OnceLock::new(),
            sender: tokio::sync::Mutex::new(Some(sender)),
            pending: Mutex::new(Pending {
                calls: HashMap::new(),
                closed: None,
            }),
            next_seq: AtomicU64::new(1),
            dead: AtomicBool::new(false),
            killed: Notify::new(),
            reader: OnceLock::new(),
            progress,
            limits,
            capabilities: OnceLock::new(),
        }
    }

    /// Records the address the peer announced in its Hello.
    pub(crate) fn announce(&self, addr: WireAddr) {
        let _ = self.announced.set(addr);
    }

    /// The peer's address: announced (Hello) or as the transport sees it.
    pub(crate) fn remote(&self) -> &WireAddr {
        self.announced.get().unwrap_or(&self.transport_peer)
    }

    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    pub(crate) fn set_reader(&self, handle: AbortHandle) {
        let _ = self.reader.set(handle);
        if self.is_dead() {
            if let Some(r) = self.reader.get() {
                r.abort();
            }
        }
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        // A poisoned lock only means another thread panicked while holding
        // it; the table itself is always consistent.
        lock(&self.pending)
    }

    /// Sends one message; a failure that breaks the connection kills it.
    ///
    /// The write races the connection's death: a send blocked on a peer
    /// that stopped reading ends with the connection when it is killed
    /// (by finalize, or by the reader seeing the peer go). If this future is
    /// dropped while the message is being written, the stream is left
    /// mid-message, so the connection is killed (the transport contract).
    pub(crate) async fn send(&self, parts: &[&[u8]]) -> Result<()> {
        // Fast path: the sender is free and the message goes out in one
        // poll (the common case); the race against the connection's death
        // is only set up when something has to wait.
        let mut guard = match self.sender.try_lock() {
            Ok(g) => g,
            Err(_) => {
                let killed = self.killed.notified();
                tokio::pin!(killed);
                killed.as_mut().enable();
                if self.is_dead() {
                    return Err(self.lost());
                }
                tokio::select! {
                    biased;
                    () = killed => return Err(self.lost()),
                    g = self.sender.lock() => g,
                }
            }
        };
        if self.is_dead() {
            guard.take();
            return Err(self.lost());
        }
        let Some(sender) = guard.as_mut() else {
            return Err(self.lost());
        };
        let mut cancelled = KillIfDropped {
            conn: self,
            armed: true,
        };
        let mut send = self.progress.watch(sender.send_dyn(parts));
        let first = std::future::poll_fn(|cx| {
            Poll::Ready(std::future::Future::poll(Pin::new(&mut send), cx))
        })
        .await;
        let outcome = match first {
            Poll::Ready(r) => Some(r),
            Poll::Pending => {
                let killed = self.killed.notified();
                tokio::pin!(killed);
                killed.as_mut().enable();
                if self.is_dead() {
                    None
                } else {
                    tokio::select! {
                        biased;
                        r = &mut send => Some(r),
                        () = killed => None,
                    }
                }
            }
        };
        drop(send);
        cancelled.armed = false;
        match outcome {
            None => {
                guard.take();
                Err(self.lost())
            }
            Some(Ok(())) => {
                self.progress.activity();
                if self.is_dead() {
                    // Killed while we were writing: close now.
                    guard.take();
                }
                Ok(())
            }
            Some(Err(e)) if !e.is_fatal_to_connection() => Err(e.into()),
            Some(Err(e)) => {
                guard.take();
                drop(guard);
                let reason = e.to_string();
                self.kill(&reason);
                Err(Error::ConnectionLost {
                    address: self.remote().to_string(),
                    reason,
                })
            }
        }
    }

    /// The error a call gets once the connection is dead.
    pub(crate) fn lost(&self) -> Error {
        let reason = self
            .lock_pending()
            .closed
            .clone()
            .unwrap_or_else(|| "the connection is closed".into());
        if reason == FINALIZED {
            return Error::Finalized;
        }
        Error::ConnectionLost {
            address: self.remote().to_string(),
            reason,
        }
    }

    /// A sequence number for a frame that expects no reply.
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a call in flight; returns its sequence number and receiver.
    pub(crate) fn register_call(&self) -> Result<(u64, oneshot::Receiver<Reply>)> {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let mut p = self.lock_pending();
        if p.closed.is_some() {
            drop(p);
            return Err(self.lost());
        }
        p.calls.insert(seq, tx);
        Ok((seq, rx))
    }

    /// Forgets a call (completed, timed out or cancelled).
    pub(crate) fn forget_call(&self, seq: u64) {
        self.lock_pending().calls.remove(&seq);
    }

    /// Completes a call with its reply. Returns false for an unknown sequence
    /// (a late reply after a timeout: dropped).
    pub(crate) fn complete(&self, header: Header, payload: Bytes) -> bool {
        let tx = self.lock_pending().calls.remove(&header.seq);
        match tx {
            Some(tx) => {
                let _ = tx.send((header, payload));
                true
            }
            None => false,
        }
    }

    /// Marks the connection dead: every call in flight fails with `reason`,
    /// the reader stops, the sender is closed (now, or when the send under
    /// way ends).
    pub(crate) fn kill(&self, reason: &str) {
        if self.dead.swap(true, Ordering::AcqRel) {
            return;
        }
        let calls = {
            let mut p = self.lock_pending();
            p.closed = Some(reason.to_owned());
            std::mem::take(&mut p.calls)
        };
        // Dropping the senders wakes every waiting call.
        drop(calls);
        self.killed.notify_waiters();
        if let Ok(mut s) = self.sender.try_lock() {
            s.take();
        }
        if let Some(r) = self.reader.get() {
            r.abort();
        }
    }

    /// Sends an error frame answering `req`.
    pub(crate) async fn send_error(
        &self,
        req: &Header,
        status: Status,
        message: &str,
    ) -> Result<()> {
        let h = Header {
            kind: Kind::Error,
            flags: 0,
            status,
            provider: req.provider,
            rpc: req.rpc,
            seq: req.seq,
        };
        let _queued = self.limits.queue(frame::HEADER_LEN + message.len());
        self.send(&[&h.encode(), message.as_bytes()]).await
    }
}

/// Kills the connection if a send is dropped part way (see [`Conn::send`]).
struct KillIfDropped<'a> {
    conn: &'a Conn,
    armed: bool,
}

impl Drop for KillIfDropped<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.conn
                .kill("a message was cancelled part way through being sent");
        }
    }
}

/// The reason recorded on connections closed by finalize.
pub(crate) const FINALIZED: &str = "the engine was finalized";
