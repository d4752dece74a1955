//! The receiving half of the byte-stream transports (`StreamReceiver`, used
//! by tcp, unix and each quic connection's stream) on arbitrary bytes: it
//! returns messages, then either a clean end of stream or an error naming
//! the peer; never a panic, never a message over the maximum, and never
//! more messages than the stream could hold.

#![no_main]

use courier_transport::stream::StreamReceiver;
use courier_transport::{Address, MessageReceiver};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let peer: Address = "tcp://fuzz:1".parse().unwrap_or_else(|e| panic!("{e}"));
    let io = std::io::Cursor::new(data.to_vec());
    let mut rx = StreamReceiver::new(io, peer, MAX);
    rt.block_on(async {
        let mut messages = 0usize;
        loop {
            match rx.recv().await {
                Ok(Some(m)) => {
                    assert!(m.len() <= MAX);
                    messages += 1;
                    // Each message costs at least its 4-byte length prefix.
                    assert!(4 + 4 * messages <= data.len());
                }
                Ok(None) => break,
                Err(e) => {
                    assert!(
                        e.to_string().contains("fuzz") || e.to_string().contains("bytes"),
                        "{e}"
                    );
                    break;
                }
            }
        }
    });
});
