//! JSON messages between controller and receivers: every message type of
//! `loa_protocol` decoded from arbitrary bytes (through `loa_protocol::decode`,
//! the function both sides use) must give a value or an error, never panic;
//! what decodes must survive encode → decode unchanged. The same bytes are
//! also checked as a signed envelope (never valid by chance) and, as text,
//! as an MQTT topic for `parse_receiver_topic`.
#![no_main]

use std::collections::BTreeMap;
use std::fmt::Debug;

use chrono::{DateTime, Utc};
use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;
use loa_protocol::live::{ClockReply, ClockRequest};
use loa_protocol::signed::{Freshness, Verifier};
use loa_protocol::topics::parse_receiver_topic;
use loa_protocol::{
    PlayReport, ReceiverCommand, ReceiverSchedule, ReceiverSettings, ReceiverStatus, ReportAck,
    decode, encode,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(data: &[u8]) {
    if let Ok(message) = decode::<T>(data) {
        let again: T = decode(&encode(&message)).expect("an encoded message decodes");
        assert_eq!(again, message, "encode → decode changed the message");
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<ReceiverSchedule>(data);
    round_trip::<ReceiverStatus>(data);
    round_trip::<PlayReport>(data);
    round_trip::<ReportAck>(data);
    round_trip::<ClockRequest>(data);
    round_trip::<ClockReply>(data);
    round_trip::<ReceiverSettings>(data);
    round_trip::<ReceiverCommand>(data);

    let key = SigningKey::from_bytes(&[7; 32]).verifying_key();
    let mut verifier = Verifier::new(key, BTreeMap::new());
    let now: DateTime<Utc> = "2026-12-01T00:00:00Z".parse().expect("valid instant");
    let topic = "loa/v1/receivers/loa-1/acks";
    if let Ok(opened) = verifier.verify(topic, data, now, Freshness::WithinSecs(600)) {
        panic!("random bytes passed signature verification: {opened:?}");
    }

    if let Ok(topic) = std::str::from_utf8(data)
        && let Some((id, kind)) = parse_receiver_topic(topic)
    {
        assert!(loa_protocol::is_valid_id(id), "invalid id {id:?} accepted");
        assert_eq!(kind.for_receiver(id), topic, "topic does not round-trip");
    }
});
