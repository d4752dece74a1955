//! A batch of whole messages, sent together.
//!
//! When several messages wait to go out on one connection (32 responses
//! finished while the previous write was under way), handing them to the
//! medium one at a time costs a system call, a ring publish or a wake-up
//! each. A [`Batch`] holds them back to back in one buffer, with their
//! boundaries, so that a sender can hand them over at once
//! ([`MessageSender::transmit_batch`](crate::MessageSender::transmit_batch)):
//! one vectored write on a byte stream, one publish and one wake-up on a
//! ring. Each message still arrives as itself, in order.
//!
//! A batch is a buffer to be reused: [`Batch::clear`] keeps its capacity.
//!
//! ```
//! use courier_transport::Batch;
//!
//! let mut batch = Batch::new();
//! batch.push(&[b"hello, ", b"world"]);
//! batch.push(&[]);
//! batch.push(&[b"!"]);
//! let messages: Vec<&[u8]> = batch.iter().collect();
//! assert_eq!(messages, [&b"hello, world"[..], b"", b"!"]);
//! assert_eq!((batch.len(), batch.bytes()), (3, 13));
//! batch.clear();
//! assert!(batch.is_empty());
//! ```

use std::fmt;

/// Whole messages back to back in one buffer, with their boundaries.
#[derive(Default, Clone, PartialEq, Eq)]
pub struct Batch {
    data: Vec<u8>,
    /// The end of each message in `data`.
    ends: Vec<usize>,
}

impl Batch {
    /// An empty batch.
    pub const fn new() -> Self {
        Self {
            data: Vec::new(),
            ends: Vec::new(),
        }
    }

    /// Appends one message made of `parts`, concatenated.
    pub fn push(&mut self, parts: &[&[u8]]) {
        for part in parts {
            self.data.extend_from_slice(part);
        }
        self.ends.push(self.data.len());
    }

    /// The number of messages.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether the batch holds no message.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The total size of the messages, in bytes.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// The messages, in order.
    pub fn iter(&self) -> Messages<'_> {
        Messages {
            batch: self,
            next: 0,
            start: 0,
        }
    }

    /// The size of the largest message (0 for an empty batch).
    pub fn largest(&self) -> usize {
        self.iter().map(<[u8]>::len).max().unwrap_or(0)
    }

    /// Removes every message, keeping the memory for the next batch.
    pub fn clear(&mut self) {
        self.data.clear();
        self.ends.clear();
    }
}

impl fmt::Debug for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("messages", &self.len())
            .field("bytes", &self.bytes())
            .finish()
    }
}

impl<'a> IntoIterator for &'a Batch {
    type Item = &'a [u8];
    type IntoIter = Messages<'a>;

    fn into_iter(self) -> Messages<'a> {
        self.iter()
    }
}

/// The messages of a [`Batch`], in order.
#[derive(Debug, Clone)]
pub struct Messages<'a> {
    batch: &'a Batch,
    next: usize,
    start: usize,
}

impl<'a> Iterator for Messages<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let end = *self.batch.ends.get(self.next)?;
        let message = &self.batch.data[self.start..end];
        self.next += 1;
        self.start = end;
        Some(message)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.batch.ends.len() - self.next;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Messages<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_boundaries_and_order_and_reuses_its_memory() {
        let mut b = Batch::new();
        assert_eq!(b.largest(), 0);
        b.push(&[b"ab", b"c"]);
        b.push(&[b"", b""]);
        b.push(&[b"defg"]);
        assert_eq!(b.iter().len(), 3);
        assert_eq!(b.iter().collect::<Vec<_>>(), [&b"abc"[..], b"", b"defg"]);
        assert_eq!(b.largest(), 4);
        let capacity = b.data.capacity();
        b.clear();
        assert_eq!((b.len(), b.bytes(), b.iter().next()), (0, 0, None));
        assert_eq!(b.data.capacity(), capacity);
        b.push(&[b"x"]);
        assert_eq!((&b).into_iter().collect::<Vec<_>>(), [&b"x"[..]]);
    }
}
