//! Bulk transfers over the protocol: PyMargo's bulk programs (pull 23
//! bytes, push at an offset, the non-blocking form), whole and partial
//! ranges at offsets from 0 B to 3 MiB, multi-segment regions, 0 B regions,
//! hostile handles (forged key, out of range, wrong mode, dropped region),
//! RPCs between the chunks of a 16 MiB transfer, timeouts, a region dropped
//! mid-transfer, and the blocking facade.
//!
//! Every transport must carry bulk transfers on its message path; one with
//! a direct-memory capability (shm) takes its fast path by default, and
//! the `*_messages` scenarios force the message path there too.

use courier::{Bulk, BulkBuffer, BulkMode, BulkOp, BulkOptions, Engine, Error, Handle};

use crate::{guard, pattern};

/// Transfer sizes of the range scenarios.
pub const SIZES: [usize; 5] = [0, 1, (64 << 10) + 3, 1 << 20, (3 << 20) + 17];

/// A handle as a peer receives it: through its serialized form.
pub fn remote(b: &Bulk) -> Bulk {
    Bulk::from_bytes(&b.to_bytes().unwrap()).unwrap()
}

/// A handle's fields as they travel (postcard encodes a struct as the tuple
/// of its fields): what a forger edits.
pub type Fields = (u64, u128, BulkMode, u64, u64);

/// `b` with its travelling fields edited by `edit`: a forged handle, as a
/// hostile peer would send it.
pub fn forge(b: &Bulk, edit: impl FnOnce(&mut Fields)) -> Bulk {
    let mut f: Fields = postcard_decode(&b.to_bytes().unwrap());
    edit(&mut f);
    Bulk::from_bytes(&postcard_encode(&f)).unwrap()
}

/// Decodes a handle's serialized form into its [`Fields`].
pub fn postcard_decode(bytes: &[u8]) -> Fields {
    postcard::from_bytes(bytes).unwrap()
}

/// Encodes [`Fields`] back into a handle's serialized form.
pub fn postcard_encode(f: &Fields) -> Vec<u8> {
    postcard::to_allocvec(f).unwrap()
}

/// A server, a client engine and the server's address from the client.
pub async fn pair(proto: &str) -> (Engine, Engine, courier::Address) {
    let server = crate::server(proto).await;
    let client = crate::client(proto).await;
    let address = crate::lookup(&client, &server).await;
    (server, client, address)
}

/// Makes `engine` move bulk data on the message path only (no direct
/// copies, even over a transport that offers them).
pub fn messages_only(engine: &Engine) {
    engine.set_bulk_options(BulkOptions {
        direct: false,
        ..BulkOptions::default()
    });
}

/// PyMargo's first bulk program: the client exposes 23 bytes read-only and
/// sends the handle; the server pulls them and answers what it got.
pub async fn pull_23_bytes(proto: &str) {
    let (server, client, address) = pair(proto).await;
    let engine = server.clone();
    server
        .register(
            "do_bulk_transfer",
            move |h: Handle, (bulk, len): (Bulk, usize)| {
                let engine = engine.clone();
                async move {
                    let local = BulkBuffer::new(len);
                    let mine = engine.expose([local.clone()], BulkMode::WriteOnly)?;
                    h.pull(&bulk.slice(..len)?, &mine).await?;
                    h.respond(&local.to_vec()).await
                }
            },
        )
        .unwrap();
    let data = b"This is some bulk data!".to_vec();
    assert_eq!(data.len(), 23);
    let bulk = client
        .expose([BulkBuffer::from(data.clone())], BulkMode::ReadOnly)
        .unwrap();
    let call = client.remote::<(Bulk, usize), Vec<u8>>("do_bulk_transfer");
    let got = guard("pull", call.on(&address).call(&(bulk, 23)))
        .await
        .unwrap();
    assert_eq!(got, data);
}

