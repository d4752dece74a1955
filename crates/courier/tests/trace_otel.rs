//! Trace context through OpenTelemetry (`--features otel`; issue 18,
//! part 3): the spans exported through the OpenTelemetry SDK (its tracer,
//! with a span processor of this test's that keeps what is exported) link
//! up: the handler's `rpc.handle` span has the caller's span as parent,
//! and a call the handler makes is a child of it.
//!
//! In a test binary of its own: the test installs its subscriber on its
//! own thread (`tracing::subscriber::set_default`), and `tracing` caches
//! whether a callsite is enabled for every thread at once — a test running
//! beside it, without a subscriber, that reaches `rpc.handle` first would
//! disable the span for this one too. Here no other test runs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[cfg(feature = "otel")]
#[path = "common/trace.rs"]
mod common;

#[cfg(feature = "otel")]
mod otel {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use opentelemetry::trace::{SpanId, TraceContextExt, TracerProvider as _};
    use opentelemetry::Context;
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{SdkTracerProvider, Span, SpanData, SpanProcessor};
    use tracing::Instrument;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::layer::SubscriberExt;

    use courier::{Engine, TraceContext};

    use super::common::{ctx, server, Nested, Seen};

    /// Keeps the spans that end, and says when one does.
    #[derive(Debug, Clone)]
    struct Keep {
        spans: Arc<Mutex<Vec<SpanData>>>,
        ended: Arc<tokio::sync::watch::Sender<usize>>,
    }

    impl SpanProcessor for Keep {
        fn on_start(&self, _span: &mut Span, _cx: &Context) {}

        fn on_end(&self, span: SpanData) {
            let n = {
                let mut spans = self.spans.lock().unwrap();
                spans.push(span);
                spans.len()
            };
            self.ended.send_replace(n);
        }

        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }

        fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
            Ok(())
        }
    }

    fn ids(c: &TraceContext) -> (opentelemetry::trace::TraceId, SpanId) {
        (
            opentelemetry::trace::TraceId::from_bytes(c.trace_id()),
            SpanId::from_bytes(c.span_id()),
        )
    }

    #[tokio::test(flavor = "current_thread")]
    async fn exported_handler_spans_have_the_callers_span_as_parent() {
        let (tx, mut ended) = tokio::sync::watch::channel(0);
        let keep = Keep {
            spans: Arc::default(),
            ended: Arc::new(tx),
        };
        let provider = SdkTracerProvider::builder()
            .with_span_processor(keep.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("courier-test")));
        // This thread only: the runtime (current-thread) runs the engines'
        // tasks and handlers here too.
        let _default = tracing::subscriber::set_default(subscriber);

        let server = server("mem").await;
        let client = Engine::new("mem").await.unwrap();
        let address = client.lookup(&server.address().to_string()).await.unwrap();
        let outer = client.remote::<(String, Option<String>), Nested>("outer");

        // The caller's span, with no context set by hand: its OpenTelemetry
        // context is what the call carries.
        let caller = tracing::info_span!("caller");
        let caller_cx = caller.context().span().span_context().clone();
        assert!(caller_cx.is_valid());
        let ((outer_parent, outer_own), (inner_parent, inner_own)): (Seen, Seen) = outer
            .on(&address)
            .call(&(server.address().to_string(), None))
            .instrument(caller.clone())
            .await
            .unwrap();
        drop(caller);
        let outer_parent = ctx(&outer_parent);
        assert_eq!(
            ids(&outer_parent),
            (caller_cx.trace_id(), caller_cx.span_id())
        );

        // Both handler spans are exported once they end (after answering;
        // the only two of this test binary).
        let handled = |spans: &[SpanData]| spans.iter().filter(|s| s.name == "rpc.handle").count();
        tokio::time::timeout(
            Duration::from_secs(60),
            ended.wait_for(|_| handled(&keep.spans.lock().unwrap()) >= 2),
        )
        .await
        .expect("the handler spans end")
        .unwrap();
        let spans = keep.spans.lock().unwrap().clone();
        let span = |own: &Option<String>| {
            let (trace_id, span_id) = ids(&ctx(own));
            spans
                .iter()
                .find(|s| s.span_context.span_id() == span_id)
                .map(|s| {
                    (
                        s.name.clone(),
                        s.span_context.trace_id() == trace_id,
                        s.parent_span_id,
                        s.parent_span_is_remote,
                    )
                })
                .expect("the handler's span is exported")
        };
        // The outer handler's span: the caller's span is its (remote) parent.
        assert_eq!(
            span(&outer_own),
            ("rpc.handle".into(), true, caller_cx.span_id(), true)
        );
        // The inner handler's: the outer handler's span.
        let outer_span_id = ids(&ctx(&outer_own)).1;
        assert_eq!(ids(&ctx(&inner_parent)).1, outer_span_id);
        assert_eq!(
            span(&inner_own),
            ("rpc.handle".into(), true, outer_span_id, true)
        );
        drop(spans);
        client.finalize().await;
        server.finalize().await;
        drop(provider);
    }
}
