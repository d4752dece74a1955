//! The ring protocol under loom: `ring.rs`, compiled a second time on
//! loom's atomics, driven by the same sequences the transport runs
//! (`conn.rs`), with eventfds modelled by a counter under a mutex and a
//! condition variable.
//!
//! Run with `cargo test -p courier-shm --features loom --release loom`.
//! Loom explores the interleavings of the producer and consumer threads
//! (bounded preemptions) and the values each `Relaxed`/`Acquire` load may
//! return under the C++ memory model:
//!
//! * a lost wake-up leaves a thread parked forever, which loom reports as
//!   a deadlock;
//! * a missing `Release`/`Acquire` lets the consumer read stale bytes (the
//!   data area is made of `Relaxed` atomic bytes), which the content checks
//!   catch;
//! * a wrong index arithmetic shows up as a [`RingError`] or wrong bytes.
//!
//! Each of these mutations of `ring.rs` makes a test fail (checked by hand
//! when the model was written): dropping the fence of an announcement or of
//! a publication, or the consumer's re-check before parking (deadlocks);
//! a `Relaxed` store/load of `head` (wrong bytes).
//!
//! What is not covered: spinning (it only delays parking), the peer's death
//! (seen on the socket, outside the ring), and loom does not explore *load
//! buffering*, so the `Release`/`Acquire` on `tail` — which keeps the
//! consumer's copies out of a range before the producer overwrites it — is
//! not checked by the model (it is the textbook pairing, mirrored from
//! `head`).
//!
//! The preemption bound is 4 (about ten seconds in release mode);
//! `LOOM_MAX_PREEMPTIONS=5` explores more (about half a minute).

#![allow(dead_code, unreachable_pub)]

/// The atomics `ring.rs` is compiled against here.
#[allow(unused_imports)]
mod sync {
    pub(crate) mod atomic {
        pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicU8, Ordering};
    }
    pub(crate) use loom::sync::Arc;
}

