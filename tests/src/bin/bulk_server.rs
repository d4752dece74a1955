//! `bulk_server <PROTOCOL>`: a Courier server for the bulk process tests
//! (`tests/tests/bulk_process.rs`), killed by the test mid-transfer.
//!
//! It registers
//!
//! * `stuck_region` (`()` → `Bulk`): answers the handle of an 8 MiB
//!   read-only region whose memory, on the first read, prints `SERVING` on
//!   stdout and then never returns (so a pull from it is in flight for as
//!   long as the process lives);
//! * `pull_loop` (`Bulk` → never): pulls the caller's region again and
//!   again, printing `PULLED` after the first pull;
//!
//! and prints `ADDRESS <address>`. It serves until killed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use courier::{Bulk, BulkBuffer, BulkMemory, BulkMode, Engine, Handle};

/// Memory whose first read announces itself and blocks for ever.
struct Stuck;

impl BulkMemory for Stuck {
    fn len(&self) -> usize {
        8 << 20
    }
    fn read_with(&self, _offset: usize, _len: usize, _f: &mut dyn FnMut(&[u8])) {
        println!("SERVING");
        loop {
            std::thread::park();
        }
    }
    fn write_with(&self, _offset: usize, _len: usize, _f: &mut dyn FnMut(&mut [u8])) {}
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Some(protocol) = std::env::args().nth(1) else {
        eprintln!("usage: bulk_server <PROTOCOL>");
        std::process::exit(2);
    };
    let engine = Engine::new(&protocol).await.unwrap();
    let stuck = engine.expose([Stuck], BulkMode::ReadOnly).unwrap();
    engine
        .register("stuck_region", move |h: Handle, (): ()| {
            let stuck = stuck.clone();
            async move { h.respond(&stuck).await }
        })
        .unwrap();
    let e = engine.clone();
    engine
        .register("pull_loop", move |h: Handle, remote: Bulk| {
            let e = e.clone();
            async move {
                let local = e.expose([BulkBuffer::new(remote.len())], BulkMode::WriteOnly)?;
                let mut first = true;
                loop {
                    h.pull(&remote, &local).await?;
                    if first {
                        println!("PULLED");
                        first = false;
                    }
                }
                #[allow(unreachable_code)]
                h.respond(&()).await
            }
        })
        .unwrap();
    println!("ADDRESS {}", engine.address());
    engine.wait_for_finalize().await;
}
