//! Trace context across processes (issue 18, part 3): a call's W3C
//! traceparent reaches its handler, whose span is the child of the
//! caller's, and the calls a handler makes are children of the handler's
//! span — in one process, through the blocking API, and between two
//! processes (this test binary, run again as the server). The spans
//! exported through OpenTelemetry (`--features otel`) are checked in
//! `trace_otel.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use courier::{blocking, trace, Address, Engine, Handle, TraceContext};

const KNOWN: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[path = "common/trace.rs"]
mod common;
use common::{ctx, seen, server, Nested, Seen};

async fn client(proto: &str, server: &Engine) -> (Engine, Address) {
    let client = Engine::new(proto).await.unwrap();
    let address = client.lookup(&server.address().to_string()).await.unwrap();
    (client, address)
}

/// A call with an explicit context: the handler receives it as its parent,
/// and has a span of its own in the same trace.
#[tokio::test]
async fn the_handler_is_a_child_of_the_callers_span() {
    let server = server("mem").await;
    let (client, address) = client("mem", &server).await;
    let caller: TraceContext = KNOWN.parse().unwrap();
    let seen = client.remote::<(), Seen>("seen").on(&address);
    let (parent, own) = seen.clone().trace(caller).call(&()).await.unwrap();
    assert_eq!(parent.as_deref(), Some(KNOWN));
    let own = ctx(&own);
    assert_eq!(own.trace_id(), caller.trace_id());
    assert_ne!(own.span_id(), caller.span_id());
    assert_eq!(own.flags(), caller.flags());
    // With a deadline too: both travel in one block.
    let both = seen
        .clone()
        .timeout(Duration::from_secs(60))
        .trace(caller)
        .call(&())
        .await
        .unwrap();
    assert_eq!(both.0.as_deref(), Some(KNOWN));
    // Without a context, nothing arrives.
    assert_eq!(seen.call(&()).await.unwrap(), (None, None));
}

/// A handler's call carries the same trace id, and the handler's own span
/// id as its parent: across two servers, and to its own engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handlers_calls_are_children_of_its_span() {
    let front = server("tcp").await;
    let back = server("tcp").await;
    let (client, address) = client("tcp", &front).await;
    let caller = TraceContext::new_root(true);
    let outer = client.remote::<(String, Option<String>), Nested>("outer");
    for target in [back.address().to_string(), front.address().to_string()] {
        let ((outer_parent, outer_own), (inner_parent, inner_own)) = outer
            .on(&address)
            .trace(caller)
            .call(&(target, None))
            .await
            .unwrap();
        assert_eq!(ctx(&outer_parent), caller);
        let (outer_own, inner_parent, inner_own) =
            (ctx(&outer_own), ctx(&inner_parent), ctx(&inner_own));
        assert_eq!(
            inner_parent, outer_own,
            "the inner call's parent is the outer handler's span"
        );
        for c in [outer_own, inner_own] {
            assert_eq!(c.trace_id(), caller.trace_id());
        }
        assert_ne!(inner_own.span_id(), outer_own.span_id());
    }
    // No context at the top: none anywhere below.
    let (outer_seen, inner_seen) = outer
        .on(&address)
        .call(&(back.address().to_string(), None))
        .await
        .unwrap();
    assert_eq!((outer_seen, inner_seen), ((None, None), (None, None)));
    // A handler's call with a context of its own carries that one.
    let other = TraceContext::new_root(false);
    let (_, (inner_parent, _)) = outer
        .on(&address)
        .trace(caller)
        .call(&(back.address().to_string(), Some(other.traceparent())))
        .await
        .unwrap();
    assert_eq!(ctx(&inner_parent), other);
}

/// `trace::in_context`: every call the future makes carries the context,
/// and only that future's calls; a callable's own context comes first.
#[tokio::test]
async fn in_context_scopes_a_future() {
    let server = server("mem").await;
    let (client, address) = client("mem", &server).await;
    let seen = client.remote::<(), Seen>("seen").on(&address);
    let scope = TraceContext::new_root(true);
    let explicit = TraceContext::new_root(true);
    let (a, b, c) = trace::in_context(scope, async {
        let a = seen.call(&()).await.unwrap();
        tokio::task::yield_now().await;
        let b = seen.call(&()).await.unwrap();
        let c = seen.clone().trace(explicit).call(&()).await.unwrap();
        (a, b, c)
    })
    .await;
    assert_eq!(ctx(&a.0), scope);
    assert_eq!(ctx(&b.0), scope);
    assert_eq!(ctx(&c.0), explicit);
    assert_eq!(seen.call(&()).await.unwrap(), (None, None));
    assert_eq!(trace::current(), None);
}