// The same file as `crate::ring`, on purpose: this copy sees `self::sync`.
#[allow(clippy::duplicate_mod)]
#[path = "ring.rs"]
mod ring;

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use loom::sync::{Arc, Condvar, Mutex};
    use loom::thread;

    use super::ring::heap::{self, HeapMem};
    use super::ring::{Consumer, Producer, RingError};

    /// An eventfd: a counter, `signal` adds one, `wait` blocks until it is
    /// non-zero and resets it, `drain` resets it without blocking.
    #[derive(Default)]
    struct EventFd {
        count: Mutex<u64>,
        cv: Condvar,
    }

    impl EventFd {
        fn signal(&self) {
            *self.count.lock().unwrap() += 1;
            self.cv.notify_one();
        }

        fn drain(&self) {
            *self.count.lock().unwrap() = 0;
        }

        fn wait(&self) {
            let mut count = self.count.lock().unwrap();
            while *count == 0 {
                count = self.cv.wait(count).unwrap();
            }
            *count = 0;
        }
    }

    /// The eventfds of one ring: the consumer waits on `data`, the producer
    /// on `room`.
    #[derive(Default)]
    struct Wakers {
        data: EventFd,
        room: EventFd,
    }

    /// `ShmSender::write_all` + `wait_for_room` (spin 0) + final publish.
    fn send(p: &mut Producer<HeapMem>, w: &Wakers, mut src: &[u8]) -> Result<(), &'static str> {
        while !src.is_empty() {
            let n = p.write(src).map_err(|_| "ring error")?;
            src = &src[n..];
            if n > 0 {
                continue;
            }
            if p.publish() {
                w.data.signal();
            }
            // wait_for_room
            loop {
                if p.consumer_gone() {
                    return Err("consumer gone");
                }
                if p.refresh().map_err(|_| "ring error")? > 0 {
                    break;
                }
                w.room.drain();
                if !p.prepare_wait_room().map_err(|_| "ring error")? {
                    continue;
                }
                w.room.wait();
                p.end_wait_room();
            }
        }
        if p.publish() {
            w.data.signal();
        }
        Ok(())
    }

    /// `ShmReceiver::recv_inner` reduced to bytes: reads `want` bytes (or
    /// until the ring is closed and drained), releasing as it goes, parking
    /// like `wait_for_data` (spin 0).
    fn recv(c: &mut Consumer<HeapMem>, w: &Wakers, want: usize) -> Result<Vec<u8>, RingError> {
        let mut got = BytesMut::new();
        loop {
            while got.len() < want && c.available()? > 0 {
                c.read_append(want - got.len(), &mut got);
            }
            if c.release() {
                w.room.signal();
            }
            if got.len() == want || c.closed_and_drained()? {
                return Ok(got.to_vec());
            }
            // wait_for_data
            loop {
                w.data.drain();
                if !c.prepare_park()? {
                    break;
                }
                w.data.wait();
                c.end_park();
                if c.refresh()? > 0 || c.closed() {
                    break;
                }
            }
        }
    }

    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut builder = loom::model::Builder::new();
        if builder.preemption_bound.is_none() {
            builder.preemption_bound = Some(4);
        }
        builder.check(f);
    }

    /// A message larger than the ring: wrap-around, chunks, the producer
    /// waiting for room and the consumer for data, then the close.
    #[test]
    fn loom_chunked_message_through_a_small_ring_then_close() {
        model(|| {
            let (mut p, mut c, _) = heap::ring(4);
            let w = Arc::new(Wakers::default());
            let w2 = w.clone();
            let producer = thread::spawn(move || {
                send(&mut p, &w2, &[1, 2, 3, 4, 5, 6, 7]).unwrap();
                if p.close() {
                    w2.data.signal();
                }
            });
            let got = recv(&mut c, &w, 7).unwrap();
            assert_eq!(got, [1, 2, 3, 4, 5, 6, 7]);
            assert!(
                recv(&mut c, &w, 1).unwrap().is_empty(),
                "closed and drained"
            );
            producer.join().unwrap();
        });
    }

    /// Two messages, the consumer reading them one by one: a publication
    /// racing with the consumer's decision to park is never lost.
    #[test]
    fn loom_ping_pong_never_loses_a_wake_up() {
        model(|| {
            // Two rings: a -> b and b -> a.
            let (mut pa, mut cb, _) = heap::ring(4);
            let (mut pb, mut ca, _) = heap::ring(4);
            let wa = Arc::new(Wakers::default());
            let wb = Arc::new(Wakers::default());
            let (wa2, wb2) = (wa.clone(), wb.clone());
            let echo = thread::spawn(move || {
                for _ in 0..2 {
                    let m = recv(&mut cb, &wa2, 1).unwrap();
                    send(&mut pb, &wb2, &m).unwrap();
                }
            });
            for i in 0..2u8 {
                send(&mut pa, &wa, &[i + 10]).unwrap();
                assert_eq!(recv(&mut ca, &wb, 1).unwrap(), [i + 10]);
            }
            echo.join().unwrap();
        });
    }

    /// A producer waiting for room is woken when the consumer goes away,
    /// and fails instead of waiting forever.
    #[test]
    fn loom_consumer_gone_wakes_a_waiting_producer() {
        model(|| {
            let (mut p, mut c, _) = heap::ring(4);
            let w = Arc::new(Wakers::default());
            let w2 = w.clone();
            let producer = thread::spawn(move || send(&mut p, &w2, &[0; 6]));
            if c.mark_gone() {
                w.room.signal();
            }
            assert_eq!(producer.join().unwrap(), Err("consumer gone"));
        });
    }

    /// Orderly close racing with a parking consumer: the consumer always
    /// ends, with every byte.
    #[test]
    fn loom_close_wakes_a_parking_consumer() {
        model(|| {
            let (mut p, mut c, _) = heap::ring(4);
            let w = Arc::new(Wakers::default());
            let w2 = w.clone();
            let producer = thread::spawn(move || {
                send(&mut p, &w2, &[9]).unwrap();
                if p.close() {
                    w2.data.signal();
                }
            });
            assert_eq!(recv(&mut c, &w, 8).unwrap(), [9]);
            producer.join().unwrap();
        });
    }
}
