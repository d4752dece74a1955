//! `courier`: serve, call, ping and shut down Courier engines, read their
//! statistics (`stats`, and a live view, `top`), run them as groups
//! (`serve --group FILE`, `group view`), list the protocols this
//! build knows, run a cross-protocol demo, and benchmark every protocol
//! against its raw transport floor.
//!
//! Every error is printed as `courier: <message>` on stderr, with exit
//! status 1. Logs go to stderr too (`-v`, `-vv`, or `RUST_LOG`).
//!
//! The command is also a library, so a program that brings its own
//! transport plugin gets the whole `courier` command — `serve`, `call`,
//! `demo`, `bench` — for it, without editing Courier:
//!
//! ```no_run
//! # use courier_mem::MemPlugin as MyPlugin;
//! fn main() -> std::process::ExitCode {
//!     courier::install_plugin(MyPlugin);
//!     courier_cli::main()
//! }
//! ```
//!
//! (`courier bench` starts its peers by running the current executable
//! again, so they have the plugin too.)
//!
//! The measurement and report code of `courier bench` is public too, in
//! [`bench`](mod@bench), for benchmarks that compare Courier with other RPC systems;
//! every fallible function returns this crate's [`Error`].

#![forbid(unsafe_code)]

pub mod bench;
mod child;
mod client;
mod demo;
mod error;
mod group;
mod serve;
mod stats;
mod table;
mod top;

use std::fmt;
use std::io::Write;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

pub(crate) use error::Context;
pub use error::Error;

/// What every subcommand returns.
pub(crate) type CliResult<T = ()> = Result<T, Error>;

/// Writes one line to stdout and flushes it; an error (a closed pipe) is
/// returned, never a panic as with `println!`.
pub(crate) fn out(line: impl fmt::Display) -> CliResult {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .map_err(|e| Error::io("write to stdout", e))
}

/// Writes bytes to stdout as they are and flushes them.
pub(crate) fn out_bytes(bytes: &[u8]) -> CliResult {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .map_err(|e| Error::io("write to stdout", e))
}

/// For a command that carries on after a failure (one per protocol):
/// prints every failure but the last on stderr, as `main` prints the last,
/// and returns the last; `Ok` when there was none.
pub(crate) fn fail_with_last(failures: impl IntoIterator<Item = Error>) -> CliResult {
    let mut last = None;
    for e in failures {
        if let Some(earlier) = last.replace(e) {
            eprintln!("courier: {earlier}");
        }
    }
    last.map_or(Ok(()), Err)
}

#[derive(Debug, Parser)]
#[command(
    name = "courier",
    version,
    about = "Serve, call, ping and shut down Courier RPC engines",
    long_about = "Serve, call, ping and shut down Courier RPC engines.\n\n\
        Courier is an RPC engine with pluggable transports in the manner of Mochi \
        Margo / PyMargo. Addresses look like tcp://127.0.0.1:41235 or \
        unix:///tmp/courier-.../engine.sock; the protocol before :// picks the \
        transport (Mochi spellings such as ofi+tcp work too; see `courier protocols`).",
    after_help = "Quick start:\n  \
        courier serve --enable-remote-shutdown        # prints: Service running at tcp://127.0.0.1:PORT\n  \
        courier call tcp://127.0.0.1:PORT hello Matthieu Dorier\n  \
        courier ping tcp://127.0.0.1:PORT\n  \
        courier serve --protocol tcp,shm              # prints an address set: tcp://…,shm://…,mem://…\n  \
        courier ping 'tcp://…,shm://…,mem://…'        # seq=1 via shm://… (the path taken)\n  \
        courier stats tcp://127.0.0.1:PORT            # with `courier serve --stats`\n  \
        courier top tcp://127.0.0.1:PORT              # the same, live\n  \
        courier shutdown tcp://127.0.0.1:PORT\n  \
        courier serve --group /tmp/kv.json            # makes group kv, or joins it; again elsewhere\n  \
        courier group view /tmp/kv.json               # its live members: address and state\n  \
        courier demo                                  # all of the above, for every protocol\n  \
        courier bench --quick                         # latency and throughput, every protocol"
)]
struct Cli {
    /// More logging on stderr: -v info, -vv debug, -vvv trace (default: warn;
    /// `serve` adds the engine's info lines, such as a cancelled handler).
    /// RUST_LOG, when set, takes precedence.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List every protocol this build knows: aliases, plugin, availability.
    #[command(
        long_about = "List every protocol of the protocol table (the built-in protocols.toml, \
            plus $COURIER_PROTOCOLS if set): its name, the aliases accepted for it, the \
            transport plugin that implements it, and whether that plugin is built into \
            this program (\"available\") or not (\"not built in\"). Then the layers, \
            written before a protocol's name: `chaos+…` is `chaos+tcp`, `chaos+unix`, ..."
    )]
    Protocols,
    /// Run a service with the RPCs hello, echo, sleep and relay.
    #[command(long_about = serve::SERVE_LONG_ABOUT)]
    Serve(serve::ServeArgs),
    /// Call an RPC on a service and print its response.
    #[command(long_about = client::CALL_LONG_ABOUT)]
    Call(client::CallArgs),
    /// Measure engine-level round trips to a service (no handler runs), and
    /// show the path each took (the part of an address set).
    Ping(client::PingArgs),
    /// Print a service's statistics: per RPC and provider, providers, peers,
    /// bulk (it must run with `serve --stats`).
    #[command(long_about = stats::STATS_LONG_ABOUT)]
    Stats(stats::StatsArgs),
    /// A live view of a service's statistics, refreshed like `top`.
    #[command(long_about = top::TOP_LONG_ABOUT)]
    Top(top::TopArgs),
    /// Groups of services: `courier group view FILE|ADDR` prints a group's
    /// members (`courier serve --group FILE` makes and joins groups).
    Group(group::GroupArgs),
    /// Ask a service to shut down (it must run with remote shutdown enabled).
    #[command(long_about = client::SHUTDOWN_LONG_ABOUT)]
    Shutdown(client::ShutdownArgs),
    /// Start a server per protocol, call it, measure it, shut it down.
    #[command(long_about = demo::DEMO_LONG_ABOUT)]
    Demo(demo::DemoArgs),
    /// Benchmark every protocol: latency and throughput by payload size and
    /// calls in flight, next to the raw transport floor.
    #[command(long_about = bench::BENCH_LONG_ABOUT)]
    Bench(bench::BenchArgs),
    /// (internal) A peer of `courier bench`, run as its child process.
    #[command(hide = true)]
    BenchPeer(bench::peer::PeerArgs),
    /// (internal) A client of `courier bench --clients N`, run as its child process.
    #[command(hide = true)]
    BenchClient(bench::clients::ClientArgs),
}

