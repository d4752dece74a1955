//! The conformance suite of [Courier](courier), for transport plugin authors.
//!
//! A transport plugin (see `docs/writing-a-transport.md`) passes when every
//! scenario here passes on its protocol. One line in a test file of the
//! plugin's crate runs them all, one `#[test]` each:
//!
//! ```ignore
//! // tests/conformance.rs of the plugin's crate
//! courier_testkit::conformance_tests!("mytcp", setup = || courier::install_plugin(my_tcp::MyTcpPlugin));
//! ```
//!
//! The `setup` expression runs at the start of every test; installing the
//! plugin there makes it part of every default registry of the test process
//! ([`courier::install_plugin`]), which is where the scenarios build their
//! engines and transports. Courier's own plugins run the same suite (see
//! `tests/tests/conformance.rs` in the repository).
//!
//! Six groups of scenarios are generated, as modules
//! `transport_contract`, `engine`, `deadlines`, `bulk`, `overflow` and
//! `stats`:
//!
//! * [`transport`]: the transport contract below the engine (message
//!   boundaries, order under backpressure, both directions at once, maximum
//!   size on send and from the peer, orderly close, vanished peer, dropped
//!   listener, many connections, cancel-safe `recv`, 8 MiB messages);
//! * [`engine`]: the engine over the protocol (the seed's hello, providers,
//!   one-way RPCs, timeouts, handler errors and panics, size limits, remote
//!   shutdown, finalize with calls in flight, the blocking API, ...);
//! * [`deadlines`]: a caller's deadline reaches the handler, a call given
//!   up cancels its handler and what it called, a spent budget is not
//!   sent, callbacks at `max_in_flight_per_connection`;
//! * [`bulk`]: bulk transfers over the protocol's messages (and its fast
//!   path, if it has one): PyMargo's bulk programs, ranges, multi-segment
//!   regions, hostile handles, a region dropped mid-transfer;
//! * [`overflow`]: arguments and responses over the largest message, by
//!   the bulk path on their own (typed, raw, both ways, blocking
//!   handlers), and one exactly at the limit inline;
//! * [`stats`]: what the engine counts over the protocol.
//!
//! No scenario sleeps to synchronise or asserts on timing: each wait is
//! bounded by [`guard`], a hang guard that turns a hang into a failure.
//!
//! Every helper below is public too, for a plugin's own tests.

#![forbid(unsafe_code)]
// A test kit: a failed expectation is a panic, which is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::time::Duration;

use courier::{Engine, Handle};

pub mod bulk;
pub mod deadlines;
pub mod engine;
pub mod overflow;
pub mod stats;
pub mod streams;
pub mod transport;

/// A scenario's overall bound (its individual waits have their own guards).
pub const SCENARIO_GUARD: Duration = Duration::from_secs(120);

/// Upper bound on any single wait in the suite. It is a hang guard only: no
/// test passes or fails because something was fast or slow within it.
pub const HANG_GUARD: Duration = Duration::from_secs(30);

/// Awaits `fut`, panicking (naming `what`) if it takes longer than
/// [`HANG_GUARD`]: a hang becomes a test failure.
pub async fn guard<F: std::future::IntoFuture>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(HANG_GUARD, fut.into_future()).await {
        Ok(v) => v,
        Err(_) => panic!("hang guard: {what} did not finish within {HANG_GUARD:?}"),
    }
}

/// Runs blocking code `f` on its own thread and waits for it at most
/// [`HANG_GUARD`]: the blocking-API twin of [`guard`]. A panic in `f` is
/// re-raised here.
pub fn guard_blocking<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let v = f();
        let _ = done_tx.send(());
        v
    });
    match done_rx.recv_timeout(HANG_GUARD) {
        // Disconnected: `f` panicked (the sender was dropped unwinding).
        Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match thread.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        },
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("hang guard: {what} did not finish within {HANG_GUARD:?}")
        }
    }
}

/// A server-mode engine for `proto` with default settings.
pub async fn server(proto: &str) -> Engine {
    Engine::new(proto)
        .await
        .unwrap_or_else(|e| panic!("cannot start a {proto} server engine: {e}"))
}