/// PyMargo's second: the server pushes into the client's write-only region
/// at an offset; the bytes around it are untouched.
pub async fn push_at_offset(proto: &str) {
    let (server, client, address) = pair(proto).await;
    let engine = server.clone();
    server
        .register("fill", move |h: Handle, (bulk, at): (Bulk, usize)| {
            let engine = engine.clone();
            async move {
                let text = BulkBuffer::from(&b"Matthieu"[..]);
                let mine = engine.expose([text], BulkMode::ReadOnly)?;
                h.push(&bulk.slice(at..)?, &mine).await?;
                h.respond(&()).await
            }
        })
        .unwrap();
    let buffer = BulkBuffer::from(vec![b'.'; 32]);
    let bulk = client
        .expose([buffer.clone()], BulkMode::WriteOnly)
        .unwrap();
    let call = client.remote::<(Bulk, usize), ()>("fill");
    guard("push", call.on(&address).call(&(bulk, 10)))
        .await
        .unwrap();
    assert_eq!(
        buffer.to_vec(),
        b"..........Matthieu..............".to_vec()
    );
}

/// The same two, non-blocking: `Transfer::start`, then `test` and `wait`.
pub async fn nonblocking_pull_and_push(proto: &str) {
    let (server, client, address) = pair(proto).await;
    let data = pattern(100_000, 7);
    let region = BulkBuffer::from(data.clone());
    let exposed = server
        .expose([region.clone()], BulkMode::ReadWrite)
        .unwrap();
    let theirs = remote(&exposed);
    let local = BulkBuffer::new(100_000);
    let mine = client.expose([local.clone()], BulkMode::ReadWrite).unwrap();

    let req = client
        .transfer(BulkOp::Pull, &address, &theirs, &mine)
        .start();
    guard("pull request", async {
        while !req.test() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    guard("pull wait", req.wait()).await.unwrap();
    assert_eq!(local.to_vec(), data);

    local.write(|b| b.fill(0xab));
    let (at_1000, first_5000) = (theirs.slice(1000..).unwrap(), mine.slice(..5000).unwrap());
    let req = client
        .transfer(BulkOp::Push, &address, &at_1000, &first_5000)
        .start();
    guard("push wait", req.wait()).await.unwrap();
    let mut want = data.clone();
    want[1000..6000].fill(0xab);
    assert!(region.to_vec() == want);
}

/// Pull and push of every size, at offsets on both sides, with and
/// without the direct path.
pub async fn ranges(proto: &str, direct: bool) {
    let (server, client, address) = pair(proto).await;
    if !direct {
        messages_only(&client);
    }
    for len in SIZES {
        let (roff, loff) = (len % 7 + 5, len % 5 + 3);
        let source = pattern(roff + len + 11, len as u8);
        let region = BulkBuffer::from(source.clone());
        let exposed = server
            .expose([region.clone()], BulkMode::ReadWrite)
            .unwrap();
        let theirs = remote(&exposed);

        let local = BulkBuffer::from(vec![0xee; loff + len + 9]);
        let mine = client.expose([local.clone()], BulkMode::ReadWrite).unwrap();
        let (their_part, my_part) = (
            theirs.slice(roff..roff + len).unwrap(),
            mine.slice(loff..loff + len).unwrap(),
        );
        guard("pull", client.pull(&address, &their_part, &my_part))
            .await
            .unwrap_or_else(|e| panic!("pull of {len} bytes: {e}"));
        let got = local.to_vec();
        assert!(got[..loff].iter().all(|&b| b == 0xee), "{len}: before");
        assert!(got[loff + len..].iter().all(|&b| b == 0xee), "{len}: after");
        assert!(
            got[loff..loff + len] == source[roff..roff + len],
            "{len}: pulled bytes"
        );

        let fresh = pattern(loff + len + 9, len as u8 ^ 0x5a);
        local.write(|b| b.copy_from_slice(&fresh));
        guard("push", client.push(&address, &their_part, &my_part))
            .await
            .unwrap_or_else(|e| panic!("push of {len} bytes: {e}"));
        let now = region.to_vec();
        assert!(
            now[..roff] == source[..roff],
            "{len}: push touched bytes before"
        );
        assert!(
            now[roff + len..] == source[roff + len..],
            "{len}: push touched bytes after"
        );
        assert!(
            now[roff..roff + len] == fresh[loff..loff + len],
            "{len}: pushed bytes"
        );
    }
}

/// [`ranges`] on the transport's default path (direct copies where offered).
pub async fn ranges_default(proto: &str) {
    ranges(proto, true).await;
}

/// [`ranges`] on the message path only.
pub async fn ranges_messages(proto: &str) {
    ranges(proto, false).await;
}

/// Regions of several segments (one of them empty) on both sides; a
/// transfer crossing every boundary, and one through a `select`ed handle.
pub async fn multi_segment(proto: &str) {
    let (server, client, address) = pair(proto).await;
    let segs = [pattern(5, 1), Vec::new(), pattern(70_000, 2), pattern(3, 3)];
    let all: Vec<u8> = segs.concat();
    let buffers: Vec<BulkBuffer> = segs.iter().map(|s| BulkBuffer::from(s.clone())).collect();
    let exposed = server.expose(buffers.clone(), BulkMode::ReadWrite).unwrap();
    assert_eq!(exposed.len(), all.len());
    let theirs = remote(&exposed);

    let halves = [BulkBuffer::new(30_000), BulkBuffer::new(all.len() - 30_000)];
    let mine = client.expose(halves.clone(), BulkMode::ReadWrite).unwrap();
    guard("pull all", client.pull(&address, &theirs, &mine))
        .await
        .unwrap();
    assert!([halves[0].to_vec(), halves[1].to_vec()].concat() == all);

    // A selection: bytes 4..70_006 of the region (crossing three
    // boundaries), pushed from local offset 6.
    let sel = theirs.select(4, 70_002).unwrap();
    assert_eq!(sel.len(), 70_002);
    let fresh = pattern(all.len(), 9);
    halves[0].write(|b| b.copy_from_slice(&fresh[..30_000]));
    halves[1].write(|b| b.copy_from_slice(&fresh[30_000..]));
    let from_6 = mine.slice(6..6 + 70_002).unwrap();
    guard("push selection", client.push(&address, &sel, &from_6))
        .await
        .unwrap();
    let now: Vec<u8> = buffers.iter().flat_map(BulkBuffer::to_vec).collect();
    assert!(now[..4] == all[..4]);
    assert!(now[4..70_006] == fresh[6..70_008]);
    assert!(now[70_006..] == all[70_006..]);
    assert!(sel.select(70_000, 3).is_err());
}

/// A 0-byte region: a 0-byte transfer works (and is checked by the peer),
/// one byte is refused locally.
pub async fn empty_region(proto: &str) {
    let (server, client, address) = pair(proto).await;
    let exposed = server
        .expose([BulkBuffer::new(0)], BulkMode::ReadOnly)
        .unwrap();
    assert!(exposed.is_empty());
    let theirs = remote(&exposed);
    let mine = client
        .expose([BulkBuffer::new(4)], BulkMode::WriteOnly)
        .unwrap();
    guard("pull 0", client.pull(&address, &theirs, &mine))
        .await
        .unwrap();
    // One byte of a 0-byte handle: refused locally.
    let err = theirs.slice(..1).unwrap_err();
    assert!(matches!(err, Error::BulkInvalid(_)), "{err:?}");
    // A 4-byte push into it: the destination is too short.
    let err = guard("push 4", client.push(&address, &theirs, &mine))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::BulkInvalid(_)), "{err:?}");
    // Even 0 bytes go through the peer's checks: a dropped region is refused.
    drop(exposed);
    let err = guard(
        "pull 0 of a dropped region",
        client.pull(&address, &theirs, &mine),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::BulkRefused { .. }), "{err:?}");
}

