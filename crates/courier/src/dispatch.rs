//! Dispatch of an incoming frame: the connection's reader (`reader.rs`)
//! hands every frame after the Hello to [`Dispatcher::frame`], which
//! decides what it is for —
//!
//! * a request: its handler runs (or the caller is told why not: no such
//!   RPC, one-way, finalizing, its provider busy — `admission.rs`);
//! * an answer (`Response`, `Error`, `Pong`): the call waiting for it, in
//!   the connection's table (`call.rs`), gets it;
//! * a `Ping`: answered with a `Pong` at once;
//! * a `Shutdown`: the engine finalizes, if remote shutdown is enabled;
//! * a bulk frame: the exposing side answers it (`bulk/serve.rs`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::admission::{Admitted, Providers};
use crate::bulk::serve::serve as serve_bulk;
use crate::conn::Conn;
use crate::flow::{End, Flow};
use crate::frame::RESERVED_PROVIDER;
use crate::frame::{Extensions, Header, Kind, Overflow, Status};
use crate::handler::{self, Arrival, Handle, RawHandler};
use crate::limits::RequestSlot;
use crate::overflow::{self, expose, NotReceived};
use crate::rpcs::{RpcEntry, RpcTable};
use crate::state::EngineState;
use crate::stats::record::{Outcome, RpcRecord};
use crate::sync::poll_once;

/// How long a remote shutdown waits for its answer to be delivered (the
/// sending half closed gracefully) before the engine finalizes.
const SHUTDOWN_LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// A registered RPC's handler and its statistics.
pub(crate) struct Served {
    pub(crate) run: RawHandler,
    pub(crate) stats: Arc<RpcRecord>,
}

/// Routes frames to handlers, calls in flight, and the engine.
pub(crate) struct Dispatcher {
    pub(crate) state: Arc<EngineState>,
    pub(crate) rpcs: Arc<RpcTable<Served>>,
    /// Limits and pools of providers.
    pub(crate) providers: Arc<Providers>,
}

impl Dispatcher {
    /// Does what `header` says with a frame received on `conn`. `slot` is
    /// the request slot the reader took before reading; a request keeps it
    /// until its handler is done.
    ///
    /// # Errors
    /// Why the connection must be closed (a second Hello).
    pub(crate) async fn frame(
        &self,
        conn: &Arc<Conn>,
        header: Header,
        payload: Bytes,
        slot: &mut Option<RequestSlot>,
    ) -> Result<(), String> {
        let (ext, payload) = if header.has_extensions() {
            match Extensions::decode(&payload) {
                Ok(x) => x,
                Err(e) => {
                    refuse_extensions(conn, header, &e.to_string()).await;
                    return Ok(());
                }
            }
        } else {
            (Extensions::default(), payload)
        };
        match header.kind {
            Kind::Request => match slot.take() {
                Some(slot) => self.request(conn, header, ext, payload, slot).await,
                None => {
                    over_limit(conn, header, self.state.config.max_in_flight_per_connection).await
                }
            },
            Kind::Response if ext.overflow.is_some() => {
                if let Some(entry) = ext.overflow {
                    // Its payload is to be pulled, by a task.
                    overflow::response(&self.state, conn, header, entry);
                }
            }
            Kind::Response | Kind::Error | Kind::Pong => {
                if !conn.complete(header, payload) {
                    tracing::debug!(peer = %conn.remote(), seq = header.seq, "reply to no call in flight (late, after a timeout?)");
                }
            }
            Kind::Ping => {
                let pong = Header {
                    kind: Kind::Pong,
                    ..header
                };
                let _ = conn.send(&[&pong.encode()]).await;
            }
            Kind::Shutdown => self.shutdown(conn, header).await,
            Kind::BulkPull | Kind::BulkPush | Kind::BulkGrant | Kind::BulkRelease => {
                serve_bulk(&self.state, conn, header, payload).await;
            }
            Kind::Cancel => {
                // Unknown or finished requests are ignored (a flood of
                // cancels costs a table lookup each).
                if conn.cancel_request(header.seq) {
                    tracing::debug!(peer = %conn.remote(), seq = header.seq, "request cancelled by its caller");
                }
            }
            Kind::RequestItem
            | Kind::RequestEnd
            | Kind::RequestCredit
            | Kind::ResponseItem
            | Kind::ResponseCredit => return stream_frame(conn, header, payload).await,
            Kind::OverflowRelease => {
                // The caller pulled a response (or gave it up): free it.
                // An unknown sequence is ignored.
                self.state.bulk.release_held(conn.id, header.seq);
            }
            Kind::Hello => {
                tracing::warn!(peer = %conn.remote(), "closing connection: a second Hello frame");
                return Err("the peer sent a second Hello frame".to_owned());
            }
        }
        Ok(())
    }

