//! The engine's frame decoder on arbitrary bytes: `frame::split` either
//! refuses them with a `FrameError` or returns a header that encodes back to
//! the same 24 bytes, and the payload that follows them.

#![no_main]

use courier::frame::{self, Header, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let message = bytes::Bytes::copy_from_slice(data);
    let decoded = Header::decode(data);
    match frame::split(&message) {
        Ok((header, payload)) => {
            assert_eq!(decoded.ok(), Some(header));
            assert_eq!(&header.encode()[..], &data[..HEADER_LEN]);
            assert_eq!(&payload[..], &data[HEADER_LEN..]);
        }
        Err(e) => {
            assert!(decoded.is_err());
            // Every refusal says what it refused.
            assert!(!e.to_string().is_empty());
        }
    }
});