/// Asserts that `err` is [`Error::BulkRefused`] with `needle` in its reason.
pub fn assert_refused(err: &Error, needle: &str) {
    match err {
        Error::BulkRefused { reason, .. } => {
            assert!(reason.contains(needle), "expected {needle:?} in {reason:?}")
        }
        other => panic!("expected BulkRefused ({needle}), got {other:?}"),
    }
}

/// Hostile handles, at the exposing side: a forged key, a range past the
/// end, a push into a read-only region, a pull from a write-only one, a
/// dropped region. Each is refused with its reason; the connection and the
/// regions stay usable. Sizes both under and over the direct threshold.
pub async fn hostile_handles(proto: &str) {
    let (server, client, address) = pair(proto).await;
    crate::register_hello(&server);
    for len in [23usize, 200_000] {
        let ro_buf = BulkBuffer::from(pattern(len, 4));
        let ro = server.expose([ro_buf.clone()], BulkMode::ReadOnly).unwrap();
        let wo = server
            .expose([BulkBuffer::new(len)], BulkMode::WriteOnly)
            .unwrap();
        let local = BulkBuffer::new(2 * len);
        let all_mine = client.expose([local.clone()], BulkMode::ReadWrite).unwrap();
        let mine = all_mine.slice(..len).unwrap();

        let forged = forge(&ro, |f| f.1 ^= 1 << 77);
        let err = guard("forged key", client.pull(&address, &forged, &mine))
            .await
            .unwrap_err();
        assert_refused(&err, "key does not match");

        let longer = forge(&ro, |f| f.4 = 2 * len as u64);
        let past = longer.slice(len / 2..len / 2 + len).unwrap();
        let err = guard("past the end", client.pull(&address, &past, &mine))
            .await
            .unwrap_err();
        assert_refused(&err, "past the end");

        let err = guard(
            "push into read-only",
            client.push(&address, &remote(&ro), &mine),
        )
        .await
        .unwrap_err();
        assert_refused(&err, "push is not allowed");
        assert!(
            ro_buf.to_vec() == pattern(len, 4),
            "a refused push changed bytes"
        );

        // The handle claims read-write; the region's own mode decides.
        let lying = forge(&ro, |f| f.2 = BulkMode::ReadWrite);
        let err = guard(
            "push with a lying mode",
            client.push(&address, &lying, &mine),
        )
        .await
        .unwrap_err();
        assert_refused(&err, "push is not allowed");

        let err = guard(
            "pull from write-only",
            client.pull(&address, &remote(&wo), &mine),
        )
        .await
        .unwrap_err();
        assert_refused(&err, "pull is not allowed");

        let unknown = forge(&ro, |f| f.0 += 1000);
        let err = guard("unknown region", client.pull(&address, &unknown, &mine))
            .await
            .unwrap_err();
        assert_refused(&err, "no region");

        // Still usable after all that.
        guard("good pull", client.pull(&address, &remote(&ro), &mine))
            .await
            .unwrap();
        assert!(local.to_vec()[..len] == pattern(len, 4));

        let theirs = remote(&ro);
        drop(ro);
        let err = guard("dropped region", client.pull(&address, &theirs, &mine))
            .await
            .unwrap_err();
        assert_refused(&err, "no region");
        crate::assert_hello(&client, &address).await;
    }
}

