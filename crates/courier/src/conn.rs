//! One connection: its sender, its table of calls in flight, its reader task.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::Poll;

use bytes::Bytes;
use courier_transport::{Address as WireAddr, DynReceiver, DynSender};
use tokio::sync::{oneshot, Notify};
use tokio::task::AbortHandle;

use crate::engine::Inner;
use crate::frame::{self, Header, Kind, Status};
use crate::limits::{ConnLimits, ConnectionSlot};
use crate::progress::Progress;
use crate::{Error, Result};

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
    progress: Arc<Progress>,
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
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
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
    fn complete(&self, header: Header, payload: Bytes) -> bool {
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

/// Reads messages until the connection ends, dispatching each one.
///
/// `slot` is an accepted connection's place among `max_connections`, given
/// back when the reader ends. Before each read the reader takes a request
/// slot (`limits.rs`): a peer over its budget is not read from.
pub(crate) async fn read_loop(
    inner: Arc<Inner>,
    conn: Arc<Conn>,
    mut rx: Box<dyn DynReceiver>,
    expect_hello: bool,
    slot: Option<ConnectionSlot>,
) {
    let _slot = slot;
    let _forget = ForgetConn {
        inner: &inner,
        id: conn.id,
    };
    let mut expect_hello = expect_hello;
    let mut request_slot = None;
    let reason = loop {
        let received = if expect_hello {
            // Slowloris: the first frame must come within hello_timeout_ms.
            let after = inner.config.hello_timeout();
            match tokio::time::timeout(after, conn.progress.watch(rx.recv_dyn())).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!(peer = %conn.remote(), "closing connection: no Hello frame within {after:?}");
                    break format!("the peer sent no Hello frame within {after:?}");
                }
            }
        } else {
            if request_slot.is_none() {
                request_slot = Some(conn.limits.request_slot().await);
            }
            conn.progress.watch(rx.recv_dyn()).await
        };
        let msg = match received {
            Ok(Some(m)) => {
                conn.progress.activity();
                m
            }
            Ok(None) => break "the peer closed the connection".to_owned(),
            Err(e) => {
                tracing::warn!(peer = %conn.remote(), "closing connection: {e}");
                break e.to_string();
            }
        };
        let (header, payload) = match frame::split(&msg) {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(peer = %conn.remote(), "closing connection: invalid frame: {e}");
                break format!("invalid frame: {e}");
            }
        };
        if expect_hello {
            if header.kind != Kind::Hello {
                tracing::warn!(peer = %conn.remote(), kind = ?header.kind, "closing connection: expected a Hello frame first");
                break "the peer did not start with a Hello frame".to_owned();
            }
            expect_hello = false;
            announce(&inner, &conn, &payload);
            continue;
        }
        match header.kind {
            Kind::Request => {
                inner
                    .dispatch(&conn, header, payload, request_slot.take())
                    .await
            }
            Kind::Response | Kind::Error | Kind::Pong => {
                if !conn.complete(header, payload) {
                    tracing::debug!(peer = %conn.remote(), seq = header.seq, "reply to no call in flight (late, after a timeout?)");
                }
            }
            Kind::Shutdown => inner.remote_shutdown(&conn, header).await,
            Kind::BulkPull | Kind::BulkPush | Kind::BulkGrant | Kind::BulkRelease => {
                crate::bulk::serve(&inner, &conn, header, payload).await
            }
            Kind::Ping => {
                let pong = Header {
                    kind: Kind::Pong,
                    ..header
                };
                let _ = conn.send(&[&pong.encode()]).await;
            }
            Kind::Hello => {
                tracing::warn!(peer = %conn.remote(), "closing connection: a second Hello frame");
                break "the peer sent a second Hello frame".to_owned();
            }
        }
    };
    conn.kill(&reason);
}

/// Removes a connection from the engine's table when its reader ends,
/// including when the reader is aborted.
struct ForgetConn<'a> {
    inner: &'a Inner,
    id: u64,
}

impl Drop for ForgetConn<'_> {
    fn drop(&mut self) {
        self.inner.forget_conn(self.id);
    }
}

fn announce(inner: &Inner, conn: &Conn, payload: &[u8]) {
    if payload.is_empty() {
        return;
    }
    let parsed = std::str::from_utf8(payload)
        .ok()
        .and_then(|s| s.parse::<WireAddr>().ok())
        .and_then(|a| inner.canonical(&a).ok());
    match parsed {
        Some(a) => {
            let _ = conn.announced.set(a);
        }
        None => {
            tracing::debug!(peer = %conn.remote(), "ignoring an invalid address in a Hello frame")
        }
    }
}
