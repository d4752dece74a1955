//! The built-in statistics RPC: [`STATS_RPC`] at the reserved provider
//! (65535), served only when the configuration says so (`stats.serve`).
//!
//! The request's payload is empty; the response is the JSON of a
//! [`Stats`](Stats) snapshot. The snapshot is taken and encoded on
//! a blocking thread, never on the engine's runtime, one at a time: a
//! request that comes while another is being answered gets `Busy`, so a
//! peer asking in a loop costs the engine nothing but the refusals.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::schema::{Stats, STATS_RPC};
use crate::address::Address;
use crate::admission::Providers;
use crate::conn::Conn;
use crate::error::{Error, Result};
use crate::frame::{rpc_id, Header, Kind, Status, RESERVED_PROVIDER};
use crate::limits::RequestSlot;
use crate::remote::RawRemoteFunction;
use crate::state::EngineState;

/// The id of [`STATS_RPC`].
pub(crate) const STATS_RPC_ID: u64 = rpc_id(STATS_RPC);

/// Clears [`Serving`] when the answer is sent (or the task dropped).
struct Done(Arc<EngineState>);

impl Drop for Done {
    fn drop(&mut self) {
        self.0.stats_serving.0.store(false, Ordering::Release);
    }
}

/// Answers a request to the reserved provider: the statistics RPC, or an
/// error saying why not.
pub(crate) async fn request(
    state: &Arc<EngineState>,
    providers: &Arc<Providers>,
    conn: &Arc<Conn>,
    header: Header,
    slot: RequestSlot,
) {
    let refusal = if header.rpc != STATS_RPC_ID {
        Some((
            Status::NoSuchRpc,
            format!(
                "no such RPC id {:#018x} at the reserved provider {RESERVED_PROVIDER}",
                header.rpc
            ),
        ))
    } else if !state.config.stats.serve {
        Some((
            Status::HandlerFailed,
            "this engine does not serve its statistics (set \"stats\": {\"serve\": true}, or run `courier serve --stats`)".to_owned(),
        ))
    } else if header.no_response() {
        Some((
            Status::OneWay,
            "the statistics RPC answers: it cannot be called one-way".to_owned(),
        ))
    } else if state.stats_serving.0.swap(true, Ordering::AcqRel) {
        Some((
            Status::Busy,
            "statistics are being taken for another request; ask again".to_owned(),
        ))
    } else {
        None
    };
    if let Some((status, message)) = refusal {
        if !header.no_response() {
            let _ = conn.send_error(&header, status, &message).await;
        }
        return;
    }
    let done = Done(state.clone());
    let (state, providers, conn) = (state.clone(), providers.clone(), conn.clone());
    let rt = state.rt.clone();
    rt.spawn(async move {
        let _slot = slot;
        let taken = {
            let state = state.clone();
            tokio::task::spawn_blocking(move || {
                super::snapshot::collect(&state, &providers).to_json()
            })
            .await
        };
        let reply = Header {
            kind: Kind::Response,
            flags: 0,
            status: Status::Ok,
            ..header
        };
        let _ = match taken {
            Ok(json) => conn.send(&[&reply.encode(), json.as_bytes()]).await,
            Err(e) => {
                conn.send_error(
                    &header,
                    Status::HandlerFailed,
                    &format!("taking statistics failed: {e}"),
                )
                .await
            }
        };
        drop(done);
    });
}

impl Address {
    /// Reads the statistics of the engine at this address, through its
    /// built-in statistics RPC (which it serves only when configured to:
    /// `"stats": {"serve": true}`, or `courier serve --stats`).
    ///
    /// # Errors
    /// [`Error::Remote`] if the engine does not serve its statistics,
    /// [`Error::Busy`] while it answers another such request, connection
    /// errors, [`Error::Timeout`] past the engine's call timeout, and
    /// [`Error::Protocol`] if what came back is not statistics of a schema
    /// this version reads.
    pub async fn stats(&self) -> Result<Stats> {
        let raw = RawRemoteFunction::new(self.state.clone(), STATS_RPC)
            .on_provider(self, RESERVED_PROVIDER)
            .call(&[])
            .await?;
        let text = std::str::from_utf8(&raw).map_err(|e| Error::Protocol {
            address: self.to_string(),
            reason: format!("statistics that are not UTF-8: {e}"),
        })?;
        Stats::from_json(text).map_err(|e| match e {
            Error::Protocol { reason, .. } => Error::Protocol {
                address: self.to_string(),
                reason,
            },
            other => other,
        })
    }
}
