//! A shared-memory echo server, for the crate's cross-process tests and
//! benchmarks.
//!
//! `shm_echo [ADDRESS] [--spin-us N] [--max BYTES]` listens on ADDRESS
//! (default `shm://`, a fresh name), prints the address to connect to on
//! its first line of standard output, then sends every message it receives
//! back on the same connection, for every client, until killed.

#[cfg(target_os = "linux")]
use std::io::Write;
use std::process::ExitCode;
#[cfg(target_os = "linux")]
use std::time::Duration;

#[cfg(target_os = "linux")]
use courier_shm::ShmTransport;
#[cfg(target_os = "linux")]
use courier_transport::{Connection, Listener, MessageReceiver, MessageSender, Transport};

#[cfg(target_os = "linux")]
const USAGE: &str = "usage: shm_echo [ADDRESS] [--spin-us N] [--max BYTES]";

#[cfg(target_os = "linux")]
struct Args {
    address: String,
    spin_us: Option<u64>,
    max: usize,
}

#[cfg(target_os = "linux")]
fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        address: "shm://".to_owned(),
        spin_us: None,
        max: 64 << 20,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut number = |what: &str| -> Result<u64, String> {
            it.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{what} needs a number\n{USAGE}"))
        };
        match a.as_str() {
            "--spin-us" => args.spin_us = Some(number("--spin-us")?),
            "--max" => {
                args.max = usize::try_from(number("--max")?).map_err(|e| e.to_string())?;
            }
            "-h" | "--help" => return Err(USAGE.to_owned()),
            _ if !a.starts_with('-') => args.address = a,
            _ => return Err(format!("unknown argument '{a}'\n{USAGE}")),
        }
    }
    Ok(args)
}

#[cfg(target_os = "linux")]
async fn echo<C: Connection>(connection: C) {
    let (mut tx, mut rx) = connection.split();
    loop {
        match rx.recv().await {
            Ok(Some(message)) => {
                if let Err(e) = tx.send(&[&message]).await {
                    eprintln!("shm_echo: send: {e}");
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                eprintln!("shm_echo: recv: {e}");
                return;
            }
        }
    }
}

#[cfg(target_os = "linux")]
async fn serve(args: Args) -> Result<(), String> {
    let mut transport = ShmTransport::new(args.max);
    if let Some(us) = args.spin_us {
        transport = transport.with_spin(Duration::from_micros(us));
    }
    let address = args.address.parse().map_err(|e| format!("{e}"))?;
    let mut listener = transport
        .listen(&address)
        .await
        .map_err(|e| e.to_string())?;
    let mut out = std::io::stdout();
    writeln!(out, "{}", listener.local_addr()).map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())?;
    loop {
        match listener.accept().await {
            Ok(connection) => {
                tokio::spawn(echo(connection));
            }
            Err(e) => eprintln!("shm_echo: accept: {e}"),
        }
    }
}

#[cfg(target_os = "linux")]
fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("shm_echo: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shm_echo: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The shm transport is Linux-only (memfd, eventfd): elsewhere the program
/// only says so.
#[cfg(not(target_os = "linux"))]
fn main() -> ExitCode {
    eprintln!("shm_echo: the shm transport is Linux-only");
    ExitCode::FAILURE
}
