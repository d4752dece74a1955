//! A connection's reader: one task per connection that reads messages,
//! checks the Hello, splits each frame and hands it to `dispatch.rs`.
//!
//! Before each read the reader takes a request slot (`limits.rs`): a peer
//! over its budget is simply not read from.

use std::sync::Arc;

use courier_transport::{Address as WireAddr, DynReceiver};

use crate::conn::Conn;
use crate::dispatch::Dispatcher;
use crate::frame::{self, Kind};
use crate::limits::ConnectionSlot;
use crate::state::EngineState;
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
    let reason = loop {
        let received = if expect_hello {
            // Slowloris: the first frame must come in time.
            let deadline = timeouts::hello(&state.config.timeouts);
            match deadline.run(conn.progress.watch(rx.recv_dyn())).await {
                Ok(r) => r,
                Err(after) => {
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
            announce(state, &conn, &payload);
            continue;
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

/// Records the listening address a Hello announces, if it is valid.
fn announce(state: &EngineState, conn: &Conn, payload: &[u8]) {
    if payload.is_empty() {
        return;
    }
    let parsed = std::str::from_utf8(payload)
        .ok()
        .and_then(|s| s.parse::<WireAddr>().ok())
        .and_then(|a| state.canonical(&a).ok());
    match parsed {
        Some(a) => conn.announce(a),
        None => {
            tracing::debug!(peer = %conn.remote(), "ignoring an invalid address in a Hello frame")
        }
    }
}