    /// Answers a request frame: runs the handler, or says why not. `slot`
    /// (the request's place among the connection's in-flight requests) is
    /// held by the handler's handle until the request is done.
    async fn request(
        &self,
        conn: &Arc<Conn>,
        header: Header,
        ext: Extensions,
        payload: Bytes,
        slot: RequestSlot,
    ) {
        let state = &self.state;
        if header.provider == RESERVED_PROVIDER {
            conn.counters.request(|| {
                conn.limits
                    .in_flight(state.config.max_in_flight_per_connection)
            });
            return crate::stats::serve::request(state, &self.providers, conn, header, slot).await;
        }
        let refuse = |status: Status, message: String| async move {
            if header.no_response() {
                tracing::debug!(
                    rpc = header.rpc,
                    provider = header.provider,
                    "dropping one-way request: {message}"
                );
                return;
            }
            let _ = conn.send_error(&header, status, &message).await;
        };
        let Some(entry) = self.rpcs.get(header.rpc, header.provider) else {
            state.stats.unknown_rpcs.fetch_add(1, Ordering::Relaxed);
            if state.is_finalizing() {
                return refuse(Status::Finalizing, "the engine is finalizing".into()).await;
            }
            let what = self.rpcs.describe(header.rpc);
            return refuse(
                Status::NoSuchRpc,
                format!("no such RPC {what} at provider {}", header.provider),
            )
            .await;
        };
        let record = &entry.handler.stats;
        // Arguments by the bulk path count as what they are.
        let bytes_in = ext.overflow.map_or(payload.len(), |o| {
            usize::try_from(o.len).unwrap_or(usize::MAX)
        });
        if state.is_finalizing() {
            record.server.refused(Outcome::Finalizing, bytes_in as u64);
            return refuse(Status::Finalizing, "the engine is finalizing".into()).await;
        }
        if entry.disable_response && !header.no_response() {
            record.server.refused(Outcome::OneWay, bytes_in as u64);
            return refuse(
                Status::OneWay,
                format!("RPC '{}' is registered with disable_response", entry.name),
            )
            .await;
        }
        // The budget the caller sent counts from now (the clock is read
        // only for a request that has one).
        let deadline = ext.deadline.map(|budget| Instant::now() + budget);
        if ext.deadline.is_some_and(|budget| budget.is_zero()) {
            record.server.refused(Outcome::Deadline, bytes_in as u64);
            tracing::debug!(rpc = %entry.name, "dropping a request whose deadline had passed when it was sent");
            return;
        }
        let admitted = match self.providers.admit(header.provider, header.no_response()) {
            Ok(admitted) => admitted,
            Err(busy) => {
                record.server.refused(Outcome::Busy, bytes_in as u64);
                return refuse(Status::Busy, busy.to_string()).await;
            }
        };
        if let Some(over) = &ext.overflow {
            // Over this engine's max_payload_bytes: refused before anything
            // is pulled or allocated (the provider's place goes back).
            if let Err(why) = overflow::check(state, over) {
                record.server.refused(Outcome::Invalid, bytes_in as u64);
                tracing::info!(rpc = %entry.name, "refusing arguments of {} bytes: {why}", over.len);
                if !header.no_response() {
                    overflow::refuse(state, conn, &header, over.len, expose::ARGUMENTS, &why).await;
                }
                return;
            }
        }
        conn.counters.request(|| {
            conn.limits
                .in_flight(state.config.max_in_flight_per_connection)
        });
        // A stream: its flow is served from now, and the caller may send
        // its window's worth of request items.
        let stream = match ext.stream {
            Some(credit) => {
                let window = state.config.streams.window_bytes;
                let flow = Arc::new(Flow::new(window, credit, state.stats.streams.clone()));
                conn.serve_stream(header.seq, flow.clone());
                let grant = Header {
                    kind: Kind::RequestCredit,
                    flags: 0,
                    ..header
                };
                let _ = conn.send(&[&grant.encode(), &window.to_le_bytes()]).await;
                Some(flow)
            }
            None => None,
        };
        let handle = Handle::new(
            state.clone(),
            conn.clone(),
            record.clone(),
            entry.idempotent,
            Arrival {
                header,
                deadline,
                trace: ext.trace,
                received: state.stats.now(),
                bytes_in,
                slot: Some(slot),
                stream,
            },
        );
        if let Some(over) = ext.overflow {
            return self.pull_then_run(conn, entry, handle, over, admitted);
        }
        if let Some(admitted) = admitted {
            // A provider with limits or a pool: a task (on its pool), never
            // polled here; its handle holds the provider's place. A cancel
            // (or the deadline) while it waits in the queue: its handler
            // never runs.
            handle.track();
            handle.mark_waiting();
            let state = state.clone();
            return admitted.spawn(&self.state.handler_rt, move |place| async move {
                handle.hold_place(place);
                if state.is_finalizing() {
                    return; // It waited in the queue across a finalize.
                }
                handler::run(entry.handler.run.clone(), handle, payload).await;
            });
        }
        if !state.inline_handlers {
            // It runs on another thread: a cancel may come before it starts.
            handle.track();
            handle.mark_waiting();
            let fut = handler::run(entry.handler.run.clone(), handle, payload);
            state.handler_rt.spawn(fut);
            return;
        }
        let mut fut = Box::pin(handler::run(entry.handler.run.clone(), handle, payload));
        // Handlers run on this runtime: poll the handler once right here.
        // Most finish in that one poll (decode, compute, respond), which
        // saves a task spawn and a trip through the scheduler per request;
        // one that has to wait goes on as a task of its own, so the reader
        // is never held up by it.
        let first = poll_once(&mut fut).await;
        if first.is_pending() {
            state.handler_rt.spawn(fut);
        }
    }

