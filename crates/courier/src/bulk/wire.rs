//! The bytes of bulk frames: the access a `BulkPull`, `BulkPush` or
//! `BulkGrant` carries, and the ranges a grant answers with
//! (`docs/wire-format.md`, "Bulk frames").

use courier_transport::PeerRange;

/// Bytes of the access at the start of a bulk frame's payload: region id
/// (u64), key (u128), offset (u64), length (u64), little-endian.
pub(crate) const ACCESS_LEN: usize = 40;

/// Grant byte: the grantee will read the range.
pub(crate) const GRANT_READ: u8 = 1;
/// Grant byte: the grantee will write the range.
pub(crate) const GRANT_WRITE: u8 = 2;

/// One access to a region, as a bulk frame carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Access {
    pub(crate) id: u64,
    pub(crate) key: u128,
    pub(crate) offset: u64,
    pub(crate) len: u64,
}

impl Access {
    pub(crate) fn encode(&self) -> [u8; ACCESS_LEN] {
        let mut b = [0u8; ACCESS_LEN];
        b[0..8].copy_from_slice(&self.id.to_le_bytes());
        b[8..24].copy_from_slice(&self.key.to_le_bytes());
        b[24..32].copy_from_slice(&self.offset.to_le_bytes());
        b[32..40].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    pub(crate) fn decode(payload: &[u8]) -> Option<Self> {
        let b = payload.get(..ACCESS_LEN)?;
        let u64_at = |i: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(x)
        };
        let mut key = [0u8; 16];
        key.copy_from_slice(&b[8..24]);
        Some(Self {
            id: u64_at(0),
            key: u128::from_le_bytes(key),
            offset: u64_at(24),
            len: u64_at(32),
        })
    }

    /// The part `at..at + len` of this access.
    pub(crate) fn part(&self, at: usize, len: usize) -> Self {
        Self {
            offset: self.offset + at as u64,
            len: len as u64,
            ..*self
        }
    }
}

/// Appends a grant's answer: a u32 count, then (u64 address, u64 length)
/// each.
pub(crate) fn encode_ranges(ranges: &[PeerRange], out: &mut Vec<u8>) {
    out.extend_from_slice(&(ranges.len() as u32).to_le_bytes());
    for r in ranges {
        out.extend_from_slice(&r.addr.to_le_bytes());
        out.extend_from_slice(&(r.len as u64).to_le_bytes());
    }
}

/// Parses a grant's ranges (see [`encode_ranges`]). An empty list is valid
/// (no direct access); otherwise the lengths must add up to `len`.
pub(crate) fn parse_ranges(payload: &[u8], len: u64) -> Option<Vec<PeerRange>> {
    let count = u32::from_le_bytes(payload.get(..4)?.try_into().ok()?) as usize;
    let body = payload.get(4..)?;
    if body.len() != count.checked_mul(16)? {
        return None;
    }
    let mut ranges = Vec::with_capacity(count);
    let mut total = 0u64;
    for piece in body.chunks_exact(16) {
        let addr = u64::from_le_bytes(piece[..8].try_into().ok()?);
        let n = u64::from_le_bytes(piece[8..].try_into().ok()?);
        total = total.checked_add(n)?;
        ranges.push(PeerRange {
            addr,
            len: usize::try_from(n).ok()?,
        });
    }
    (count == 0 || total == len).then_some(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_ranges_round_trip_and_must_add_up() {
        let ranges = [
            PeerRange { addr: 10, len: 4 },
            PeerRange { addr: 20, len: 6 },
        ];
        let mut p = Vec::new();
        encode_ranges(&ranges, &mut p);
        assert_eq!(parse_ranges(&p, 10), Some(ranges.to_vec()));
        assert_eq!(parse_ranges(&p, 11), None);
        assert_eq!(parse_ranges(&p[..20], 10), None);
        assert_eq!(parse_ranges(&0u32.to_le_bytes(), 10), Some(vec![]));
    }

    #[test]
    fn an_access_is_40_bytes_and_round_trips() {
        let a = Access {
            id: 1,
            key: u128::MAX - 5,
            offset: 7,
            len: 9,
        };
        let b = a.encode();
        assert_eq!(b.len(), ACCESS_LEN);
        assert_eq!(Access::decode(&b), Some(a));
        assert_eq!(Access::decode(&b[..39]), None);
        assert_eq!(
            a.part(2, 3),
            Access {
                offset: 9,
                len: 3,
                ..a
            }
        );
    }
}
