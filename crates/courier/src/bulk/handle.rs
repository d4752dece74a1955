//! [`Bulk`], a handle on a range of an exposed region.

use std::fmt;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Weak};

use serde::{Deserialize, Serialize};

use super::region::{BulkMode, Region};
use super::table::BulkTable;
use super::wire::Access;
use crate::error::{Error, Result};

/// What travels in a handle: the region's id and key, its mode, and the
/// range of it the handle covers.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Descriptor {
    id: u64,
    key: u128,
    mode: BulkMode,
    offset: u64,
    len: u64,
}

/// Withdraws a region when the last local handle on it is dropped.
struct Registration {
    table: Weak<BulkTable>,
    region: Arc<Region>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(table) = self.table.upgrade() {
            table.withdraw(self.region.id);
        }
    }
}

/// A handle on a range of an exposed memory region (Margo's `hg_bulk_t`,
/// Thallium's `bulk`).
///
/// [`Engine::expose`](crate::Engine::expose) returns a *local* handle on the
/// whole region: it keeps the region exposed while it (or a clone, or a
/// [`Bulk::slice`] of it) lives. Serialized — inside RPC arguments — a
/// handle carries only the region's id, key, mode and range; deserialized,
/// it is a *remote* handle, which a transfer uses to name the peer's region.
/// Its `Debug` output never shows the key.
///
/// A handle carries its range: a transfer moves the bytes of the handles
/// it is given, so the part of a region to move is chosen by slicing
/// (`remote.slice(a..b)?`, `local.slice(c..)?`).
#[derive(Clone)]
pub struct Bulk {
    desc: Descriptor,
    local: Option<Arc<Registration>>,
}

impl fmt::Debug for Bulk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bulk")
            .field("region", &self.desc.id)
            .field("mode", &self.desc.mode)
            .field("offset", &self.desc.offset)
            .field("len", &self.desc.len)
            .field("local", &self.local.is_some())
            .finish()
    }
}

impl Serialize for Bulk {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.desc.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Bulk {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Ok(Self {
            desc: Descriptor::deserialize(d)?,
            local: None,
        })
    }
}

impl Bulk {
    /// A local handle on all of `region`, exposed in `table`.
    pub(crate) fn exposed(table: &Arc<BulkTable>, region: Arc<Region>) -> Self {
        Self {
            desc: Descriptor {
                id: region.id,
                key: region.key,
                mode: region.mode,
                offset: 0,
                len: region.len as u64,
            },
            local: Some(Arc::new(Registration {
                table: Arc::downgrade(table),
                region,
            })),
        }
    }

    /// Bytes the handle covers.
    pub fn len(&self) -> usize {
        usize::try_from(self.desc.len).unwrap_or(usize::MAX)
    }

    /// Whether it covers no byte.
    pub fn is_empty(&self) -> bool {
        self.desc.len == 0
    }

    /// The region's mode.
    pub fn mode(&self) -> BulkMode {
        self.desc.mode
    }

    /// Whether this is a region of this process (from
    /// [`Engine::expose`](crate::Engine::expose)), rather than a handle
    /// received from a peer.
    pub fn is_local(&self) -> bool {
        self.local.is_some()
    }

    /// The part `range` of this handle (positions relative to the handle),
    /// as a handle of its own: `bulk.slice(4..)`, `bulk.slice(..1024)`,
    /// `bulk.slice(a..b)`. A local slice keeps the region exposed too.
    ///
    /// ```
    /// # use courier::{BulkBuffer, BulkMode, Engine};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// # let engine = Engine::new("mem").await?;
    /// let bulk = engine.expose([BulkBuffer::new(100)], BulkMode::ReadOnly)?;
    /// assert_eq!(bulk.slice(10..)?.len(), 90);
    /// assert_eq!(bulk.slice(10..)?.slice(..5)?.len(), 5);
    /// assert!(bulk.slice(90..101).is_err());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::BulkInvalid`] if the range is not inside the handle's.
    pub fn slice(&self, range: impl RangeBounds<usize>) -> Result<Self> {
        let len = u128::from(self.desc.len);
        // In u128, so that no bound overflows.
        let start = match range.start_bound() {
            Bound::Included(&s) => s as u128,
            Bound::Excluded(&s) => s as u128 + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e as u128 + 1,
            Bound::Excluded(&e) => e as u128,
            Bound::Unbounded => len,
        };
        if start > end {
            return Err(Error::BulkInvalid(format!(
                "cannot slice bytes {start}..{end} of a handle: the range is reversed"
            )));
        }
        if end > len {
            return Err(Error::BulkInvalid(format!(
                "bytes {start}..{end} are past the end of the handle ({len} bytes)"
            )));
        }
        // Both are within the handle's length, a u64.
        Ok(Self {
            desc: Descriptor {
                offset: self.desc.offset + start as u64,
                len: (end - start) as u64,
                ..self.desc
            },
            local: self.local.clone(),
        })
    }

    /// The sub-range `offset..offset + len` of this handle (Thallium's
    /// `select`); the same as `slice(offset..offset + len)`.
    ///
    /// # Errors
    /// [`Error::BulkInvalid`] if the range is not inside the handle's.
    pub fn select(&self, offset: usize, len: usize) -> Result<Self> {
        match offset.checked_add(len) {
            Some(end) => self.slice(offset..end),
            None => Err(Error::BulkInvalid(format!(
                "bytes {offset}+{len} are past the end of the handle ({} bytes)",
                self.desc.len
            ))),
        }
    }

    /// The handle's serialized form (postcard), for bindings that send it
    /// inside their own payloads.
    ///
    /// # Errors
    /// [`Error::BulkInvalid`] if encoding fails (it does not in practice).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        postcard::to_allocvec(&self.desc)
            .map_err(|e| Error::BulkInvalid(format!("cannot encode a bulk handle: {e}")))
    }

    /// A remote handle from [`Bulk::to_bytes`]'s form.
    ///
    /// # Errors
    /// [`Error::BulkInvalid`] for bytes that are not a handle.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let desc = postcard::from_bytes(bytes)
            .map_err(|e| Error::BulkInvalid(format!("not a bulk handle: {e}")))?;
        Ok(Self { desc, local: None })
    }

    /// The access to the range this handle covers.
    pub(crate) fn access(&self) -> Access {
        Access {
            id: self.desc.id,
            key: self.desc.key,
            offset: self.desc.offset,
            len: self.desc.len,
        }
    }

    /// The region and the start of the range in it, for a local handle.
    pub(crate) fn local_range(&self) -> Option<(Arc<Region>, usize)> {
        let r = self.local.as_ref()?;
        // A local handle's range is inside its region, whose length is a
        // usize.
        Some((r.region.clone(), self.desc.offset as usize))
    }
}