    /// A request whose arguments travel by the bulk path: a task (on its
    /// provider's pool, once it has its place, if it has limits or a pool)
    /// pulls them from the caller over `conn`, bounded by the request's
    /// deadline and stopped by its cancellation (a `Cancel` frame, the
    /// connection's loss), then runs the handler on them as on inline
    /// arguments. A request cancelled meanwhile never reaches its handler;
    /// one whose arguments cannot be had is refused (`TooLarge` if no
    /// memory, `BulkRefused` if the pull failed).
    fn pull_then_run(
        &self,
        conn: &Arc<Conn>,
        entry: Arc<RpcEntry<Served>>,
        handle: Handle,
        over: Overflow,
        admitted: Option<Admitted>,
    ) {
        // A Cancel frame (or the connection's loss) finds it from now on.
        handle.track();
        handle.mark_waiting();
        let (state, conn) = (self.state.clone(), conn.clone());
        let run = move |place| async move {
            handle.hold_place(place);
            let token = handle.cancel_token();
            let received = tokio::select! {
                biased;
                reason = token.cancelled() => return handle.cancel_unstarted(reason),
                r = overflow::receive(&state, &conn, over) => r,
            };
            match received {
                Ok(payload) => {
                    if state.is_finalizing() {
                        return;
                    }
                    handler::run(entry.handler.run.clone(), handle, payload).await;
                }
                Err(NotReceived::TooLarge(why)) => {
                    let refusal = expose::too_large(
                        over.len,
                        state.config.max_payload_bytes,
                        expose::ARGUMENTS,
                        &why,
                    );
                    handle.refuse_unstarted(Status::TooLarge, &refusal).await;
                }
                Err(NotReceived::Failed(e)) => {
                    let why = format!(
                        "cannot pull the arguments of RPC '{}' from its caller: {e}",
                        entry.name
                    );
                    handle
                        .refuse_unstarted(Status::BulkRefused, why.as_bytes())
                        .await;
                }
            }
        };
        match admitted {
            Some(admitted) => admitted.spawn(&self.state.handler_rt, run),
            None => drop(self.state.handler_rt.spawn(run(None))),
        }
    }

    /// Answers a shutdown request: the answer is sent and delivered before
    /// the engine finalizes (at most [`SHUTDOWN_LINGER`] is spent on it).
    async fn shutdown(&self, conn: &Arc<Conn>, header: Header) {
        let state = &self.state;
        if !state.lifecycle.remote_shutdown_enabled() {
            tracing::info!(peer = %conn.remote(), "refused a remote shutdown (not enabled)");
            let _ = conn
                .send_error(
                    &header,
                    Status::ShutdownRefused,
                    "remote shutdown is not enabled",
                )
                .await;
            return;
        }
        tracing::info!(peer = %conn.remote(), "remote shutdown requested");
        let ack = Header {
            kind: Kind::Response,
            ..header
        };
        // Written before the engine finalizes (and drops what is queued),
        // then delivered: the sending half is closed gracefully, bounded in
        // time (a peer that stopped reading does not hold the shutdown).
        let _ = conn.send_flushed(&[&ack.encode()]).await;
        let _ = tokio::time::timeout(SHUTDOWN_LINGER, conn.close_sending()).await;
        let state = state.clone();
        self.state.rt.spawn(async move { state.finalize().await });
    }
}

