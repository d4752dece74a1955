//! `conformance_server <PROTOCOL>`: a Courier server for the process tests
//! of the conformance suite (`tests/tests/process_kill.rs`).
//!
//! It registers
//!
//! * `echo` (`String` → `String`): answers its argument;
//! * `hang` (`String` → never): prints `GOT hang` on stdout once the request
//!   is being handled, then keeps the request open until the process dies;
//! * `drip` (a stream): sends 4 KiB items for ever, as fast as the caller's
//!   credit allows;
//!
//! enables remote shutdown, prints `ADDRESS <address>` on stdout, and serves
//! until shut down (exit 0). On an error it prints the message on stderr and
//! exits 1.
//!
//! `conformance_server --client <ADDRESS>` is a client instead: it looks the
//! address up, prints `CALLING`, and calls `hang` there, waiting for ever
//! (the test kills it mid-call).
//!
//! `conformance_server --stream-client <ADDRESS>` opens a stream to `sink`
//! there, sends 4 KiB items, prints `STREAMING` after the first 100, and
//! goes on sending for ever (the test kills it mid-stream).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use courier::{Engine, Handle};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        // Colours on a terminal only (and not with NO_COLOR): plain text in a file or a pipe.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .init();
    let Some(protocol) = std::env::args().nth(1) else {
        eprintln!("usage: conformance_server <PROTOCOL> | --client <ADDRESS>");
        std::process::exit(2);
    };
    let outcome = if protocol == "--client" {
        call_hang(&std::env::args().nth(2).unwrap_or_default()).await
    } else if protocol == "--stream-client" {
        stream_to_sink(&std::env::args().nth(2).unwrap_or_default()).await
    } else {
        serve(&protocol).await
    };
    if let Err(e) = outcome {
        eprintln!("conformance_server: {e}");
        std::process::exit(1);
    }
}

async fn serve(protocol: &str) -> courier::Result<()> {
    let engine = Engine::new(protocol).await?;
    engine.register("echo", |h: Handle, text: String| async move {
        h.respond(&text).await
    })?;
    engine.register("hang", |h: Handle, _text: String| async move {
        // Stdout is line-buffered: the test sees this line now.
        println!("GOT hang");
        // Hold the handle (no response, no NoResponse error) until killed.
        std::future::pending::<()>().await;
        drop(h);
    })?;
    engine.register("drip", |h: Handle, (): ()| async move {
        let item = vec![5u8; 4096];
        loop {
            h.send_item_raw(&item).await?;
        }
        #[allow(unreachable_code)]
        Ok::<(), courier::Error>(())
    })?;
    engine.enable_remote_shutdown();
    println!("ADDRESS {}", engine.address());
    engine.wait_for_finalize().await;
    Ok(())
}

async fn call_hang(address: &str) -> courier::Result<()> {
    let parsed: courier::transport::Address = address.parse()?;
    let engine = Engine::builder(parsed.protocol()).client().build().await?;
    let server = engine.lookup(address).await?;
    let hang = engine.remote::<String, String>("hang");
    println!("CALLING");
    hang.on(&server)
        .call(&"from a client process".to_owned())
        .await?;
    Ok(())
}

async fn stream_to_sink(address: &str) -> courier::Result<()> {
    let parsed: courier::transport::Address = address.parse()?;
    let engine = Engine::builder(parsed.protocol()).client().build().await?;
    let server = engine.lookup(address).await?;
    let mut stream = engine.remote_raw("sink").on(&server).stream(b"").await?;
    let item = vec![9u8; 4096];
    for sent in 1u64.. {
        stream.send(&item).await?;
        if sent == 100 {
            println!("STREAMING");
        }
    }
    Ok(())
}
