//! `courier call`, `courier ping`, `courier shutdown`: a client-mode engine
//! speaking the address's protocol, or, for an address set, every protocol
//! of the set this build has ([`client_protocols`]).

use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use courier::transport::Reach;
use courier::{Address, AddressSet, Engine, EngineBuilder, Mode, RawCallable};

use crate::{out, out_bytes, CliResult, Error, TimeoutArg};

/// The long help of the subcommand (clap takes it from the enum variant).
pub(crate) const CALL_LONG_ABOUT: &str = "Call RPC at ADDR and print its response.\n\n\
        By default the ARGS are sent as a tuple of strings (postcard-encoded), which is \
        what an RPC taking (String, String, ...) expects; the response is printed as a \
        string if it decodes as one, else as hex (nothing for an empty response). \
        With --raw, the ARGS joined by spaces are sent as raw bytes and the response is \
        printed as UTF-8. With --u64, each ARG is a number sent as a u64.\n\n\
        With --input FILE (- for standard input), the bytes of FILE are the payload, \
        sent as they are, with no encoding and no ARGS, and the response's bytes are \
        written to stdout as they are (no newline added). That suits an RPC registered \
        with register_raw, such as `echo` of `courier serve`, with payloads up to the \
        engines' max_message_size (64 MiB by default, header included). An RPC with typed \
        arguments gets the file's bytes as its encoded arguments: the file must hold \
        their postcard encoding.\n\n\
        The request carries what is left of --timeout-ms to the service: its handler sees \
        it as its deadline, and calls the handler makes inherit it. When the call gives up \
        (the timeout passed, or the command was interrupted), the handler is cancelled, and \
        what it called is cancelled in turn; `courier serve` logs `handler cancelled` at \
        info level for each.";

/// The long help of the subcommand (clap takes it from the enum variant).
pub(crate) const SHUTDOWN_LONG_ABOUT: &str =
    "Ask the service at ADDR to finalize. It must run with remote \
    shutdown enabled (`courier serve --enable-remote-shutdown`); otherwise it refuses \
    and this exits 1.";

#[derive(Debug, Args)]
#[command(after_help = "Examples (against `courier serve`):\n  \
        courier call tcp://127.0.0.1:PORT hello Matthieu Dorier    # Good bye Matthieu\n  \
        courier call tcp://127.0.0.1:PORT echo --raw hello world   # hello world\n  \
        courier call tcp://127.0.0.1:PORT echo --input data.bin > copy.bin   # the same bytes back\n  \
        date | courier call tcp://127.0.0.1:PORT echo --input -    # from standard input\n  \
        courier call tcp://127.0.0.1:PORT sleep --u64 500 --timeout-ms 100   # times out\n  \
        courier call tcp://127.0.0.1:PORT echo --raw load --count 1000   # 1000 calls, then a summary\n  \
        courier call tcp://127.0.0.1:PORT relay --timeout-ms 200 -- tcp://127.0.0.1:PORT2 sleep --u64 5000\n      \
        # the same through a second service: both log their handler cancelled\n\n\
        Put `--` before ARGS that start with '-'.")]
pub(crate) struct CallArgs {
    /// The service's address, as `courier serve` printed it.
    address: String,

    /// The RPC's name.
    rpc: String,

    /// The RPC's arguments (strings, unless --raw or --u64).
    args: Vec<String>,

    /// The provider id the RPC is registered at.
    #[arg(long, value_name = "N", default_value_t = 0,
          value_parser = clap::value_parser!(u16).range(0..=65534))]
    provider: u16,

    #[command(flatten)]
    timeout: TimeoutArg,

    #[command(flatten)]
    protocol: ProtocolArg,

    /// Send the ARGS joined by spaces as raw bytes; print the response as UTF-8.
    #[arg(long, conflicts_with = "u64")]
    raw: bool,

    /// Send the ARGS as a tuple of u64 numbers (e.g. for `sleep`).
    #[arg(long)]
    u64: bool,

    /// Send the bytes of FILE (`-`: standard input) as the payload, as they
    /// are, instead of ARGS; write the response's bytes to stdout as they
    /// are.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["args", "u64"])]
    input: Option<PathBuf>,

    /// Make the call N times, one after the other (load for `courier stats`
    /// and `courier top`): print the first response, then a summary line
    /// (on stderr with --input). Exits 1 if any call failed.
    #[arg(long, short = 'c', value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..))]
    count: u32,
}

#[derive(Debug, Args)]
pub(crate) struct PingArgs {
    /// The service's address.
    address: String,

