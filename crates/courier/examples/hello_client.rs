//! The seed's client: `hello_client <ADDRESS>`.
//!
//! Looks the server up, calls `hello("Matthieu", "Dorier")`, checks the
//! answer is "Good bye Matthieu", prints it, and shuts the server down. On
//! any error it prints the message and exits 1.

use std::time::Duration;

use courier::{Engine, Mode};

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
    let Some(address) = std::env::args().nth(1) else {
        eprintln!("usage: hello_client <ADDRESS>   (the address hello_server printed)");
        std::process::exit(2);
    };
    if let Err(e) = run(&address).await {
        eprintln!("hello_client: {e}");
        std::process::exit(1);
    }
}

async fn run(address: &str) -> Result<(), Box<dyn std::error::Error>> {
    // The protocol is the address's: "tcp://..." makes a tcp engine.
    let parsed: courier::transport::Address = address.parse()?;
    let engine = Engine::builder(parsed.protocol())
        .mode(Mode::Client)
        .build()
        .await?;
    let hello = engine
        .remote::<(&str, &str), String>("hello")
        .timeout(Duration::from_secs(10));
    let server = engine.lookup(address).await?;
    let response = hello.on(&server).call(&("Matthieu", "Dorier")).await?;
    if response != "Good bye Matthieu" {
        return Err(format!("unexpected response {response:?}").into());
    }
    println!("{response}");
    server.shutdown().await?;
    Ok(())
}
