//! Bulk transfers that need a particular transport: 256 MiB over shm's
//! direct path and over tcp's messages, proof that shm takes its direct
//! path, and its fallback to messages when the kernel refuses a copy. The
//! scenarios for every transport are in `courier_testkit::bulk` (run by
//! `conformance.rs`); a peer killed mid-transfer is in `bulk_process.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use courier::{BulkBuffer, BulkMode};
use courier_conformance::{guard, pattern};
#[cfg(target_os = "linux")]
use courier_testkit::bulk::messages_only;
use courier_testkit::bulk::{pair, remote};

// The scenarios every transport must pass are in `courier_testkit::bulk`,
// run by `conformance.rs` on every protocol (`tcp::bulk::pull_23_bytes`,
// ...). Here: the ones that need a particular transport.

/// 256 MiB pulled and pushed over shm (the direct path), once.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shm_256_mib() {
    let (server, client, address) = pair("shm").await;
    pull_then_push(&server, &client, &address, 256 << 20, 11).await;
}

/// Exposes `len` bytes of a pattern on `server`, pulls them into a buffer
/// of `client` and checks them, changes every byte there, pushes them back
/// and checks the server's region.
#[cfg(target_os = "linux")]
async fn pull_then_push(
    server: &courier::Engine,
    client: &courier::Engine,
    address: &courier::Address,
    len: usize,
    seed: u8,
) {
    let region = BulkBuffer::from(pattern(len, seed));
    let exposed = server
        .expose([region.clone()], BulkMode::ReadWrite)
        .unwrap();
    let local = BulkBuffer::new(len);
    let mine = client.expose([local.clone()], BulkMode::ReadWrite).unwrap();
    guard(
        &format!("pull of {len} bytes"),
        client.pull(address, &remote(&exposed), &mine),
    )
    .await
    .unwrap();
    assert!(local.read(|l| region.read(|r| l == r)));
    local.write(|b| b.iter_mut().for_each(|x| *x = x.wrapping_add(1)));
    guard(
        &format!("push of {len} bytes"),
        client.push(address, &remote(&exposed), &mine),
    )
    .await
    .unwrap();
    assert!(local.read(|l| region.read(|r| l == r)));
}

/// 256 MiB through messages (tcp), once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_256_mib_pull() {
    let (server, client, address) = pair("tcp").await;
    let len = 256 << 20;
    let region = BulkBuffer::from(pattern(len, 12));
    let exposed = server.expose([region.clone()], BulkMode::ReadOnly).unwrap();
    let local = BulkBuffer::new(len);
    let mine = client.expose([local.clone()], BulkMode::WriteOnly).unwrap();
    guard(
        "256 MiB pull",
        client.pull(&address, &remote(&exposed), &mine),
    )
    .await
    .unwrap();
    assert!(local.read(|l| region.read(|r| l == r)));
}