    /// How many pings to send, one after the other.
    #[arg(long, short = 'c', value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..))]
    count: u32,

    #[command(flatten)]
    timeout: TimeoutArg,

    #[command(flatten)]
    protocol: ProtocolArg,
}

#[derive(Debug, Args)]
pub(crate) struct ShutdownArgs {
    /// The service's address.
    address: String,

    #[command(flatten)]
    timeout: TimeoutArg,

    #[command(flatten)]
    protocol: ProtocolArg,
}

/// The `--protocol` of the subcommands that look a service up.
#[derive(Debug, Args, Clone, Default)]
pub(crate) struct ProtocolArg {
    /// The protocols this client speaks, e.g. tcp or tcp,shm. Default: the
    /// address's protocol; for an address set (tcp://…,shm://…,mem://…),
    /// every protocol of the set this build has, but the in-process ones
    /// (another process's), so that the lookup takes the fastest path
    /// (shm on the same host). `--protocol tcp` makes it take tcp.
    #[arg(long, short = 'p', value_name = "P[,P…]")]
    pub(crate) protocol: Option<String>,
}

/// The protocols a client engine is built for to reach `address`: `pinned`
/// when given; the address's protocol for one address; for a set, each
/// protocol of its parts that this build has (canonical names, in the
/// set's order, once each), leaving out those that reach only within a
/// process (the set's `mem://` part is the server's own process). A set
/// none of whose protocols is usable gives its first part's protocol: the
/// lookup then says what is wrong.
///
/// # Errors
/// A malformed address or set ([`courier::Error::AddressSet`]); the
/// protocol table cannot be read.
pub(crate) fn client_protocols(address: &str, pinned: Option<&str>) -> CliResult<String> {
    if let Some(p) = pinned {
        return Ok(p.to_owned());
    }
    let set: AddressSet = address.parse()?;
    if !set.is_set() {
        return Ok(set.first().protocol().to_owned());
    }
    let registry = courier::default_registry()?;
    let mut names: Vec<String> = Vec::new();
    for part in set.parts() {
        // An unknown protocol is left to the lookup, whose error names it
        // and the known ones.
        let Ok(entry) = registry.resolve(part.protocol()) else {
            continue;
        };
        let usable =
            registry.is_available(&entry) && registry.reach(&entry) != Some(Reach::Process);
        if usable && !names.contains(&entry.name) {
            names.push(entry.name);
        }
    }
    if names.is_empty() {
        return Ok(set.first().protocol().to_owned());
    }
    Ok(names.join(","))
}

/// A client-mode engine builder for `address` (see [`client_protocols`]).
/// An engine of several protocols gets no in-process path: nothing in
/// another process can use it.
pub(crate) fn client_builder(address: &str, pinned: Option<&str>) -> CliResult<EngineBuilder> {
    let protocols = client_protocols(address, pinned)?;
    let mut builder = Engine::builder(&protocols).mode(Mode::Client);
    if protocols.contains(',') {
        builder = builder.config_value(serde_json::json!({"paths": {"in_process": false}}));
    }
    Ok(builder)
}

/// A client engine for `address` (see [`client_protocols`]), and the
/// looked-up address.
pub(crate) async fn connect(
    address: &str,
    pinned: Option<&str>,
    timeout: Option<Duration>,
) -> CliResult<(Engine, Address)> {
    let mut builder = client_builder(address, pinned)?;
    if let Some(t) = timeout {
        builder = builder.connect_timeout(t);
    }
    let engine = builder.build().await?;
    match engine.lookup(address).await {
        Ok(a) => Ok((engine, a)),
        Err(e) => {
            engine.finalize().await;
            Err(e.into())
        }
    }
}

/// Postcard encoding of a tuple of strings: each string after the other.
pub(crate) fn encode_strings(args: &[String]) -> CliResult<Vec<u8>> {
    let mut buf = Vec::new();
    for a in args {
        buf = postcard::to_extend(a, buf).map_err(|source| Error::Encode {
            argument: format!("{a:?}"),
            source,
        })?;
    }
    Ok(buf)
}

