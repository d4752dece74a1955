//! The blocking API's serving guarantee: handlers run whatever the
//! program's own threads are doing, and a handler that blocks never delays
//! a caller's timeout, in every threading set-up. (The Python binding has
//! the same tests in `crates/courier-py/tests`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use courier::{blocking, Error};

/// Long enough never to be reached unless something hangs.
const HANG: Duration = Duration::from_secs(30);

/// The four threading set-ups: (use_progress_thread, num_rpc_threads).
const MODES: [(bool, usize); 4] = [(false, 0), (true, 0), (false, 2), (true, 2)];

fn server(progress: bool, rpc: usize) -> blocking::Engine {
    blocking::Engine::builder("tcp")
        .use_progress_thread(progress)
        .num_rpc_threads(rpc)
        .build()
        .unwrap()
}

/// A one-way call to the engine's own address runs its handler while the
/// program's only thread is blocked outside Courier (here in a channel's
/// `recv`, as it would be in `sleep` or a lock). Before, without a progress
/// thread, nothing read the request until the next call into the engine.
#[test]
fn one_way_handlers_run_while_the_program_waits_elsewhere() {
    for (progress, rpc) in MODES {
        let engine = server(progress, rpc);
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        engine
            .register("note", move |_h: blocking::Handle, n: u32| {
                tx.lock().unwrap().send(n).unwrap();
            })
            .unwrap();
        let me = engine.lookup(&engine.address().to_string()).unwrap();
        let note = engine.remote::<u32, ()>("note").disable_response();
        note.on(&me).call(&7).unwrap();
        assert_eq!(rx.recv_timeout(HANG), Ok(7), "mode {progress}/{rpc}");
        engine.finalize().unwrap();
    }
}

/// A call to the engine's own address, with a 200 ms timeout, to a handler
/// that blocks until released: the call fails with its timeout while the
/// handler still blocks (it is released only after the call returned).
/// Before, without RPC threads, the handler ran on the thread that drove
/// the runtime, and the timeout fired only after the handler returned.
#[test]
fn a_blocked_handler_does_not_delay_the_callers_timeout() {
    for (progress, rpc) in MODES {
        let engine = server(progress, rpc);
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = Mutex::new(release_rx);
        let (started_tx, started_rx) = mpsc::channel::<()>();
        let started_tx = Mutex::new(started_tx);
        engine
            .register("stuck", move |h: blocking::Handle, (): ()| {
                started_tx.lock().unwrap().send(()).unwrap();
                release_rx.lock().unwrap().recv_timeout(HANG).unwrap();
                h.respond(&())
            })
            .unwrap();
        let me = engine.lookup(&engine.address().to_string()).unwrap();
        let stuck = engine
            .remote::<(), ()>("stuck")
            .on(&me)
            .timeout(Duration::from_millis(200));
        let err = stuck.call(&()).unwrap_err();
        assert!(
            matches!(err, Error::Timeout { .. } | Error::DeadlineExceeded { .. }),
            "mode {progress}/{rpc}: {err:?}"
        );
        // The handler did start, and is still blocked: released only now.
        started_rx.recv_timeout(HANG).unwrap();
        release_tx.send(()).unwrap();
        engine.finalize().unwrap();
    }
}

/// A handler that makes a blocking call to its own engine completes: a
/// spare serving thread serves the inner request while the outer handler
/// waits. The inner call inherits the outer request's deadline.
#[test]
fn a_handler_can_call_its_own_engine() {
    for (progress, rpc) in MODES {
        let engine = Arc::new(server(progress, rpc));
        engine
            .register("inner", |h: blocking::Handle, x: u32| {
                let budget = h.deadline().is_some();
                h.respond(&(x + 1, budget))
            })
            .unwrap();
        let me = engine.lookup(&engine.address().to_string()).unwrap();
        let inner = engine.remote::<u32, (u32, bool)>("inner").on(&me);
        engine
            .register("outer", move |h: blocking::Handle, x: u32| {
                match inner.call(&x) {
                    Ok(answer) => h.respond(&answer),
                    Err(e) => Err(e),
                }
            })
            .unwrap();
        let outer = engine
            .remote::<u32, (u32, bool)>("outer")
            .on(&me)
            .timeout(HANG);
        assert_eq!(outer.call(&1).unwrap(), (2, true), "mode {progress}/{rpc}");
        // Again: the spare thread started for the first call serves it.
        assert_eq!(outer.call(&5).unwrap(), (6, true), "mode {progress}/{rpc}");
        engine.finalize().unwrap();
    }
}

/// A handler that calls back its caller completes, while the caller's
/// thread is blocked in its call to that handler.
#[test]
fn a_handler_can_call_back_its_caller() {
    for (progress, rpc) in MODES {
        let a = server(progress, rpc);
        let b = server(progress, rpc);
        a.register("double", |h: blocking::Handle, x: u32| h.respond(&(x * 2)))
            .unwrap();
        let a_address = a.address().to_string();
        let b_side = b.lookup(&a_address).unwrap();
        let double = b.remote::<u32, u32>("double").on(&b_side);
        b.register("relay", move |h: blocking::Handle, x: u32| {
            match double.call(&x) {
                Ok(y) => h.respond(&(y + 1)),
                Err(e) => Err(e),
            }
        })
        .unwrap();
        let b_at_a = a.lookup(&b.address().to_string()).unwrap();
        let relay = a.remote::<u32, u32>("relay").on(&b_at_a).timeout(HANG);
        assert_eq!(relay.call(&20).unwrap(), 41, "mode {progress}/{rpc}");
        a.finalize().unwrap();
        b.finalize().unwrap();
    }
}

/// Which thread runs a blocking handler: the engine's serving thread
/// without RPC threads, an RPC thread with them.
#[test]
fn blocking_handlers_run_on_the_serving_thread_or_rpc_threads() {
    for (progress, rpc) in MODES {
        let engine = server(progress, rpc);
        engine
            .register("where", |h: blocking::Handle, (): ()| {
                let name = std::thread::current().name().unwrap_or("").to_owned();
                h.respond(&name)
            })
            .unwrap();
        let me = engine.lookup(&engine.address().to_string()).unwrap();
        let name = engine
            .remote::<(), String>("where")
            .on(&me)
            .timeout(HANG)
            .call(&())
            .unwrap();
        let expected = if rpc == 0 {
            blocking::SERVE_THREAD_NAME
        } else {
            courier::runtime::RPC_THREAD_NAME
        };
        assert_eq!(name, expected, "mode {progress}/{rpc}");
        engine.finalize().unwrap();
    }
}

/// A blocking handler that panics fails its call with an error (the
/// serving thread lives on and serves the next request).
#[test]
fn a_panicking_blocking_handler_fails_its_call_only() {
    let engine = server(false, 0);
    engine
        .register("boom", |h: blocking::Handle, x: u32| {
            assert!(x != 0, "refusing zero");
            h.respond(&x)
        })
        .unwrap();
    let me = engine.lookup(&engine.address().to_string()).unwrap();
    let boom = engine.remote::<u32, u32>("boom").on(&me).timeout(HANG);
    let err = boom.call(&0).unwrap_err();
    assert!(err.to_string().contains("refusing zero"), "{err}");
    assert_eq!(boom.call(&3).unwrap(), 3);
    engine.finalize().unwrap();
}
