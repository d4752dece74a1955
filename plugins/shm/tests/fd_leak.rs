//! Nothing leaks: descriptors and mappings are all gone once the
//! connections are dropped. Alone in its test binary, so no other test
//! opens descriptors meanwhile.

#![cfg(target_os = "linux")] // the shm transport is Linux-only
#![allow(clippy::unwrap_used, clippy::expect_used)]

use courier_shm::ShmTransport;
use courier_transport::{Connection, Listener, MessageReceiver, MessageSender, Transport};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn mapped_segments() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains("memfd:courier-shm"))
        .count()
}

#[tokio::test]
async fn fifty_connections_leave_no_descriptor_and_no_mapping() {
    let t = ShmTransport::new(1 << 20).with_ring_size(1 << 16).unwrap();
    let mut listener = t.listen(&"shm://".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().clone();
    let before = open_fds();
    assert_eq!(mapped_segments(), 0);
    let mut open = Vec::new();
    for i in 0..50u8 {
        let (c, s) = tokio::join!(t.connect(&addr), listener.accept());
        let (c, s) = (c.unwrap(), s.unwrap());
        let (mut tx, crx) = c.split();
        let (stx, mut rx) = s.split();
        tx.send(&[&[i; 100]]).await.unwrap();
        assert_eq!(rx.recv().await.unwrap().unwrap()[..], [i; 100]);
        open.push((tx, crx, stx, rx));
    }
    // Both ends of 50 connections are mapped (100 mappings) while open.
    assert_eq!(mapped_segments(), 100);
    assert!(open_fds() > before);
    // Drop some connections half by half, the rest whole.
    for (i, (tx, crx, stx, rx)) in open.into_iter().enumerate() {
        if i % 2 == 0 {
            drop((tx, stx));
            drop((crx, rx));
        } else {
            drop((tx, crx, stx, rx));
        }
    }
    assert_eq!(open_fds(), before, "descriptors leaked");
    assert_eq!(mapped_segments(), 0, "mappings leaked");
    let no_shm_files = std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().contains("courier"))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(no_shm_files, 0, "files in /dev/shm");
}