pub(crate) fn encode_u64s(args: &[String]) -> CliResult<Vec<u8>> {
    let mut buf = Vec::new();
    for a in args {
        let n: u64 = a
            .parse()
            .map_err(|e| Error::Argument(format!("--u64: argument {a:?} is not a u64: {e}")))?;
        buf = postcard::to_extend(&n, buf).map_err(|source| Error::Encode {
            argument: n.to_string(),
            source,
        })?;
    }
    Ok(buf)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The payload of `--input`: the file's bytes, or standard input's for `-`.
fn read_input(path: &Path) -> CliResult<Vec<u8>> {
    if path.as_os_str() == "-" {
        let mut bytes = Vec::new();
        std::io::stdin()
            .lock()
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io("read the input from standard input", e))?;
        Ok(bytes)
    } else {
        std::fs::read(path)
            .map_err(|e| Error::io(format!("read the input file '{}'", path.display()), e))
    }
}

/// How `call` shows a (non-raw) response: the string it encodes, or hex.
fn render_response(payload: &[u8]) -> String {
    match postcard::take_from_bytes::<String>(payload) {
        Ok((s, [])) => s,
        _ => hex(payload),
    }
}

pub(crate) async fn call(args: CallArgs) -> CliResult {
    // Read before the engine starts: nothing else runs on this thread yet.
    let payload = if let Some(path) = &args.input {
        read_input(path)?
    } else if args.raw {
        args.args.join(" ").into_bytes()
    } else if args.u64 {
        encode_u64s(&args.args)?
    } else {
        encode_strings(&args.args)?
    };
    let timeout = args.timeout.duration();
    let (engine, address) =
        connect(&args.address, args.protocol.protocol.as_deref(), timeout).await?;
    let mut callable = engine
        .remote_raw(&args.rpc)
        .on_provider(&address, args.provider);
    if let Some(t) = timeout {
        callable = callable.timeout(t);
    }
    if args.count > 1 {
        let result = call_many(&callable, &payload, &args).await;
        engine.finalize().await;
        return result;
    }
    let result = callable.call(&payload).await;
    if result.is_err() {
        // A call given up (timed out) tells its server from a task of this
        // runtime (a `Cancel` frame): let that task write it before
        // finalize closes the connection, so that the server's handler is
        // cancelled because its caller gave up, not because the connection
        // was lost.
        tokio::task::yield_now().await;
    }
    engine.finalize().await;
    print_response(&result?, &args)
}

/// Prints a response as `args` say: bytes with --input, text with --raw,
/// else a string or hex (nothing if empty).
fn print_response(response: &[u8], args: &CallArgs) -> CliResult {
    if args.input.is_some() {
        out_bytes(response)
    } else if args.raw {
        out(String::from_utf8_lossy(response))
    } else if response.is_empty() {
        Ok(())
    } else {
        out(render_response(response))
    }
}

/// `call --count N`: the call N times, one after the other; the first
/// response printed, then a summary as `ping` prints it.
async fn call_many(callable: &RawCallable, payload: &[u8], args: &CallArgs) -> CliResult {
    let count = args.count;
    let mut times = Vec::with_capacity(count as usize);
    let mut last_error = None;
    let mut printed = false;
    for _ in 0..count {
        let start = Instant::now();
        match callable.call(payload).await {
            Ok(response) => {
                times.push(start.elapsed());
                if !printed {
                    print_response(&response, args)?;
                    printed = true;
                }
            }
            Err(e) => {
                // As for one call: let the `Cancel` of a call given up go
                // out before the next call (or finalize).
                tokio::task::yield_now().await;
                last_error = Some(e);
            }
        }
    }
    let failed = count as usize - times.len();
    let mut summary = format!(
        "--- {} at {}: {count} calls, {} answered",
        args.rpc,
        args.address,
        times.len()
    );
    round_trips(&mut summary, &times);
    if args.input.is_some() {
        // Stdout holds the response's bytes alone.
        eprintln!("{summary}");
    } else {
        out(summary)?;
    }
    match last_error {
        None => Ok(()),
        Some(e) => Err(Error::from(e).context(format!(
            "{failed} of {count} calls of {} failed; the last",
            args.rpc
        ))),
    }
}