/// Local mistakes are refused before anything is sent.
pub async fn local_checks(proto: &str) {
    let (server, client, address) = pair(proto).await;
    let theirs = remote(
        &server
            .expose([BulkBuffer::new(10)], BulkMode::ReadWrite)
            .unwrap(),
    );
    let ro = client
        .expose([BulkBuffer::new(10)], BulkMode::ReadOnly)
        .unwrap();
    let wo = client
        .expose([BulkBuffer::new(10)], BulkMode::WriteOnly)
        .unwrap();
    let (wo_tail, theirs_tail) = (wo.slice(5..).unwrap(), theirs.slice(1..).unwrap());
    let cases = [
        // Pull into read-only, push from write-only.
        client.pull(&address, &theirs, &ro).await,
        client.push(&address, &theirs, &wo).await,
        // A destination shorter than the source, on either side.
        client.pull(&address, &theirs, &wo_tail).await,
        client.push(&address, &theirs_tail, &ro).await,
        // A local handle that came from a peer.
        client.pull(&address, &theirs, &remote(&wo)).await,
        // A range past the end of a handle, or reversed.
        theirs.slice(5..11).map(|_| ()),
        #[allow(clippy::reversed_empty_ranges)]
        theirs.slice(7..3).map(|_| ()),
        theirs.select(usize::MAX, 2).map(|_| ()),
    ];
    for (i, r) in cases.into_iter().enumerate() {
        let err = r.unwrap_err();
        assert!(matches!(err, Error::BulkInvalid(_)), "case {i}: {err:?}");
    }
}

