//! `courier serve`: the seed's server, with `echo`, `sleep` and `relay`
//! besides `hello`.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use clap::Args;
use courier::{Bytes, Engine, Handle, RpcOptions};
use courier_group::{Group, GroupOptions};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::child::{exit_status, wait_ready, Ready};
use crate::client::{encode_strings, encode_u64s};
use crate::{out, CliResult, Error};

/// The line `serve` prints once it listens; `demo` and scripts wait for it.
pub(crate) const READY_PREFIX: &str = "Service running at ";

/// How long `serve --detach` waits for the service to listen.
const DETACH_GUARD: Duration = Duration::from_secs(20);

#[derive(Debug, Args)]
#[command(
    after_help = "RPCs (provider 0, arguments and responses encoded with postcard):\n  \
        hello  (first: String, last: String) -> String\n         \
        prints \"Hello <first> <last>!\" on stdout, responds \"Good bye <first>\"\n         \
        e.g. courier call ADDR hello Matthieu Dorier\n  \
        echo   raw bytes -> the same bytes (registered with register_raw)\n         \
        e.g. courier call ADDR echo --raw some text, or courier call ADDR echo --input FILE\n  \
        sleep  (milliseconds: u64) -> (), after sleeping that long (cancelled with its call)\n         \
        e.g. courier call ADDR sleep --u64 250\n  \
        relay  (strings: ADDR2 RPC [ARGS]) -> what RPC at ADDR2 responds\n         \
        makes from its handler the call `courier call ADDR2 RPC [ARGS]` would make (ARGS are\n         \
        strings; after --u64 numbers, after --raw bytes), over this service's protocol, within\n         \
        what is left of its own caller's deadline; cancelled with its call, which cancels the\n         \
        relayed call in turn. Put `--` before ADDR2 when ARGS hold --u64 or --raw:\n         \
        e.g. courier call ADDR relay --timeout-ms 200 -- ADDR2 sleep --u64 5000\n\n\
Logs (stderr): warnings, and the engine's info lines, such as\n  \
        INFO courier::handler: handler cancelled: the caller cancelled the call rpc=sleep ...\n\
when a caller gives up (its --timeout-ms passed, or it was interrupted). -v shows every\n\
info line, -vv debug; RUST_LOG, when set, decides instead (RUST_LOG=warn hides them)."
)]
pub(crate) struct ServeArgs {
    /// Protocol to listen with, on loopback at an ephemeral port or path
    /// (tcp, unix, ofi+tcp, ...; see `courier protocols`), or several,
    /// comma-separated (tcp,shm): the service then listens on each (and
    /// in-process) and prints one address set, tcp://…,shm://…,mem://….
    /// Default: tcp.
    #[arg(long, short = 'p', value_name = "P[,P…]", conflicts_with = "listen")]
    protocol: Option<String>,

    /// Full listen address instead, e.g. tcp://127.0.0.1:7000, tcp://[::1]:0,
    /// unix:///tmp/courier.sock (tcp://0.0.0.0:PORT makes it reachable from other hosts);
    /// or several, comma-separated, each an address or a protocol: tcp://0.0.0.0:0,shm.
    #[arg(long, short = 'l', value_name = "ADDR")]
    listen: Option<String>,

    /// Let clients shut this service down (`courier shutdown ADDR`).
    #[arg(long)]
    enable_remote_shutdown: bool,

    /// Serve this engine's statistics to `courier stats ADDR` and `courier top
    /// ADDR`, and time every request's phases (queue, handler, respond) for
    /// their latencies: '{"stats": {"serve": true, "timing": true}}'. Anyone
    /// who can connect can then read the names of the RPCs and of the peers.
    #[arg(long)]
    stats: bool,

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

    /// Be a member of the group of this group file: if the file does not
    /// exist, make the group (named after the file: kv.json makes group kv)
    /// and write the file; else join the group through the members it
    /// lists. The file is rewritten as members come and go; the service
    /// leaves the group when it is stopped (Ctrl-C, SIGTERM, `courier shutdown`). See
    /// `courier group view`.
    #[arg(long, value_name = "FILE")]
    group: Option<std::path::PathBuf>,