/// A one-way call carries its context too.
#[tokio::test]
async fn one_way_calls_carry_the_context() {
    let server = Engine::new("mem").await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    server
        .register_with(
            "note",
            courier::RpcOptions::default().disable_response(),
            move |h: Handle, (): ()| {
                let _ = tx.send(h.parent_trace());
                async {}
            },
        )
        .unwrap();
    let (client, address) = client("mem", &server).await;
    let note = client.remote::<(), ()>("note").disable_response();
    let caller = TraceContext::new_root(true);
    note.on(&address).trace(caller).call(&()).await.unwrap();
    assert_eq!(rx.recv().await, Some(Some(caller)));
}

/// The blocking API: `trace::with_context` gives blocking calls their
/// context, a blocking handler sees its parent and has its own span, and
/// its blocking calls carry the handler's span as parent.
#[test]
fn blocking_calls_and_handlers_carry_the_context() {
    let server = blocking::Engine::builder("unix")
        .use_progress_thread(true)
        .build()
        .unwrap();
    server
        .register("seen", |h: blocking::Handle, (): ()| {
            h.respond(&(
                h.parent_trace().map(|c| c.traceparent()),
                h.trace_context().map(|c| c.traceparent()),
            ))
        })
        .unwrap();
    let me = server.address().to_string();
    // The engine the handler calls through (another one than the server).
    let engine = blocking::Engine::builder("unix").client().build().unwrap();
    server
        .register("outer", move |h: blocking::Handle, (): ()| {
            let address = engine.lookup(&me)?;
            let inner = engine.remote::<(), Seen>("seen").on(&address).call(&())?;
            let mine = (
                h.parent_trace().map(|c| c.traceparent()),
                h.trace_context().map(|c| c.traceparent()),
            );
            h.respond(&(mine, inner))
        })
        .unwrap();
    let client = blocking::Engine::builder("unix").client().build().unwrap();
    let address = client.lookup(&server.address().to_string()).unwrap();
    let seen = client.remote::<(), Seen>("seen");
    let outer = client.remote::<(), Nested>("outer");
    let caller = TraceContext::new_root(true);

    let (direct, nonblocking, nested) = trace::with_context(caller, || {
        let direct = seen.on(&address).call(&()).unwrap();
        let nonblocking = seen.on(&address).call_nonblocking(&()).unwrap();
        let nested = outer.on(&address).call(&()).unwrap();
        (direct, nonblocking.wait().unwrap(), nested)
    });
    assert_eq!(ctx(&direct.0), caller);
    assert_eq!(ctx(&direct.1).trace_id(), caller.trace_id());
    assert_eq!(ctx(&nonblocking.0), caller);
    let ((outer_parent, outer_own), (inner_parent, _)) = nested;
    assert_eq!(ctx(&outer_parent), caller);
    assert_eq!(ctx(&inner_parent), ctx(&outer_own));
    // An explicit context, and none.
    let other = TraceContext::new_root(false);
    let explicit = seen.on(&address).trace(other).call(&()).unwrap();
    assert_eq!(ctx(&explicit.0), other);
    assert_eq!(seen.on(&address).call(&()).unwrap(), (None, None));
    assert_eq!(
        outer.on(&address).call(&()).unwrap(),
        ((None, None), (None, None))
    );
    client.finalize().unwrap();
    server.finalize().unwrap();
}

// ---------------------------------------------------------------------------
// Two processes.

/// Set in the environment of the child process: the protocol it serves on.
const CHILD_ENV: &str = "COURIER_TRACE_CONTEXT_CHILD";

/// The server side of `two_processes_share_one_trace`, run in a child
/// process (this test binary again, with [`CHILD_ENV`] set). Run with the
/// other tests, without the variable, it does nothing.
///
/// It serves `traced`: the handler calls `leaf` back at the caller's
/// address given as argument (carrying, as any call from a handler, the
/// handler's span as parent), prints what it received on stdout, and
/// answers it. It prints its address first, and exits when shut down
/// remotely.
#[test]
fn child_server() {
    let Ok(proto) = std::env::var(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let engine = Engine::new(&proto).await.unwrap();
        let caller_engine = engine.clone();
        engine
            .register("traced", move |h: Handle, callback: String| {
                let engine = caller_engine.clone();
                async move {
                    let caller = engine.lookup(&callback).await?;
                    engine
                        .remote::<(), ()>("leaf")
                        .on(&caller)
                        .call(&())
                        .await?;
                    let (parent, own) = seen(&h);
                    let line = format!(
                        "SEEN parent={} own={}",
                        parent.as_deref().unwrap_or("-"),
                        own.as_deref().unwrap_or("-")
                    );
                    println_flushed(&line);
                    h.respond(&(parent, own)).await
                }
            })
            .unwrap();
        engine.enable_remote_shutdown();
        println_flushed(&format!("ADDR {}", engine.address()));
        engine.wait_for_finalize().await;
    });
}

