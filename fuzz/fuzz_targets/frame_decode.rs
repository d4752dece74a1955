//! The engine's frame decoder on arbitrary bytes: `frame::split` either
//! refuses them with a `FrameError` or returns a header that encodes back to
//! the same 24 bytes, and the payload that follows them. A header that says
//! an extension block follows has it decoded too: refused with an
//! `ExtensionError`, or split into extensions and a payload that is a tail
//! of the bytes, with the deadline capped.

#![no_main]

use courier::frame::{self, Extensions, Header, HEADER_LEN, MAX_BUDGET};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let message = bytes::Bytes::copy_from_slice(data);
    let decoded = Header::decode(data);
    match frame::split(&message) {
        Ok((header, payload)) => {
            assert_eq!(decoded.ok(), Some(header));
            assert_eq!(&header.encode()[..], &data[..HEADER_LEN]);
            assert_eq!(&payload[..], &data[HEADER_LEN..]);
            if header.has_extensions() {
                match Extensions::decode(&payload) {
                    Ok((ext, rest)) => {
                        assert!(rest.len() <= payload.len());
                        assert_eq!(&payload[payload.len() - rest.len()..], &rest[..]);
                        assert!(ext.deadline.is_none_or(|d| d <= MAX_BUDGET));
                    }
                    Err(e) => assert!(!e.to_string().is_empty()),
                }
            }
        }
        Err(e) => {
            assert!(decoded.is_err());
            // Every refusal says what it refused.
            assert!(!e.to_string().is_empty());
        }
    }
});
