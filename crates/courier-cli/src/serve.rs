//! `courier serve`: the seed's server, with `echo` and `sleep` besides `hello`.

use std::io::Write;
use std::time::Duration;

use clap::Args;
use courier::{Bytes, Engine, Handle, RpcOptions};

use crate::{out, CliResult, Error};

/// The line `serve` prints once it listens; `demo` and scripts wait for it.
pub(crate) const READY_PREFIX: &str = "Service running at ";

#[derive(Debug, Args)]
#[command(
    after_help = "RPCs (provider 0, arguments and responses encoded with postcard):\n  \
        hello  (first: String, last: String) -> String\n         \
        prints \"Hello <first> <last>!\" on stdout, responds \"Good bye <first>\"\n         \
        e.g. courier call ADDR hello Matthieu Dorier\n  \
        echo   raw bytes -> the same bytes (registered with register_raw)\n         \
        e.g. courier call ADDR echo --raw some text, or courier call ADDR echo --input FILE\n  \
        sleep  (milliseconds: u64) -> (), after sleeping that long\n         \
        e.g. courier call ADDR sleep --u64 250"
)]
pub(crate) struct ServeArgs {
    /// Protocol to listen with, on loopback at an ephemeral port or path
    /// (tcp, unix, ofi+tcp, ...; see `courier protocols`). Default: tcp.
    #[arg(long, short = 'p', value_name = "P", conflicts_with = "listen")]
    protocol: Option<String>,

    /// Full listen address instead, e.g. tcp://127.0.0.1:7000, tcp://[::1]:0,
    /// unix:///tmp/courier.sock (tcp://0.0.0.0:PORT makes it reachable from other hosts).
    #[arg(long, short = 'l', value_name = "ADDR")]
    listen: Option<String>,

    /// Let clients shut this service down (`courier shutdown ADDR`).
    #[arg(long)]
    enable_remote_shutdown: bool,

    /// Threads that run handlers; 0 runs them on the progress loop
    /// (default: the configuration's, else 0).
    #[arg(long, value_name = "N")]
    num_rpc_threads: Option<usize>,

    /// Run the engine's I/O on a dedicated progress thread.
    #[arg(long)]
    progress_thread: bool,

    /// Engine configuration as a JSON object, or @FILE to read it from a file,
    /// e.g. '{"rpc_thread_count": 2, "transport": {"nodelay": true}}'. The
    /// other options take precedence over it.
    #[arg(long, value_name = "JSON|@FILE")]
    config: Option<String>,
}

/// Reads `--config`: inline JSON, or `@path`.
fn config_text(arg: &str) -> CliResult<String> {
    match arg.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("read the configuration file '{path}'"), e)),
        None => Ok(arg.to_owned()),
    }
}

/// Prints a line on stdout from a handler; a closed stdout is not the
/// caller's problem, so errors are ignored (never a panic).
fn say(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
}

/// Registers `hello`, `echo` and `sleep` on `engine`.
pub(crate) fn register_rpcs(engine: &Engine) -> courier::Result<()> {
    engine.register(
        "hello",
        |handle: Handle, (first, last): (String, String)| async move {
            say(&format!("Hello {first} {last}!"));
            handle.respond(&format!("Good bye {first}")).await
        },
    )?;
    engine.register_raw(
        "echo",
        RpcOptions::default(),
        |handle: Handle, payload: Bytes| async move { handle.respond_raw(&payload).await },
    )?;
    engine.register("sleep", |handle: Handle, millis: u64| async move {
        tokio::time::sleep(Duration::from_millis(millis)).await;
        handle.respond(&()).await
    })?;
    Ok(())
}

/// Resolves when the process is asked to stop (Ctrl-C, or SIGTERM on Unix).
/// If no signal handler can be installed, it never resolves.
pub(crate) async fn stop_signal() {
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot catch SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    let int = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!("cannot catch Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = term => tracing::info!("SIGTERM received"),
        () = int => tracing::info!("interrupted"),
    }
}

pub(crate) async fn run(args: ServeArgs) -> CliResult {
    let target = args
        .listen
        .or(args.protocol)
        .unwrap_or_else(|| "tcp".to_owned());
    let mut builder = Engine::builder(&target);
    if let Some(c) = &args.config {
        builder = builder.config_json(&config_text(c)?);
    }
    if let Some(n) = args.num_rpc_threads {
        builder = builder.num_rpc_threads(n);
    }
    if args.progress_thread {
        builder = builder.use_progress_thread(true);
    }
    let engine = builder.build().await?;
    register_rpcs(&engine)?;
    if args.enable_remote_shutdown {
        engine.enable_remote_shutdown();
    }
    tracing::info!(config = %engine.config(), "serving");
    if let Err(e) = out(format_args!("{READY_PREFIX}{}", engine.address())) {
        engine.finalize().await;
        return Err(e);
    }
    tokio::select! {
        () = engine.wait_for_finalize() => tracing::info!("finalized by a remote shutdown"),
        () = stop_signal() => engine.finalize().await,
    }
    // A remote shutdown finalizes on a spawned task: wait for it to finish
    // (the unix socket file is removed then).
    engine.finalize().await;
    Ok(())
}

/// The long help of the subcommand (clap takes it from the enum variant).
pub(crate) const SERVE_LONG_ABOUT: &str =
    "Run a service and print one line, `Service running at <address>`, on \
        stdout once it listens; then serve until a client shuts it down (with \
        --enable-remote-shutdown) or until Ctrl-C / SIGTERM. Exits 0 then.";
