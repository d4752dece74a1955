//! The seed's server: `hello_server [PROTOCOL]` (default `tcp`).
//!
//! Registers `hello`, prints `Service running at <address>`, enables remote
//! shutdown and serves until a client shuts it down (or Ctrl-C); then exits 0. On any
//! error it prints the message and exits 1.

use courier::{Engine, Handle};

#[tokio::main(flavor = "current_thread")]
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
    let protocol = std::env::args().nth(1).unwrap_or_else(|| "tcp".to_owned());
    if let Err(e) = serve(&protocol).await {
        eprintln!("hello_server: {e}");
        std::process::exit(1);
    }
}

async fn serve(protocol: &str) -> courier::Result<()> {
    let engine = Engine::new(protocol).await?;
    engine.register(
        "hello",
        |handle: Handle, (first, last): (String, String)| async move {
            println!("Hello {first} {last}!");
            handle.respond(&format!("Good bye {first}")).await
        },
    )?;
    println!("Service running at {}", engine.address());
    engine.enable_remote_shutdown();
    // Serve until a client shuts us down, or Ctrl-C (which finalizes
    // cleanly: a unix socket file is removed).
    tokio::select! {
        () = engine.wait_for_finalize() => {}
        _ = tokio::signal::ctrl_c() => engine.finalize().await,
    }
    Ok(())
}