/// A client-mode engine for `proto` with default settings.
pub async fn client(proto: &str) -> Engine {
    Engine::builder(proto)
        .client()
        .build()
        .await
        .unwrap_or_else(|e| panic!("cannot start a {proto} client engine: {e}"))
}

/// Registers the seed's `hello`: takes `(first, last)`, answers
/// `"Good bye {first}"`.
pub fn register_hello(engine: &Engine) {
    engine
        .register(
            "hello",
            |handle: Handle, (first, _last): (String, String)| async move {
                handle.respond(&format!("Good bye {first}")).await
            },
        )
        .expect("register hello");
}

/// Calls the seed's `hello("Matthieu", "Dorier")` at `address` from `client`
/// (under [`guard`]).
pub async fn call_hello(client: &Engine, address: &courier::Address) -> courier::Result<String> {
    let hello = client.remote::<(&str, &str), String>("hello");
    guard("hello", hello.on(address).call(&("Matthieu", "Dorier"))).await
}

/// Calls `hello` and asserts the seed's answer.
pub async fn assert_hello(client: &Engine, address: &courier::Address) {
    assert_eq!(
        call_hello(client, address).await.unwrap(),
        "Good bye Matthieu"
    );
}

/// Looks `server` up from `client` (under [`guard`]).
pub async fn lookup(client: &Engine, server: &Engine) -> courier::Address {
    guard("lookup", client.lookup(&server.address().to_string()))
        .await
        .unwrap()
}

/// `len` bytes of a pattern that differs with `seed` and with the position
/// (so a shifted, truncated or repeated chunk does not compare equal).
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u64)
                .wrapping_mul(31)
                .wrapping_add(u64::from(seed))
                .wrapping_rem(251) as u8
        })
        .collect()
}

/// Runs one async scenario on a fresh tokio runtime (`multi_thread` with
/// two workers, or `current_thread`), under [`SCENARIO_GUARD`].
pub fn run<F: Future<Output = ()>>(flavor: &str, what: &str, scenario: F) {
    let mut builder = match flavor {
        "current_thread" => tokio::runtime::Builder::new_current_thread(),
        _ => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(2);
            b
        }
    };
    let runtime = builder
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("cannot build a tokio runtime: {e}"));
    runtime.block_on(async {
        if tokio::time::timeout(SCENARIO_GUARD, scenario)
            .await
            .is_err()
        {
            panic!("hang guard: {what} did not finish within {SCENARIO_GUARD:?}");
        }
    });
}