/// Answers a frame whose extension block is refused: a request gets a
/// `BadExtension` error (nothing ran); an answer is passed to its call as
/// that error; anything else is dropped. The connection stays: the frame
/// was whole, only its content is refused.
async fn refuse_extensions(conn: &Conn, header: Header, why: &str) {
    tracing::warn!(peer = %conn.remote(), kind = ?header.kind, "refusing a frame: {why}");
    let message = format!("refused header extensions: {why}");
    match header.kind {
        Kind::Request if !header.no_response() => {
            let _ = conn
                .send_error(&header, Status::BadExtension, &message)
                .await;
        }
        Kind::Response | Kind::Error | Kind::Pong => {
            let refused = Header {
                kind: Kind::Error,
                flags: 0,
                status: Status::BadExtension,
                ..header
            };
            conn.complete(refused, Bytes::from(message));
        }
        _ => {}
    }
}

/// A stream's frame: an item, the end of a request stream, or credit,
/// handed to its flow (`flow.rs`). Frames of a stream that is over are
/// dropped (bounded: the peer had credit for them). An item past its
/// credit cuts the connection off.
///
/// # Errors
/// Why the connection must be closed: a peer that floods, or a credit
/// frame that is not 8 bytes.
async fn stream_frame(conn: &Conn, header: Header, payload: Bytes) -> Result<(), String> {
    let seq = header.seq;
    // Frames of the peer's requests (caller to handler), or of this
    // engine's calls (handler to caller).
    let served = matches!(
        header.kind,
        Kind::RequestItem | Kind::RequestEnd | Kind::ResponseCredit
    );
    let flow = if served {
        conn.served_stream(seq)
    } else {
        conn.opened_stream(seq)
    };
    let Some(flow) = flow else {
        tracing::trace!(peer = %conn.remote(), seq, kind = ?header.kind, "dropping a frame of a stream that is over");
        return Ok(());
    };
    match header.kind {
        Kind::RequestItem | Kind::ResponseItem => match flow.on_item(payload) {
            Ok(None) => {}
            Ok(Some(grant)) => {
                // Nobody reads it: its credit goes back at once.
                let kind = if served {
                    Kind::RequestCredit
                } else {
                    Kind::ResponseCredit
                };
                let credit = Header {
                    kind,
                    flags: 0,
                    ..header
                };
                let _ = conn.send(&[&credit.encode(), &grant.to_le_bytes()]).await;
            }
            Err(flood) => {
                let why = format!(
                    "the peer broke flow control: it sent an item of stream {seq} after using all {} bytes of credit it was granted ({} used)",
                    flood.granted, flood.used
                );
                tracing::warn!(peer = %conn.remote(), "closing the connection: {why}");
                return Err(why);
            }
        },
        Kind::RequestEnd => match header.status {
            Status::Ok => flow.finish(End::Finished),
            _ => flow.finish(End::Aborted(String::from_utf8_lossy(&payload).into_owned())),
        },
        _ => {
            let Ok(bytes) = <[u8; 8]>::try_from(&payload[..]) else {
                return Err(format!(
                    "a {:?} frame of {} bytes (expected 8)",
                    header.kind,
                    payload.len()
                ));
            };
            flow.on_credit(u64::from_le_bytes(bytes));
        }
    }
    Ok(())
}

/// Refuses a request that came while the connection is at
/// `max_in_flight_per_connection`: the reader reads on at the limit only
/// while this engine waits for answers on the connection (a handler that
/// calls its caller back), and requests that come meanwhile are refused
/// as `Busy`, before any handler sees them.
async fn over_limit(conn: &Conn, header: Header, max: usize) {
    if header.no_response() {
        tracing::debug!(peer = %conn.remote(), "dropping a one-way request over max_in_flight_per_connection");
        return;
    }
    let message = format!(
        "the connection has {max} requests in flight (max_in_flight_per_connection) while its handlers wait for answers from this peer"
    );
    let _ = conn.send_error(&header, Status::Busy, &message).await;
}
