//! Where handlers run (progress thread, RPC threads), the blocking facade,
//! and calls back to a caller through `handle.address()`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use courier::{blocking, Engine, Error, Handle};

fn thread_name() -> String {
    std::thread::current().name().unwrap_or("").to_owned()
}

async fn where_handlers_run(builder: courier::EngineBuilder) -> String {
    let server = builder.build().await.unwrap();
    server
        .register("where", |h: Handle, (): ()| async move {
            h.respond(&thread_name()).await
        })
        .unwrap();
    let client = Engine::builder("tcp").client().build().await.unwrap();
    let addr = client.lookup(&server.address().to_string()).await.unwrap();
    let name: String = client
        .remote::<(), String>("where")
        .on(&addr)
        .call(&())
        .await
        .unwrap();
    server.finalize().await;
    name
}

#[tokio::test]
async fn handlers_run_on_rpc_threads_when_asked() {
    let name = where_handlers_run(Engine::builder("tcp").num_rpc_threads(2)).await;
    assert_eq!(name, "courier-rpc");
}

#[tokio::test]
async fn handlers_run_on_the_progress_thread_when_there_is_one() {
    let name = where_handlers_run(Engine::builder("tcp").use_progress_thread(true)).await;
    assert_eq!(name, "courier-progress");
}

#[tokio::test]
async fn by_default_handlers_run_on_the_callers_runtime() {
    let name = where_handlers_run(Engine::builder("tcp")).await;
    assert!(!name.starts_with("courier-"), "{name}");
}

#[tokio::test]
async fn blocking_calls_inside_a_runtime_are_refused() {
    let err = blocking::Engine::new("tcp").unwrap_err();
    assert!(matches!(err, Error::BlockingInAsync(_)), "{err}");
    assert!(err.to_string().contains("use the async API"), "{err}");
}

#[test]
fn blocking_server_without_progress_thread_serves_inside_wait_for_finalize() {
    let server = blocking::Engine::new("unix").unwrap();
    server
        .register(
            "hello",
            |h: blocking::Handle, (first, _last): (String, String)| {
                h.respond(&format!("Good bye {first}"))
            },
        )
        .unwrap();
    server.enable_remote_shutdown();
    let addr = server.address().to_string();
    let waiter = std::thread::spawn(move || {
        server.wait_for_finalize().unwrap();
        server.is_finalized()
    });
    let client = blocking::Engine::builder("unix").client().build().unwrap();
    let a = client.lookup(&addr).unwrap();
    let hello = client.remote::<(&str, &str), String>("hello");
    assert_eq!(
        hello.on(&a).call(&("Matthieu", "Dorier")).unwrap(),
        "Good bye Matthieu"
    );
    a.shutdown().unwrap();
    assert!(waiter.join().unwrap());
}

#[test]
fn blocking_server_with_progress_thread_serves_on_its_own() {
    let server = blocking::Engine::builder("tcp")
        .use_progress_thread(true)
        .build()
        .unwrap();
    assert_eq!(server.config()["use_progress_thread"], true);
    server
        .register("add", |h: blocking::Handle, (a, b): (i64, i64)| {
            h.respond(&(a + b))
        })
        .unwrap();
    let client = blocking::Engine::builder("tcp").client().build().unwrap();
    let a = client.lookup(&server.address().to_string()).unwrap();
    let add = client.remote::<(i64, i64), i64>("add");
    // Nobody blocks inside the server engine: its progress thread serves.
    for i in 0..100 {
        assert_eq!(add.on(&a).call(&(i, 1)).unwrap(), i + 1);
    }
}

#[test]
fn nonblocking_requests_complete_through_test_and_wait() {
    let server = blocking::Engine::builder("tcp")
        .use_progress_thread(true)
        .build()
        .unwrap();
    server
        .register("square", |h: blocking::Handle, x: u64| h.respond(&(x * x)))
        .unwrap();
    let client = blocking::Engine::builder("tcp").client().build().unwrap();
    let a = client.lookup(&server.address().to_string()).unwrap();
    let square = client.remote::<u64, u64>("square").on(&a);
    let requests: Vec<_> = (0..32)
        .map(|x| square.call_nonblocking(&x).unwrap())
        .collect();
    // test() makes progress itself (no progress thread on the client side):
    // keep testing the first one until it completes.
    let mut spins = 0u64;
    while !requests[0].test() {
        spins += 1;
        assert!(spins < 10_000_000, "request never completed");
    }
    for (x, r) in requests.into_iter().enumerate() {
        assert_eq!(r.wait().unwrap(), (x * x) as u64);
    }
    // A timeout set on the callable applies to non-blocking requests too.
    server
        .register(
            "never",
            |_h: blocking::Handle, (): ()| -> Result<(), String> {
                // Keep the handle alive without responding: leak it.
                std::mem::forget(_h);
                Ok(())
            },
        )
        .unwrap();
    let never = client
        .remote::<(), ()>("never")
        .on(&a)
        .timeout(Duration::from_millis(50));
    let err = never.call_nonblocking(&()).unwrap().wait().unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
}

#[tokio::test]
async fn a_handler_can_call_back_its_caller_through_handle_address() {
    let server = Engine::new("tcp").await.unwrap();
    let client = Engine::new("tcp").await.unwrap(); // server mode: it listens too
    let client_addr = client.address().to_string();
    client
        .register("whoami", |h: Handle, (): ()| async move {
            h.respond("client").await
        })
        .unwrap();
    let whoami = server.remote::<(), String>("whoami");
    server
        .register("relay", move |h: Handle, (): ()| {
            let whoami = whoami.clone();
            async move {
                let caller = h.address();
                let answer = whoami.on(&caller).call(&()).await?;
                h.respond(&(caller.to_string(), answer)).await
            }
        })
        .unwrap();
    let s = client.lookup(&server.address().to_string()).await.unwrap();
    let (seen_as, answer): (String, String) = client
        .remote::<(), (String, String)>("relay")
        .on(&s)
        .call(&())
        .await
        .unwrap();
    assert_eq!(seen_as, client_addr);
    assert_eq!(answer, "client");
}

#[tokio::test]
async fn polling_before_parking_serves_calls_and_stops_on_finalize() {
    let spin = Duration::from_micros(200);
    let server = Engine::builder("tcp")
        .progress_spin(spin)
        .build()
        .await
        .unwrap();
    assert_eq!(server.config()["progress_spin_us"], 200);
    server
        .register("inc", |h: Handle, x: u32| async move {
            h.respond(&(x + 1)).await
        })
        .unwrap();
    let client = Engine::builder("tcp")
        .client()
        .config_json(r#"{"progress_spin_us": 200}"#)
        .build()
        .await
        .unwrap();
    let a = client.lookup(&server.address().to_string()).await.unwrap();
    let inc = client.remote::<u32, u32>("inc").on(&a);
    let mut x = 0;
    for _ in 0..200 {
        x = inc.call(&x).await.unwrap();
    }
    assert_eq!(x, 200);
    // The spinner is a task of the engine; finalize ends it with the rest.
    client.finalize().await;
    server.finalize().await;
    server.wait_for_finalize().await;
}