/// A 16 MiB pull with several RPCs made while it runs on the same
/// connection: everything completes and is intact.
pub async fn rpcs_during_a_large_transfer(proto: &str) {
    let (server, client, address) = pair(proto).await;
    messages_only(&client);
    crate::register_hello(&server);
    let data = pattern(16 << 20, 3);
    let exposed = server
        .expose([BulkBuffer::from(data.clone())], BulkMode::ReadOnly)
        .unwrap();
    let local = BulkBuffer::new(16 << 20);
    let mine = client.expose([local.clone()], BulkMode::WriteOnly).unwrap();
    let theirs = remote(&exposed);
    let req = client.pull(&address, &theirs, &mine).start();
    for _ in 0..5 {
        crate::assert_hello(&client, &address).await;
    }
    guard("large pull", req.wait()).await.unwrap();
    assert!(local.to_vec() == data);
}

/// A transfer over a timeout fails with `BulkTimeout`: the peer's region
/// is a memory that never answers a read.
pub async fn timeout(proto: &str) {
    let (server, client, address) = pair(proto).await;
    let exposed = server.expose([Stuck], BulkMode::ReadOnly).unwrap();
    let mine = client
        .expose([BulkBuffer::new(8)], BulkMode::WriteOnly)
        .unwrap();
    let theirs = remote(&exposed);
    let pull = client
        .pull(&address, &theirs, &mine)
        .timeout(std::time::Duration::from_millis(200));
    let err = guard("timeout", pull).await.unwrap_err();
    assert!(matches!(err, Error::BulkTimeout { .. }), "{err:?}");
    // Unblock the stuck read (its sender dropped), then end.
    STUCK_SENDERS.lock().unwrap().clear();
    drop(server);
}

/// Memory whose reads block its thread until the test ends (the serving
/// task is on a runtime worker: the other worker keeps the engine going).
struct Stuck;

impl courier::BulkMemory for Stuck {
    fn len(&self) -> usize {
        8
    }
    fn read_with(&self, _offset: usize, _len: usize, _f: &mut dyn FnMut(&[u8])) {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        STUCK_SENDERS.lock().unwrap().push(tx);
        let _ = rx.recv_timeout(crate::HANG_GUARD);
    }
    fn write_with(&self, _offset: usize, _len: usize, _f: &mut dyn FnMut(&mut [u8])) {}
}

/// The senders that keep the reads of the [`timeout`] scenario blocked:
/// clearing the list (which drops them) lets every blocked read return.
pub static STUCK_SENDERS: std::sync::Mutex<Vec<std::sync::mpsc::Sender<()>>> =
    std::sync::Mutex::new(Vec::new());

/// The two ends a [`Gate`] holds: it tells on the first, waits on the second.
pub(crate) type GateEnds = (std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>);

/// Memory whose first read tells the test and waits for its go-ahead.
pub(crate) struct Gate {
    pub(crate) bytes: BulkBuffer,
    pub(crate) first: std::sync::Mutex<Option<GateEnds>>,
}

impl courier::BulkMemory for Gate {
    fn len(&self) -> usize {
        self.bytes.len()
    }
    fn read_with(&self, offset: usize, len: usize, f: &mut dyn FnMut(&[u8])) {
        let first = self.first.lock().unwrap().take();
        if let Some((tell, go)) = first {
            tell.send(()).unwrap();
            // Waiting blocks this thread, an engine's runtime worker: on a
            // multi-thread runtime, hand its other tasks (the connection's
            // reader, its queued wake-ups) to another worker first, as any
            // memory that can block must.
            let wait = || go.recv_timeout(crate::HANG_GUARD).unwrap();
            match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
                Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
                _ => wait(),
            }
        }
        self.bytes.read_with(offset, len, f);
    }
    fn write_with(&self, offset: usize, len: usize, f: &mut dyn FnMut(&mut [u8])) {
        self.bytes.write_with(offset, len, f);
    }
}