fn micros(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

pub(crate) async fn ping(args: PingArgs) -> CliResult {
    let timeout = args.timeout.duration();
    let (engine, address) =
        connect(&args.address, args.protocol.protocol.as_deref(), timeout).await?;
    let result = ping_loop(&address, args.count, timeout).await;
    engine.finalize().await;
    result
}

async fn ping_loop(address: &Address, count: u32, timeout: Option<Duration>) -> CliResult {
    out(format_args!(
        "PING {address}: {count} engine-level round trips"
    ))?;
    let mut times = Vec::with_capacity(count as usize);
    let mut last_error = None;
    for seq in 1..=count {
        match address.ping(timeout).await {
            Ok(rtt) => {
                // The path the connection took (the part of a set, or the
                // address): it may change if the connection is opened again.
                let via = address
                    .path()
                    .map_or_else(|| "(no live connection)".to_owned(), |p| p.to_string());
                out(format_args!("seq={seq} via {via} time={} µs", micros(rtt)))?;
                times.push(rtt);
            }
            Err(e) => {
                out(format_args!("seq={seq} error: {e}"))?;
                last_error = Some(e);
            }
        }
    }
    let lost = count as usize - times.len();
    let mut summary = format!("--- {address}: {count} sent, {} answered", times.len());
    round_trips(&mut summary, &times);
    out(summary)?;
    match last_error {
        None => Ok(()),
        // The last failure says why.
        Some(e) => {
            Err(Error::from(e).context(format!("{lost} of {count} pings to {address} failed")))
        }
    }
}

pub(crate) async fn shutdown(args: ShutdownArgs) -> CliResult {
    let timeout = args.timeout.duration();
    let (engine, address) =
        connect(&args.address, args.protocol.protocol.as_deref(), timeout).await?;
    let result = address.shutdown_within(timeout).await.map_err(Error::from);
    engine.finalize().await;
    result?;
    out(format_args!("shutdown requested: {address}"))
}

/// Appends ", round trip min/avg/max = … µs" of `times` to `summary` (for
/// `ping --count` and `call --count`); nothing if there are none.
fn round_trips(summary: &mut String, times: &[Duration]) {
    if let (Some(min), Some(max)) = (times.iter().min(), times.iter().max()) {
        let total: Duration = times.iter().sum();
        let avg = total / u32::try_from(times.len()).unwrap_or(u32::MAX);
        let _ = write!(
            summary,
            ", round trip min/avg/max = {}/{}/{} µs",
            micros(*min),
            micros(avg),
            micros(*max)
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn a_client_speaks_the_protocols_of_the_set_it_can_use() {
        let speaks = |address: &str| client_protocols(address, None).unwrap();
        assert_eq!(speaks("tcp://127.0.0.1:1"), "tcp");
        assert_eq!(speaks("ofi+tcp://127.0.0.1:1"), "ofi+tcp");
        // Of a set: canonical names, once each, in the set's order; not
        // mem (the server's own process), not an unknown protocol (the
        // lookup names it).
        #[cfg(target_os = "linux")]
        {
            assert_eq!(speaks("tcp://127.0.0.1:1,shm://x,mem://y"), "tcp,shm");
            assert_eq!(speaks("na+sm://x,ofi+tcp://127.0.0.1:1"), "shm,tcp");
        }
        assert_eq!(
            speaks("tcp://127.0.0.1:1,tcp://127.0.0.1:2,pigeon://coop,mem://y"),
            "tcp"
        );
        // Nothing usable: the first part's, for the lookup to explain.
        assert_eq!(speaks("mem://a,mem://b"), "mem");
        // Pinned: as given.
        assert_eq!(
            client_protocols("tcp://127.0.0.1:1,shm://x", Some("tcp")).unwrap(),
            "tcp"
        );
        let e = client_protocols("tcp://127.0.0.1:1,,shm://x", None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid address set 'tcp://127.0.0.1:1,,shm://x': part 2 is empty"
        );
    }

    #[test]
    fn strings_encode_as_the_tuple_does() {
        let args = vec!["Matthieu".to_owned(), "Dorier".to_owned()];
        let tuple = postcard::to_allocvec(&("Matthieu", "Dorier")).unwrap();
        assert_eq!(encode_strings(&args).unwrap(), tuple);
        assert_eq!(
            encode_strings(&[]).unwrap(),
            postcard::to_allocvec(&()).unwrap()
        );
    }

    #[test]
    fn u64s_encode_as_the_number_does() {
        assert_eq!(
            encode_u64s(&["300".to_owned()]).unwrap(),
            postcard::to_allocvec(&300u64).unwrap()
        );
        assert!(encode_u64s(&["-1".to_owned()]).is_err());
    }

    #[test]
    fn responses_render_as_string_or_hex() {
        let s = postcard::to_allocvec("Good bye Matthieu").unwrap();
        assert_eq!(render_response(&s), "Good bye Matthieu");
        // Two strings are not one string: shown as hex.
        let two = postcard::to_allocvec(&("a", "b")).unwrap();
        assert_eq!(render_response(&two), "01610162");
        assert_eq!(render_response(&[0xff, 0xff]), "ffff");
    }
}