    /// The group's times and rates (with --group), as a JSON object or
    /// @FILE; every member should use the same, e.g. '{"probe_period_ms":
    /// 1000, "probe_timeout_ms": 500, "suspect_to_down_ms": 4000}' (the
    /// defaults; docs/groups.md lists every field).
    #[arg(long, value_name = "JSON|@FILE", requires = "group")]
    group_options: Option<String>,

    /// Serve in the background: start the service as a new process, wait
    /// until it listens, print its address alone on stdout, and exit, as in
    /// `ADDR=$(courier serve --detach)`. The service's own output goes to
    /// this command's stderr.
    #[arg(long)]
    detach: bool,

    /// (internal) The process started by --detach: print the ready line on
    /// stdout, everything else on stderr.
    #[arg(long, hide = true, conflicts_with = "detach")]
    detached: bool,
}

/// Reads `--config`: inline JSON, or `@path`.
fn config_text(arg: &str) -> CliResult<String> {
    match arg.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("read the configuration file '{path}'"), e)),
        None => Ok(arg.to_owned()),
    }
}

/// `--group FILE`: makes or joins the group of the file, with
/// `--group-options` if given.
async fn open_group(
    engine: &Engine,
    path: &std::path::Path,
    options: Option<&str>,
) -> CliResult<Group> {
    let options = match options {
        Some(text) => GroupOptions::from_json(&config_text(text)?)?,
        None => GroupOptions::default(),
    };
    let group = Group::open(engine, path, options).await?;
    let view = group.view();
    tracing::info!(
        group = group.name(),
        file = %path.display(),
        live = view.live().count(),
        "member of the group"
    );
    Ok(group)
}

/// Prints a line from a handler, on stdout (on stderr when `on_stderr`); a
/// closed stream is not the caller's problem, so errors are ignored (never a
/// panic).
fn say(line: &str, on_stderr: bool) {
    let written = if on_stderr {
        let mut stderr = std::io::stderr().lock();
        writeln!(stderr, "{line}").and_then(|()| stderr.flush())
    } else {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{line}").and_then(|()| stdout.flush())
    };
    let _ = written;
}

/// The call `relay` makes: where, which RPC, and its encoded arguments.
#[derive(Debug, PartialEq, Eq)]
struct Forward {
    address: String,
    rpc: String,
    payload: Vec<u8>,
}

/// What `relay` says when its arguments are not `ADDR2 RPC [ARGS]`.
const RELAY_USAGE: &str = "relay takes strings: ADDR2 RPC [ARGS], \
    e.g. courier call ADDR relay -- ADDR2 sleep --u64 5000";

/// Reads `relay`'s arguments: the tuple of strings `courier call` sends by
/// default, `ADDR2 RPC [ARGS]`. ARGS are encoded as `courier call` encodes
/// its own: strings; numbers after a first `--u64`; the rest joined by
/// spaces, as bytes, after a first `--raw` (a first `--` is skipped).
///
/// # Errors
/// A message for the caller: not strings, or fewer than two.
fn forward_of(payload: &[u8]) -> Result<Forward, String> {
    let mut words = Vec::new();
    let mut rest = payload;
    while !rest.is_empty() {
        let (word, tail) = postcard::take_from_bytes::<String>(rest)
            .map_err(|e| format!("{RELAY_USAGE} (cannot decode a string: {e})"))?;
        words.push(word);
        rest = tail;
    }
    let mut words = words.into_iter();
    let (Some(address), Some(rpc)) = (words.next(), words.next()) else {
        return Err(RELAY_USAGE.to_owned());
    };
    let args: Vec<String> = words.collect();
    let payload = match args.split_first() {
        Some((flag, rest)) if flag == "--u64" => encode_u64s(rest),
        Some((flag, rest)) if flag == "--raw" => Ok(rest.join(" ").into_bytes()),
        Some((flag, rest)) if flag == "--" => encode_strings(rest),
        _ => encode_strings(&args),
    }
    .map_err(|e| e.to_string())?;
    Ok(Forward {
        address,
        rpc,
        payload,
    })
}

