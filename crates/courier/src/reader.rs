//! A connection's reader: one task per connection that reads messages,
//! checks the Hello, splits each frame and hands it to `dispatch.rs`.
//!
//! Before each read the reader takes a request slot (`limits.rs`): a peer
//! over its budget is simply not read from.

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;

use courier_transport::DynReceiver;

use crate::conn::Conn;
use crate::dispatch::Dispatcher;
use crate::frame::{self, Kind};
use crate::limits::ConnectionSlot;
use crate::state::EngineState;
use crate::sync::poll_once;
use crate::timeouts;

/// Reads messages until the connection ends, dispatching each one.
///
/// `slot` is an accepted connection's place among `max_connections`, given
/// back when the reader ends; `expect_hello` is set on accepted
/// connections, whose first frame must be a Hello within
/// `timeouts.hello_ms`.
pub(crate) async fn read_loop(
    dispatch: Arc<Dispatcher>,
    conn: Arc<Conn>,
    mut rx: Box<dyn DynReceiver>,
    expect_hello: bool,
    slot: Option<ConnectionSlot>,
) {
    let _slot = slot;
    let state = &dispatch.state;
    let _forget = ForgetConn { state, id: conn.id };
    let mut expect_hello = expect_hello;
    let mut request_slot = None;
    let mut burst = Burst::default();
    let reason = loop {
        let received = if expect_hello {
            // Slowloris: the first frame must come in time.
            let deadline = timeouts::hello(&state.config.timeouts);
            let recv = conn.liveness.watch(&state.clock, rx.recv_dyn());
            match deadline.run(conn.progress.watch(recv)).await {
                Ok(r) => r,
                Err(after) => {
                    tracing::warn!(peer = %conn.remote(), "closing connection: no Hello frame within {after:?}");
                    break format!("the peer sent no Hello frame within {after:?}");
                }
            }
        } else {
            if request_slot.is_none() {
                let mut slot = pin!(conn.limits.request_slot());
                request_slot = match poll_once(&mut slot).await {
                    Poll::Ready(s) => Some(s),
                    Poll::Pending => {
                        conn.counters.limit_waits.fetch_add(1, Ordering::Relaxed);
                        conn.counters.at_limit.store(true, Ordering::Relaxed);
                        let _waited = ClearOnDrop(&conn.counters.at_limit);
                        burst.end(&conn).await;
                        // Not read on purpose: keepalive waits meanwhile.
                        let _paused = conn.liveness.pause(&state.clock);
                        // At the limit, the reader still reads while this
                        // engine waits for answers on the connection: a
                        // handler that called its caller back needs the
                        // answer to finish, and free a slot. Requests that
                        // come meanwhile are refused as busy (`dispatch.rs`).
                        tokio::select! {
                            biased;
                            s = &mut slot => Some(s),
                            () = conn.call_started() => None,
                        }
                    }
                };
            }
            let mut recv = conn
                .progress
                .watch(conn.liveness.watch(&state.clock, rx.recv_dyn()));
            match poll_once(&mut recv).await {
                Poll::Ready(r) => r,
                Poll::Pending => {
                    if burst.end(&conn).await {
                        recv.await
                    } else {
                        // The poll above registered this task's waker; go
                        // back to the scheduler before polling again, as a
                        // plain await would have (a transport may yield to
                        // the tasks this reader woke before it spins).
                        Resumed::new(&mut recv).await
                    }
                }
            }
        };
        let msg = match received {
            Ok(Some(m)) => {
                conn.progress.received();
                conn.counters.received(m.len());
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
            announce(state, &conn, &payload);
            continue;
        }
        match header.kind {
            // The hot path: answers to what arrives together go out together.
            Kind::Request | Kind::Response | Kind::Error | Kind::Pong => {
                burst.message(&conn).await;
            }
            _ => {
                burst.end(&conn).await;
            }
        }
        if let Err(reason) = dispatch
            .frame(&conn, header, payload, &mut request_slot)
            .await
        {
            break reason;
        }
    };
    conn.kill(&reason);
}

/// Messages handled under one cork at most: a peer that keeps the reader
/// busy still gets its answers in batches of this many.
const MAX_BURST: usize = 64;

/// The messages the reader handled since it last waited, and whether the
/// connection is corked for them (see `Conn::cork`).
#[derive(Debug, Default)]
struct Burst {
    handled: usize,
    corked: bool,
}

impl Burst {
    /// Before the reader handles a message of the hot path (a request, an
    /// answer). The first message of a burst is answered at once (one call
    /// in flight is all first messages); the cork starts with the second.
    async fn message(&mut self, conn: &Conn) {
        if self.corked && self.handled >= MAX_BURST {
            conn.uncork().await;
            self.corked = conn.cork();
            self.handled = 0;
        } else if !self.corked && self.handled >= 1 {
            self.corked = conn.cork();
        }
        self.handled += 1;
    }

    /// Before the reader waits for anything. After a burst of several
    /// messages, the reader first lets the tasks the burst woke run (the
    /// callers whose responses came in it, the handlers that had to wait):
    /// their next messages then join the batch if the connection was
    /// corked, which it now uncorks, writing what was queued. On a medium
    /// that is never corked the yield pays too: the reader polls again
    /// after it, and often finds the peer's next messages without being
    /// woken (mem, 64 B x 32 in flight: 0.5-0.7 M calls/s with it, 0.42 M
    /// without). After a single message (one call in flight) it does not
    /// wait. Returns whether it yielded.
    async fn end(&mut self, conn: &Conn) -> bool {
        let handled = std::mem::take(&mut self.handled);
        let yielded = handled >= 2;
        if yielded {
            YieldToTasks(false).await;
        }
        if std::mem::take(&mut self.corked) {
            conn.uncork().await;
        }
        yielded
    }
}

/// Yields once to the tasks ready on this thread: wakes itself, which
/// puts the task at the back of the run queue, without the I/O driver poll
/// (a system call) that `tokio::task::yield_now` waits for.
struct YieldToTasks(bool);

impl Future for YieldToTasks {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Awaits a future that was just polled, in this task, and returned
/// `Pending`: returns to the scheduler once before polling it again. Its
/// waker is registered, so the task is polled again when it has news (or
/// at once, if it asked to yield).
struct Resumed<'a, F> {
    inner: &'a mut F,
    polled: bool,
}

impl<'a, F> Resumed<'a, F> {
    fn new(inner: &'a mut F) -> Self {
        Self {
            inner,
            polled: false,
        }
    }
}

impl<F: Future + Unpin> Future for Resumed<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
        if !self.polled {
            self.polled = true;
            return Poll::Pending;
        }
        Pin::new(&mut *self.inner).poll(cx)
    }
}

/// Removes a connection from the engine's table when its reader ends,
/// including when the reader is aborted.
struct ForgetConn<'a> {
    state: &'a EngineState,
    id: u64,
}

impl Drop for ForgetConn<'_> {
    fn drop(&mut self) {
        self.state.forget_conn(self.id);
    }
}

/// Records the listening address (set) a Hello announces, if it parses.
fn announce(state: &EngineState, conn: &Conn, payload: &[u8]) {
    if payload.is_empty() {
        return;
    }
    let parsed = std::str::from_utf8(payload)
        .ok()
        .and_then(|s| state.paths.announced(s));
    match parsed {
        Some(a) => conn.announce(a),
        None => {
            tracing::debug!(peer = %conn.remote(), "ignoring an invalid address in a Hello frame")
        }
    }
}

/// Clears a flag when dropped (however the wait it marks ends).
struct ClearOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}