/// A buffer that counts the engine's reads and writes through it: direct
/// copies bypass them.
#[cfg(target_os = "linux")]
struct Counted {
    buffer: BulkBuffer,
    calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

#[cfg(target_os = "linux")]
impl courier::BulkMemory for Counted {
    fn len(&self) -> usize {
        self.buffer.len()
    }
    fn read_with(&self, offset: usize, len: usize, f: &mut dyn FnMut(&[u8])) {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.buffer.read_with(offset, len, f);
    }
    fn write_with(&self, offset: usize, len: usize, f: &mut dyn FnMut(&mut [u8])) {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.buffer.write_with(offset, len, f);
    }
    fn direct_addr(&self) -> Option<u64> {
        self.buffer.direct_addr()
    }
}

/// Over shm a 1 MiB pull and push never go through the exposing side's
/// reads and writes (direct copies); with `direct: false` (the engine's,
/// or one transfer's own options), or over tcp, they do.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shm_uses_direct_copies() {
    for (proto, direct, transfer_direct, expect_direct) in [
        ("shm", true, true, true),
        ("shm", false, true, false),
        ("shm", true, false, false),
        ("tcp", true, true, false),
    ] {
        // Options for the transfers alone, when they differ from the engine's.
        let own = (!transfer_direct).then(|| courier::BulkOptions {
            direct: false,
            ..courier::BulkOptions::default()
        });
        let (server, client, address) = pair(proto).await;
        if !direct {
            messages_only(&client);
        }
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let data = pattern(1 << 20, 21);
        let counted = Counted {
            buffer: BulkBuffer::from(data.clone()),
            calls: calls.clone(),
        };
        let check = counted.buffer.clone();
        let exposed = server.expose([counted], BulkMode::ReadWrite).unwrap();
        let local = BulkBuffer::new(1 << 20);
        let mine = client.expose([local.clone()], BulkMode::ReadWrite).unwrap();
        let theirs = remote(&exposed);
        let mut pull = client.pull(&address, &theirs, &mine);
        let mut push = client.push(&address, &theirs, &mine);
        if let Some(o) = own {
            (pull, push) = (pull.options(o), push.options(o));
        }
        guard("pull", pull).await.unwrap();
        assert!(local.to_vec() == data);
        local.write(|b| b.fill(3));
        guard("push", push).await.unwrap();
        assert!(check.read(|b| b.iter().all(|&x| x == 3)));
        let n = calls.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            n == 0,
            expect_direct,
            "{proto} direct={direct}/{transfer_direct}: {n} accesses through the memory"
        );
        assert!(check.len() == 1 << 20);
    }
}

/// Memory that announces an address where nothing is mapped: direct copies
/// from it fail in the kernel (`EFAULT`), as they would under a ptrace
/// policy that refuses them.
#[cfg(target_os = "linux")]
struct BadAddress(BulkBuffer);

#[cfg(target_os = "linux")]
impl courier::BulkMemory for BadAddress {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn read_with(&self, offset: usize, len: usize, f: &mut dyn FnMut(&[u8])) {
        self.0.read_with(offset, len, f);
    }
    fn write_with(&self, offset: usize, len: usize, f: &mut dyn FnMut(&mut [u8])) {
        self.0.write_with(offset, len, f);
    }
    fn direct_addr(&self) -> Option<u64> {
        Some(4096)
    }
}

/// Over shm, a direct copy the kernel refuses makes the transfer (and the
/// connection's later ones) use messages: the bytes still arrive intact.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shm_falls_back_to_messages_when_direct_copies_fail() {
    let (server, client, address) = pair("shm").await;
    let data = pattern(1 << 20, 31);
    let exposed = server
        .expose(
            [BadAddress(BulkBuffer::from(data.clone()))],
            BulkMode::ReadWrite,
        )
        .unwrap();
    for round in 0..2 {
        let local = BulkBuffer::new(1 << 20);
        let mine = client.expose([local.clone()], BulkMode::ReadWrite).unwrap();
        guard("pull", client.pull(&address, &remote(&exposed), &mine))
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(local.to_vec() == data, "round {round}");
    }
}

/// The JSON configuration's `bulk` object sets the engine's options; with
/// grants of 64 KiB and two in flight, a 1 MiB pull and push over shm
/// take sixteen grants each, pipelined, and move every byte.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shm_bulk_options_from_json_and_pipelined_grants() {
    let server = courier_testkit::server("shm").await;
    let client = courier::Engine::builder("shm")
        .client()
        .config_json(r#"{"bulk": {"direct_chunk": 65536, "window": 2, "timeout_ms": 60000}}"#)
        .build()
        .await
        .unwrap();
    let options = client.bulk_options();
    assert_eq!((options.direct_chunk, options.window), (65536, 2));
    // `bulk.timeout_ms`, the key of earlier versions, is `timeouts.bulk_ms`.
    assert_eq!(client.config()["timeouts"]["bulk_ms"], 60000);
    let address = courier_testkit::lookup(&client, &server).await;
    pull_then_push(&server, &client, &address, (1 << 20) + 17, 41).await;
}