/// `relay`: makes the call its arguments describe, from its handler, and
/// responds with the response's bytes. The call inherits the request's
/// deadline and is dropped with the handler when the request is cancelled
/// (which tells the next server in turn).
async fn relay(engine: Engine, handle: Handle, payload: Bytes) -> Result<(), String> {
    let forward = forward_of(&payload)?;
    let to = engine
        .lookup(&forward.address)
        .await
        .map_err(|e| format!("relay to {}: {e}", forward.address))?;
    let response = engine
        .remote_raw(&forward.rpc)
        .on(&to)
        .call(&forward.payload)
        .await
        .map_err(|e| format!("relayed call failed: {e}"))?;
    handle
        .respond_raw(&response)
        .await
        .map_err(|e| e.to_string())
}

/// Registers `hello`, `echo`, `sleep` and `relay` on `engine`; `hello`
/// prints its greeting on stderr when `greet_on_stderr`.
fn register_rpcs(engine: &Engine, greet_on_stderr: bool) -> courier::Result<()> {
    engine.register(
        "hello",
        move |handle: Handle, (first, last): (String, String)| async move {
            say(&format!("Hello {first} {last}!"), greet_on_stderr);
            handle.respond(&format!("Good bye {first}")).await
        },
    )?;
    engine.register_raw(
        "echo",
        RpcOptions::default(),
        |handle: Handle, payload: Bytes| async move { handle.respond_raw(&payload).await },
    )?;
    engine.register("sleep", |handle: Handle, millis: u64| async move {
        // Dropped, with its timer, when the call is cancelled.
        tokio::time::sleep(Duration::from_millis(millis)).await;
        handle.respond(&()).await
    })?;
    // The handler holds the engine; finalize drops the handlers.
    let relay_engine = engine.clone();
    engine.register_raw(
        "relay",
        RpcOptions::default(),
        move |handle: Handle, payload: Bytes| relay(relay_engine.clone(), handle, payload),
    )?;
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

/// `serve --detach`: this command again, with the same arguments but
/// `--detached` for `--detach`, as a new process that outlives this one;
/// waits for its ready line and prints the address.
async fn detach() -> CliResult {
    let exe = std::env::current_exe().map_err(|e| Error::io("find the courier executable", e))?;
    let mut cmd = tokio::process::Command::new(exe);
    // Every `--detach` is the flag: clap takes no `--detach` as a value.
    cmd.args(std::env::args_os().skip(1).filter(|a| a != "--detach"))
        .arg("--detached")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // Its errors, logs and greetings reach the user through our stderr.
        .stderr(Stdio::inherit());
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io("start the service's process", e))?;
    let Some(stdout) = child.stdout.take() else {
        let _ = child.kill().await;
        return Err(Error::Peer("the service's stdout pipe is missing".into()));
    };
    let mut lines = BufReader::new(stdout).lines();
    match wait_ready(&mut lines, READY_PREFIX, "service stdout", DETACH_GUARD).await {
        // The service runs on; dropping its handle leaves it running.
        Ready::At(address) => out(address),
        Ready::Ended => {
            // It said why on stderr.
            let status = exit_status(&mut child, DETACH_GUARD).await;
            Err(Error::Peer(format!(
                "the service stopped before it listened ({status})"
            )))
        }
        Ready::Failed(e) => {
            let _ = child.kill().await;
            Err(Error::io("read the service's stdout", e))
        }
        Ready::Silent => {
            let _ = child.kill().await;
            Err(Error::Peer(format!(
                "the service printed no address within {} s",
                DETACH_GUARD.as_secs()
            )))
        }
    }
}

pub(crate) async fn run(args: ServeArgs) -> CliResult {
    if args.detach {
        return detach().await;
    }
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
    if args.stats {
        builder = builder.serve_stats(true).stats_timing(true);
    }
    let engine = builder.build().await?;
    register_rpcs(&engine, args.detached)?;
    if args.enable_remote_shutdown {
        engine.enable_remote_shutdown();
    }
    // A member before it says it serves: a script that waits for the ready
    // line finds it in the group.
    let group = match &args.group {
        Some(path) => match open_group(&engine, path, args.group_options.as_deref()).await {
            Ok(group) => Some(group),
            Err(e) => {
                engine.finalize().await;
                return Err(e);
            }
        },
        None => None,
    };
    tracing::info!(config = %engine.config(), "serving");
    if let Err(e) = out(format_args!("{READY_PREFIX}{}", engine.address())) {
        engine.finalize().await;
        return Err(e);
    }
    // However it ends (a signal, a remote shutdown), finalize leaves the
    // group first: the others see it left, not down, and the group file is
    // rewritten without it.
    tokio::select! {
        () = engine.wait_for_finalize() => tracing::info!("finalized by a remote shutdown"),
        () = stop_signal() => engine.finalize().await,
    }
    // A remote shutdown finalizes on a spawned task: wait for it to finish
    // (the unix socket file is removed then).
    engine.finalize().await;
    drop(group);
    Ok(())
}