/// Options shared by the subcommands that talk to a service.
#[derive(Debug, Args, Clone, Copy)]
pub(crate) struct TimeoutArg {
    /// Give up after this many milliseconds (connecting, and each request);
    /// 0 waits forever.
    #[arg(long = "timeout-ms", value_name = "MS", default_value_t = 10_000)]
    pub(crate) timeout_ms: u64,
}

impl TimeoutArg {
    pub(crate) fn duration(self) -> Option<std::time::Duration> {
        (self.timeout_ms > 0).then(|| std::time::Duration::from_millis(self.timeout_ms))
    }
}

/// Whether log lines get ANSI colours: only on a terminal (a file or a pipe
/// gets plain text), and never with `NO_COLOR` set (<https://no-color.org>).
fn colour_on_stderr() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The log filter of `courier serve` without `-v`: warnings, and the info
/// lines of the engine and its plugins (the `courier*` crates but this
/// one): a handler cancelled, a remote shutdown, what happened to the calls
/// it serves. Other commands show warnings only.
const SERVE_DEFAULT_LOG: &str = "warn,courier=info,courier_cli=warn";

/// Logs on stderr: `default` without `-v` (a filter, as RUST_LOG reads
/// them), else info, debug or trace; RUST_LOG, when set, instead.
fn init_logging(verbose: u8, default: &str) {
    use tracing_subscriber::EnvFilter;
    let level = match verbose {
        0 => default,
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::try_new(&spec).unwrap_or_else(|e| {
            eprintln!("courier: ignoring RUST_LOG={spec:?}: {e}");
            EnvFilter::new(level)
        }),
        _ => EnvFilter::new(level),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour_on_stderr())
        .try_init();
}

/// Runs the `courier` command on this process's arguments, with the plugins
/// of [`courier::default_registry`] (those bundled, and any added with
/// [`courier::install_plugin`] before this call); returns the exit status.
pub fn main() -> ExitCode {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(run()),
        Err(e) => {
            eprintln!("courier: cannot start the tokio runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            let text = e.render().to_string();
            let text = text.strip_prefix("error: ").unwrap_or(&text);
            eprintln!("courier: {}", text.trim_end());
            return ExitCode::FAILURE;
        }
    };
    let default_log = match cli.command {
        Command::Serve(_) => SERVE_DEFAULT_LOG,
        _ => "warn",
    };
    init_logging(cli.verbose, default_log);
    let result = match cli.command {
        Command::Protocols => protocols(),
        Command::Serve(args) => serve::run(args).await,
        Command::Call(args) => client::call(args).await,
        Command::Ping(args) => client::ping(args).await,
        Command::Shutdown(args) => client::shutdown(args).await,
        Command::Group(args) => group::run(args).await,
        Command::Stats(args) => stats::run(args).await,
        Command::Top(args) => top::run(args).await,
        Command::Demo(args) => demo::run(args, cli.verbose).await,
        Command::Bench(args) => bench::run(args, cli.verbose).await,
        Command::BenchPeer(args) => bench::peer::run(args).await,
        Command::BenchClient(args) => bench::clients::run(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("courier: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `courier protocols`.
fn protocols() -> CliResult {
    use courier::transport::Reach;
    let registry = courier::default_registry()?;
    let mut t = table::Table::new(&["protocol", "aliases", "plugin", "reach", "status"]);
    let status = |available: bool| {
        if available {
            "available"
        } else {
            "not built in"
        }
    };
    for p in registry.protocols() {
        let aliases = if p.aliases.is_empty() {
            "-".to_owned()
        } else {
            p.aliases.join(", ")
        };
        let reach = match registry.reach(p) {
            Some(Reach::Process) => "process",
            Some(Reach::Host) => "host",
            Some(Reach::Network) => "network",
            _ => "-",
        };
        t.row(vec![
            p.name.clone(),
            aliases,
            p.plugin.clone(),
            reach.to_owned(),
            status(registry.is_available(p)).to_owned(),
        ]);
    }
    for l in registry.layers() {
        t.row(vec![
            format!("{}+…", l.name),
            "-".to_owned(),
            format!("{} (layer)", l.plugin),
            "-".to_owned(),
            status(registry.is_layer_available(l)).to_owned(),
        ]);
    }
    t.print()
}
