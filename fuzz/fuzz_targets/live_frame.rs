//! Live audio frames from the broker: `LiveFrame::decode` and
//! `decode_verified` on arbitrary bytes must return a value or an error,
//! never panic; a frame that decodes must survive encode → decode intact,
//! and its encoding must be the input again (header and payload are
//! canonical, bar the reserved flags byte).
#![no_main]

use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;
use loa_protocol::live::{LiveFrame, SIGNATURE_BYTES};

fuzz_target!(|data: &[u8]| {
    let key = SigningKey::from_bytes(&[7; 32]);
    let public = key.verifying_key();
    // A receiver's path: arbitrary bytes never verify by chance.
    if let Ok(frame) = LiveFrame::decode_verified(data, &public) {
        panic!("random bytes passed signature verification: {frame:?}");
    }
    let Ok(frame) = LiveFrame::decode(data) else {
        return;
    };
    let encoded = frame.encode(&key);
    assert_eq!(LiveFrame::decode(&encoded).as_ref(), Ok(&frame));
    assert_eq!(
        LiveFrame::decode_verified(&encoded, &public).as_ref(),
        Ok(&frame)
    );
    assert_eq!(encoded.len(), data.len(), "re-encoding changed the length");
    let unsigned = data.len() - SIGNATURE_BYTES;
    let mut expected = data[..unsigned].to_vec();
    expected[7] = 0; // flags: reserved, ignored on decode, written as 0
    assert_eq!(
        &encoded[..unsigned],
        &expected[..],
        "header/payload not canonical"
    );
    assert!(frame.playout_us() >= frame.capture_us);
});