fn println_flushed(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

/// Long enough never to be reached unless something hangs.
const HANG: Duration = Duration::from_secs(120);

/// The child process, killed (by its PID) if the test fails before it
/// exits, or if it hangs.
struct ChildServer {
    child: Child,
    lines: std::io::Lines<BufReader<ChildStdout>>,
    /// Dropped once the child is reaped: disarms the watchdog thread, which
    /// kills a child that is still there after [`HANG`] (then its stdout
    /// ends, and the test fails instead of hanging).
    watchdog: Option<std::sync::mpsc::Sender<()>>,
}

impl ChildServer {
    fn start(proto: &str) -> (Self, String) {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_server", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, proto)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (watchdog, disarmed) = std::sync::mpsc::channel::<()>();
        let pid = child.id().to_string();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = disarmed.recv_timeout(HANG) {
                eprintln!("the child server (pid {pid}) hangs: killing it");
                let _ = Command::new("kill").args(["-9", &pid]).status();
            }
        });
        let mut server = Self {
            child,
            lines: BufReader::new(stdout).lines(),
            watchdog: Some(watchdog),
        };
        let address = server.line_after("ADDR ");
        (server, address)
    }

    /// What follows `marker` in the next line of the child's stdout that
    /// has it (the test harness prints on the same stdout: the line may
    /// start with its `test child_server ... `).
    fn line_after(&mut self, marker: &str) -> String {
        for line in self.lines.by_ref() {
            let line = line.unwrap();
            if let Some((_, rest)) = line.split_once(marker) {
                return rest.to_owned();
            }
        }
        panic!("the child server's stdout ended before a line with {marker:?}");
    }

    /// Waits for the child to exit.
    fn wait(&mut self) -> std::process::ExitStatus {
        let status = self.child.wait().unwrap();
        self.watchdog = None;
        status
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A caller in this process, a server in another: the server's handler
/// receives the caller's trace id and span id (parent id), as the child
/// reports on its stdout and in its answer, and the call it makes back to
/// this process carries the same trace id with the handler's span as
/// parent. On unix and tcp (loopback).
#[test]
fn two_processes_share_one_trace() {
    for proto in ["unix", "tcp"] {
        let (mut child, child_address) = ChildServer::start(proto);
        let rt = tokio::runtime::Runtime::new().unwrap();
        let caller: TraceContext = KNOWN.parse().unwrap();
        let (answer, leaf_saw) = rt.block_on(async {
            let engine = Engine::new(proto).await.unwrap();
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            engine
                .register("leaf", move |h: Handle, (): ()| {
                    let _ = tx.send(seen(&h));
                    async move { h.respond(&()).await }
                })
                .unwrap();
            let server = engine.lookup(&child_address).await.unwrap();
            let traced = engine.remote::<String, Seen>("traced");
            let answer = traced
                .on(&server)
                .trace(caller)
                .timeout(Duration::from_secs(60))
                .call(&engine.address().to_string())
                .await
                .unwrap();
            let leaf_saw = rx.recv().await.unwrap();
            server.shutdown().await.unwrap();
            engine.finalize().await;
            (answer, leaf_saw)
        });
        // What the child printed.
        let reported = child.line_after("SEEN ");
        let status = child.wait();
        assert!(
            status.success(),
            "{proto}: the child server exited with {status}"
        );

        let (parent, own) = answer;
        assert_eq!(parent.as_deref(), Some(KNOWN), "{proto}");
        let own = ctx(&own);
        assert_eq!(
            reported,
            format!("parent={KNOWN} own={}", own.traceparent()),
            "{proto}"
        );
        let parent = ctx(&parent);
        assert_eq!(
            parent.trace_id(),
            caller.trace_id(),
            "{proto}: the trace id crossed"
        );
        assert_eq!(
            parent.span_id(),
            caller.span_id(),
            "{proto}: the parent id crossed"
        );
        assert_eq!(own.trace_id(), caller.trace_id());
        // Back in this process: the child's handler span is the parent.
        let leaf_parent = ctx(&leaf_saw.0);
        assert_eq!(
            leaf_parent, own,
            "{proto}: the call back is a child of the child's span"
        );
    }
}