/// Generates the conformance tests for a protocol: modules
/// `transport_contract`, `engine` and `bulk`, one `#[test]` per scenario.
///
/// ```ignore
/// courier_testkit::conformance_tests!("mem");
/// courier_testkit::conformance_tests!("mytcp", setup = || courier::install_plugin(MyTcpPlugin));
/// ```
///
/// `setup` runs at the start of each test, before the scenario builds
/// anything (install your plugin there). Use it once per module: wrap it in
/// `mod my_protocol { ... }` to test several protocols in one file.
#[macro_export]
macro_rules! conformance_tests {
    ($protocol:expr) => {
        $crate::conformance_tests!($protocol, setup = || {});
    };
    ($protocol:expr, setup = $setup:expr) => {
        #[allow(dead_code)]
        fn __courier_testkit_setup() -> &'static str {
            let setup: fn() = $setup;
            setup();
            $protocol
        }

        /// The transport contract (`courier_testkit::transport`).
        mod transport_contract {
            $crate::__scenarios! { async "multi_thread" transport:
                listen_and_connect,
                message_boundaries,
                order_and_integrity,
                batches,
                both_directions_at_once,
                max_size_is_enforced_on_send,
                oversized_from_peer_is_refused,
                close_delivers_then_ends,
                dropped_peer_ends_recv,
                dropped_listener_refuses,
                many_connections,
                recv_is_cancel_safe,
                large_messages,
            }
        }

        /// Bulk transfers over the protocol (`courier_testkit::bulk`).
        mod bulk {
            $crate::__scenarios! { async "multi_thread" bulk:
                pull_23_bytes,
                push_at_offset,
                nonblocking_pull_and_push,
                ranges_default,
                ranges_messages,
                multi_segment,
                empty_region,
                hostile_handles,
                local_checks,
                rpcs_during_a_large_transfer,
                timeout,
                region_dropped_mid_transfer,
                bytes_regions,
            }
            $crate::__scenarios! { blocking bulk:
                blocking_transfer,
            }
        }

        /// Deadlines, cancellation, re-entrant calls
        /// (`courier_testkit::deadlines`).
        mod deadlines {
            $crate::__scenarios! { async "multi_thread" deadlines:
                deadline_reaches_the_handler,
                timeout_cancels_the_handler,
                dropped_call_cancels_the_handler,
                cancel_token_tells_why,
                deferred_handle_is_cancelled,
                cancellation_cascades,
                started_transfer_stops_with_its_request,
                spent_budget_is_not_sent,
                callback_at_max_in_flight,
            }
            $crate::__scenarios! { blocking deadlines:
                blocking_handler_polls_its_token,
                blocking_request_cancel,
            }
        }

        /// Streams over the protocol (`courier_testkit::streams`).
        mod streams {
            $crate::__scenarios! { async "multi_thread" streams:
                server_streaming,
                client_streaming,
                bidirectional_raw,
                flow_control_holds_the_producer,
                error_in_the_middle,
                caller_aborts,
                caller_cancels,
                handler_answers_early,
                oversized_item_is_refused,
                unary_call_to_a_stream_handler,
                peer_gone_releases_the_stream,
                large_arguments_and_answer,
                dropped_upload_is_not_complete,
                deadline_bounds_the_stream,
            }
        }

        /// Payloads of any size (`courier_testkit::overflow`).
        mod overflow {
            $crate::__scenarios! { async "multi_thread" overflow:
                raw_arguments,
                typed_arguments,
                responses,
                both_ways,
                at_the_limit_stays_inline,
            }
            $crate::__scenarios! { blocking overflow:
                blocking_responses,
            }
        }

        /// Statistics over the protocol (`courier_testkit::stats`).
        mod stats {
            $crate::__scenarios! { async "multi_thread" stats:
                counts_outcomes_and_bytes,
                counts_timeouts,
                stats_rpc,
                counting_by_default,
            }
        }

        /// The engine over the protocol (`courier_testkit::engine`).
        mod engine {
            $crate::__scenarios! { async "multi_thread" engine:
                hello,
                hello_from_client_mode,
                self_call,
                hello_with_threads,
                callback_through_handle_address,
                ping,
                aliases,
                provider_ids,
                register_and_deregister,
                unknown_rpc,
                one_way,
                one_way_called_with_response,
                timeout,
                default_timeout_from_config,
                concurrent_calls,
                payloads_raw,
                payloads_typed,
                request_over_max,
                max_message_boundary,
                response_over_client_max,
                response_over_server_max,
                request_over_server_max,
                remote_shutdown_enabled,
                remote_shutdown_refused,
                handler_error,
                handler_panic,
                handler_no_response,
                deferred_and_double_responses,
                bad_arguments,
                finalize_client_with_calls_in_flight,
                finalize_server_with_calls_in_flight,
                blocking_in_async_is_refused,
            }
            $crate::__scenarios! { async "current_thread" engine:
                finalize_right_after_build,
            }
            $crate::__scenarios! { blocking engine:
                blocking_hello,
                blocking_seed_with_remote_shutdown,
                blocking_call_nonblocking,
                blocking_doc_example_one_thread,
                blocking_server_dropped_right_after_build,
            }
        }
    };
}

/// One `#[test]` per scenario name (used by [`conformance_tests!`]).
#[doc(hidden)]
#[macro_export]
macro_rules! __scenarios {
    (async $flavor:literal $group:ident: $($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            let proto = super::__courier_testkit_setup();
            let what = format!("{} on {proto}", stringify!($name));
            $crate::run($flavor, &what, $crate::$group::$name(proto));
        }
    )*};
    (blocking $group:ident: $($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            let proto = super::__courier_testkit_setup();
            $crate::guard_blocking(stringify!($name), move || $crate::$group::$name(proto));
        }
    )*};
}