/// The long help of the subcommand (clap takes it from the enum variant).
pub(crate) const SERVE_LONG_ABOUT: &str =
    "Run a service and print one line, `Service running at <address>`, on \
        stdout once it listens; then serve until a client shuts it down (with \
        --enable-remote-shutdown) or until Ctrl-C / SIGTERM. Exits 0 then.\n\n\
        With --detach, the service runs in the background instead: this command \
        prints its address alone once it listens and exits 0 (1 if the service \
        could not start), so that a script can go on with it:\n\n  \
        ADDR=$(courier serve --enable-remote-shutdown --detach)\n  \
        courier call \"$ADDR\" hello Matthieu Dorier\n  \
        courier shutdown \"$ADDR\"\n\n\
        With several protocols (--protocol tcp,shm, or --listen tcp://0.0.0.0:0,shm), \
        the address is an address set, tcp://…,shm://…,mem://…: a client given it \
        (`courier ping SET`) speaks the set's protocols and connects by the fastest \
        path it can take (shm on the same host, tcp from elsewhere); `courier ping` \
        shows which.\n\n\
        With --group FILE, the service is also a member of a group: the first \
        service given a file that does not exist makes the group and writes the file; \
        the others join through the members it lists, and the file follows the live \
        members. `courier group view FILE` prints them; a member stopped by Ctrl-C, \
        SIGTERM or `courier shutdown` leaves the group, one that dies is declared down by the others (within \
        about 5 s with the default --group-options).\n\n\
        With --stats, the service also serves its statistics, with the latency of each \
        phase of every request, to `courier stats ADDR` and `courier top ADDR`.";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn strings(words: &[&str]) -> Vec<u8> {
        let owned: Vec<String> = words.iter().map(|w| (*w).to_owned()).collect();
        encode_strings(&owned).unwrap()
    }

    #[test]
    fn relay_arguments_are_a_courier_call_line() {
        let f = forward_of(&strings(&["tcp://h:1", "hello", "Matthieu", "Dorier"])).unwrap();
        assert_eq!(f.address, "tcp://h:1");
        assert_eq!(f.rpc, "hello");
        assert_eq!(
            f.payload,
            postcard::to_allocvec(&("Matthieu", "Dorier")).unwrap()
        );
        let f = forward_of(&strings(&["tcp://h:1", "sleep", "--u64", "5000"])).unwrap();
        assert_eq!(f.payload, postcard::to_allocvec(&5000u64).unwrap());
        let f = forward_of(&strings(&["tcp://h:1", "echo", "--raw", "a", "b"])).unwrap();
        assert_eq!(f.payload, b"a b");
        let f = forward_of(&strings(&["tcp://h:1", "hello", "--", "--u64", "x"])).unwrap();
        assert_eq!(f.payload, postcard::to_allocvec(&("--u64", "x")).unwrap());
        // Another relay: its arguments travel as strings, flags included.
        let f = forward_of(&strings(&[
            "tcp://h:1",
            "relay",
            "tcp://h:2",
            "sleep",
            "--u64",
            "9",
        ]))
        .unwrap();
        assert_eq!(f.rpc, "relay");
        assert_eq!(
            forward_of(&f.payload).unwrap(),
            Forward {
                address: "tcp://h:2".into(),
                rpc: "sleep".into(),
                payload: postcard::to_allocvec(&9u64).unwrap(),
            }
        );
    }

    #[test]
    fn bad_relay_arguments_are_errors() {
        assert!(forward_of(&strings(&["tcp://h:1"]))
            .unwrap_err()
            .contains("ADDR2 RPC"));
        assert!(forward_of(&[]).is_err());
        // A number is not a string (0xff is no valid length and UTF-8).
        assert!(forward_of(&[0x02, 0xff, 0xfe]).is_err());
        let e = forward_of(&strings(&["tcp://h:1", "sleep", "--u64", "soon"])).unwrap_err();
        assert!(e.contains("soon"), "{e}");
    }
}
