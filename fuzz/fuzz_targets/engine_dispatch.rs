//! The engine's request dispatch fed raw messages: a server engine (over the
//! unix transport, in this process, so the fuzzer sees its coverage) gets a
//! connection that says the preamble and Hello, then the fuzzer's messages,
//! then a Ping. Checked: no panic; the connection either answers the final
//! Ping (the engine read everything and is still serving) or is closed by
//! the server (it refused something); no stuck task (the whole exchange has
//! a deadline, after which this target panics).
//!
//! A request may announce arguments by the bulk path (an overflow entry):
//! the server pulls them from this connection, which never answers, so
//! such a request waits until the connection closes; the final Ping is
//! answered meanwhile.
//!
//! Input layout: a sequence of messages, each a u16 little-endian length
//! then that many bytes (a frame: 24-byte header and payload). The server
//! has `echo` (answers its payload), `typed` (postcard `String` in and out),
//! `fail` (returns an error), `silent` (finishes without responding) and
//! `oneway` (registered one-way).
//!
//! The engine is built once per process; each input gets a new connection.

#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use courier::frame::{Header, Kind};
use courier::transport::framing::PREAMBLE;
use courier::{Engine, Handle, RpcOptions};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;

const PING_SEQ: u64 = u64::MAX;
const DEADLINE: Duration = Duration::from_secs(10);

struct Server {
    rt: Runtime,
    path: String,
    _engine: Engine,
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("runtime: {e}"));
        let path = std::env::temp_dir()
            .join(format!("courier-fuzz-{}.sock", std::process::id()))
            .display()
            .to_string();
        let _ = std::fs::remove_file(&path);
        let engine = rt.block_on(async {
            let e = Engine::builder(&format!("unix://{path}"))
                // Arguments by the bulk path (an overflow entry) up to 4 MiB:
                // the server reserves what an entry announces, and libFuzzer
                // counts a reservation over its malloc limit as a crash.
                .config_json(
                    r#"{"progress_spin_us": 0, "max_message_size": 1048576,
                        "max_payload_bytes": 4194304}"#,
                )
                .build()
                .await
                .unwrap_or_else(|e| panic!("engine: {e}"));
            e.register_raw("echo", RpcOptions::default(), |h: Handle, p| async move {
                h.respond_raw(&p).await
            })
            .unwrap_or_else(|e| panic!("{e}"));
            e.register("typed", |h: Handle, s: String| async move {
                h.respond(&s).await
            })
            .unwrap_or_else(|e| panic!("{e}"));
            e.register_raw("fail", RpcOptions::default(), |_h: Handle, _p| async move {
                Err::<(), _>("refused on purpose")
            })
            .unwrap_or_else(|e| panic!("{e}"));
            e.register_raw(
                "silent",
                RpcOptions::default(),
                |_h: Handle, _p| async move {},
            )
            .unwrap_or_else(|e| panic!("{e}"));
            e.register_raw(
                "oneway",
                RpcOptions::default().disable_response(),
                |_h: Handle, _p| async move {},
            )
            .unwrap_or_else(|e| panic!("{e}"));
            e
        });
        Server {
            rt,
            path,
            _engine: engine,
        }
    })
}

fn framed(out: &mut Vec<u8>, message: &[u8]) {
    out.extend_from_slice(&(message.len() as u32).to_le_bytes());
    out.extend_from_slice(message);
}

fuzz_target!(|data: &[u8]| {
    let server = server();
    let mut bytes = PREAMBLE.to_vec();
    framed(&mut bytes, &Header::new(Kind::Hello).encode());
    let mut rest = data;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        framed(&mut bytes, &rest[2..2 + len]);
        rest = &rest[2 + len..];
    }
    let mut ping = Header::new(Kind::Ping);
    ping.seq = PING_SEQ;
    framed(&mut bytes, &ping.encode());

    server.rt.block_on(async {
        let exchange = async {
            let mut s = tokio::net::UnixStream::connect(&server.path)
                .await
                .unwrap_or_else(|e| panic!("connect: {e}"));
            // The server may close before reading everything.
            let _ = s.write_all(&bytes).await;
            let mut preamble = [0u8; 4];
            if s.read_exact(&mut preamble).await.is_err() {
                return; // closed by the server: fine
            }
            assert_eq!(preamble, PREAMBLE);
            loop {
                let mut len = [0u8; 4];
                if s.read_exact(&mut len).await.is_err() {
                    return;
                }
                let mut msg = vec![0u8; u32::from_le_bytes(len) as usize];
                if s.read_exact(&mut msg).await.is_err() {
                    return;
                }
                // The server only ever sends valid frames.
                let h = Header::decode(&msg).unwrap_or_else(|e| panic!("server sent {e}"));
                if h.kind == Kind::Pong && h.seq == PING_SEQ {
                    return;
                }
            }
        };
        if tokio::time::timeout(DEADLINE, exchange).await.is_err() {
            panic!("stuck: the server neither answered the final Ping nor closed");
        }
    });
});
