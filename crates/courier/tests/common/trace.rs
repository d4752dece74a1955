//! What the trace-context tests share (`trace_context.rs`, and
//! `trace_otel.rs` in a binary of its own): handlers that answer the trace
//! contexts they saw.

#![allow(dead_code)] // each test binary uses part of it

use courier::{Engine, Handle, TraceContext};

/// What a handler saw of its trace context: the caller's, as received,
/// and its own (traceparent strings).
pub(crate) type Seen = (Option<String>, Option<String>);

/// What an outer handler saw, and what the inner handler it called saw.
pub(crate) type Nested = (Seen, Seen);

pub(crate) fn seen(h: &Handle) -> Seen {
    (
        h.parent_trace().map(|c| c.traceparent()),
        h.trace_context().map(|c| c.traceparent()),
    )
}

pub(crate) fn ctx(s: &Option<String>) -> TraceContext {
    s.as_deref().expect("a trace context").parse().unwrap()
}

/// A server with `seen` (answers what it saw) and `outer` (calls `seen`
/// at the address it is given, then answers what both saw). With `own`,
/// `outer` calls with that context instead of its handler's.
pub(crate) async fn server(proto: &str) -> Engine {
    let server = Engine::new(proto).await.unwrap();
    server
        .register("seen", |h: Handle, (): ()| async move {
            h.respond(&seen(&h)).await
        })
        .unwrap();
    let engine = server.clone();
    server
        .register(
            "outer",
            move |h: Handle, (at, own): (String, Option<String>)| {
                let engine = engine.clone();
                async move {
                    let address = engine.lookup(&at).await?;
                    let mut inner = engine.remote::<(), Seen>("seen").on(&address);
                    if let Some(own) = own {
                        inner = inner.trace(own.parse().unwrap());
                    }
                    let theirs = inner.call(&()).await?;
                    h.respond(&(seen(&h), theirs)).await
                }
            },
        )
        .unwrap();
    server
}
