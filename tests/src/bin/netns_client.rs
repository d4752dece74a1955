//! `netns_client <ADDRESS> <TIMEOUT_MS> [CONFIG_JSON]`: a Courier client
//! driven line by line on stdin, for the network-namespace tests
//! (`tests/tests/netns_partition.rs`), which run it in another namespace
//! than the server.
//!
//! Its engines are built with `CONFIG_JSON` (the engine's JSON
//! configuration, e.g. a small `keepalive`), if given. It looks `ADDRESS`
//! up (a server started by `conformance_server`), prints `READY`, then for
//! each line on stdin:
//!
//! * `call`: calls `echo` on the address looked up at the start, with a
//!   timeout of `TIMEOUT_MS`;
//! * `fresh`: builds a new client engine (connect timeout `TIMEOUT_MS`),
//!   looks the address up and calls `echo` there;
//! * `hang`: calls `hang` (which never answers) on the address looked up
//!   at the start, with no timeout: only the connection's end ends it;
//! * `path`: calls `echo` as `call` does, then answers the path its
//!   connection took (`Address::path`: `tcp://…`, `shm://…`) instead;
//!
//! and prints `OK <answer>` or `ERR <error message>`. End of stdin ends it.
//!
//! Its engines speak the address's protocol; for an address set
//! (`tcp://…,shm://…,mem://…`, from `netns_address_set.rs`), every protocol
//! of the set but `mem` (the server's own process), as `courier ping` does.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use courier::Engine;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(address), Some(timeout)) = (args.next(), args.next()) else {
        eprintln!("usage: netns_client <ADDRESS> <TIMEOUT_MS> [CONFIG_JSON]");
        std::process::exit(2);
    };
    let config = args.next().unwrap_or_else(|| "{}".to_owned());
    let timeout = Duration::from_millis(timeout.parse().unwrap_or(2000));
    let protocol = protocols(&address);
    let client = engine(&protocol, timeout, &config).await;
    let server = match client.lookup(&address).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("netns_client: {e}");
            std::process::exit(1);
        }
    };
    let echo = client.remote::<String, String>("echo").timeout(timeout);
    println!("READY");
    // Stdin is read on a thread of its own (blocking reads).
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = lines.recv().await {
        let outcome = match line.trim() {
            "call" => echo.on(&server).call(&"over the link".to_owned()).await,
            "path" => echo
                .on(&server)
                .call(&"which way".to_owned())
                .await
                .map(|_| {
                    server
                        .path()
                        .map_or_else(|| "none".to_owned(), |p| p.to_string())
                }),
            "hang" => {
                client
                    .remote::<String, String>("hang")
                    .on(&server)
                    .call(&"until the connection ends".to_owned())
                    .await
            }
            "fresh" => {
                let fresh = engine(&protocol, timeout, &config).await;
                match fresh.lookup(&address).await {
                    Ok(a) => {
                        let r = fresh
                            .remote::<String, String>("echo")
                            .timeout(timeout)
                            .on(&a)
                            .call(&"fresh".to_owned())
                            .await;
                        fresh.finalize().await;
                        r
                    }
                    Err(e) => Err(e),
                }
            }
            other => {
                println!("ERR unknown command {other:?}");
                continue;
            }
        };
        match outcome {
            Ok(answer) => println!("OK {answer}"),
            Err(e) => println!("ERR {e}"),
        }
    }
}

/// The protocols to speak to `address`: its own; of a set, each of its
/// parts' but `mem`, once each, in the set's order.
fn protocols(address: &str) -> String {
    let mut names: Vec<&str> = Vec::new();
    for part in address.split(',') {
        let name = part.trim().split("://").next().unwrap_or("tcp");
        if name != "mem" && !names.contains(&name) {
            names.push(name);
        }
    }
    if names.is_empty() {
        "tcp".to_owned()
    } else {
        names.join(",")
    }
}

async fn engine(protocol: &str, timeout: Duration, config: &str) -> Engine {
    Engine::builder(protocol)
        .client()
        .config_json(config)
        .connect_timeout(timeout)
        .build()
        .await
        .unwrap_or_else(|e| {
            eprintln!("netns_client: {e}");
            std::process::exit(1)
        })
}