/// The exposing side drops its region while a 16 MiB pull from it is in
/// flight (the first chunk is being read): the chunks asked for after that
/// are refused, and the pull ends with `BulkRefused`.
pub async fn region_dropped_mid_transfer(proto: &str) {
    let (server, client, address) = pair(proto).await;
    let (tell_tx, tell_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel();
    let gate = Gate {
        bytes: BulkBuffer::new(16 << 20),
        first: std::sync::Mutex::new(Some((tell_tx, go_rx))),
    };
    let exposed = server.expose([gate], BulkMode::ReadOnly).unwrap();
    let mine = client
        .expose([BulkBuffer::new(16 << 20)], BulkMode::WriteOnly)
        .unwrap();
    let theirs = remote(&exposed);
    let req = client.pull(&address, &theirs, &mine).start();
    guard(
        "first chunk read",
        tokio::task::spawn_blocking(move || tell_rx.recv_timeout(crate::HANG_GUARD)),
    )
    .await
    .unwrap()
    .unwrap();
    drop(exposed);
    go_tx.send(()).unwrap();
    let err = guard("pull", req.wait()).await.unwrap_err();
    assert_refused(&err, "no region");
}

/// Immutable `Bytes` as memory: exposed read-only only; pulled from and
/// pushed from (sent without a copy on the message path), alone and beside
/// a `BulkBuffer` segment, on the default path and on messages.
pub async fn bytes_regions(proto: &str) {
    let (server, client, address) = pair(proto).await;
    let data = courier::Bytes::from(pattern(3 << 20, 8));
    let err = server
        .expose([data.clone()], BulkMode::ReadWrite)
        .unwrap_err();
    assert!(matches!(err, Error::BulkInvalid(_)), "{err:?}");
    let tail = BulkBuffer::from(pattern(1000, 9));
    let exposed = server
        .expose(
            [
                std::sync::Arc::new(data.clone()) as std::sync::Arc<dyn courier::BulkMemory>,
                std::sync::Arc::new(tail.clone()),
            ],
            BulkMode::ReadOnly,
        )
        .unwrap();
    let want = [&data[..], &tail.to_vec()].concat();
    for direct in [true, false] {
        if !direct {
            messages_only(&client);
        }
        let local = BulkBuffer::new(want.len());
        let mine = client.expose([local.clone()], BulkMode::WriteOnly).unwrap();
        // From inside the Bytes (zero-copy pieces) and across into the buffer.
        guard("pull", client.pull(&address, &remote(&exposed), &mine))
            .await
            .unwrap();
        assert!(local.to_vec() == want, "direct={direct}");

        let target = BulkBuffer::new(want.len());
        let theirs = server
            .expose([target.clone()], BulkMode::WriteOnly)
            .unwrap();
        let source = client.expose([data.clone()], BulkMode::ReadOnly).unwrap();
        let at_5 = remote(&theirs).slice(5..).unwrap();
        guard("push", client.push(&address, &at_5, &source))
            .await
            .unwrap();
        assert!(
            target.read(|t| t[5..5 + data.len()] == data[..]),
            "direct={direct}"
        );
    }
}

/// The blocking facade: a pull and a push that block until done, between
/// two blocking engines (the server on its own progress thread).
pub fn blocking_transfer(proto: &'static str) {
    use courier::blocking;
    crate::guard_blocking("blocking transfer", move || {
        let server = blocking::Engine::builder(proto)
            .use_progress_thread(true)
            .build()
            .unwrap();
        let region = BulkBuffer::from(&b"This is some bulk data!"[..]);
        let exposed = server
            .expose([region.clone()], BulkMode::ReadWrite)
            .unwrap();
        let client = blocking::Engine::builder(proto).client().build().unwrap();
        let address = client.lookup(&server.address().to_string()).unwrap();
        let local = BulkBuffer::new(23);
        let mine = client.expose([local.clone()], BulkMode::ReadWrite).unwrap();
        client
            .transfer(BulkOp::Pull, &address, &remote(&exposed), &mine)
            .unwrap();
        assert_eq!(local.to_vec(), b"This is some bulk data!");
        local.write(|b| b[..4].copy_from_slice(b"THAT"));
        let (at_8, first_4) = (
            remote(&exposed).slice(8..).unwrap(),
            mine.slice(..4).unwrap(),
        );
        client
            .transfer(BulkOp::Push, &address, &at_8, &first_4)
            .unwrap();
        assert_eq!(region.to_vec(), b"This is THAT bulk data!");
    });
}
