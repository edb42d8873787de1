//! The controller's clock, as receivers see it: Unix microseconds from the
//! system clock, and the answer to their NTP-style clock requests.
//!
//! A receiver publishes `ClockRequest{seq, t1}` on
//! `loa/v1/receivers/{id}/clock`; the live link's event loop (see
//! [`crate::bus`]) stamps `t2` as soon as it has the message, and [`answer`]
//! stamps `t3` just before queueing `ClockReply{seq, t1, t2, t3}` on
//! `loa/v1/receivers/{id}/clock-reply` (QoS 0). The receiver, stamping `t4`
//! on arrival, estimates its offset `((t2 − t1) + (t3 − t4)) / 2` and
//! filters the estimates itself.

use std::time::{SystemTime, UNIX_EPOCH};

use loa_protocol::live::{ClockReply, ClockRequest, clock_reply_topic};
use loa_protocol::topics::PREFIX;
use rumqttc::{AsyncClient, QoS};

/// Largest clock request accepted (a real one is about 40 bytes).
const MAX_REQUEST_BYTES: usize = 256;

/// The controller clock: system time in Unix microseconds.
pub fn now_us() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

/// The receiver id of a clock request topic
/// (`loa/v1/receivers/{id}/clock`), if it is one with a valid id.
pub fn receiver_of_clock_topic(topic: &str) -> Option<&str> {
    let id = topic
        .strip_prefix(PREFIX)?
        .strip_prefix("/receivers/")?
        .strip_suffix("/clock")?;
    loa_protocol::is_valid_id(id).then_some(id)
}

/// The reply topic and the parsed request for `payload` received on
/// `topic`, or `None` (logged at debug) for anything that is not a
/// well-formed clock request.
pub fn parse_request(topic: &str, payload: &[u8]) -> Option<(String, ClockRequest)> {
    let Some(receiver) = receiver_of_clock_topic(topic) else {
        tracing::debug!(topic, "ignoring message on a non-clock topic");
        return None;
    };
    if payload.len() > MAX_REQUEST_BYTES {
        tracing::debug!(
            receiver,
            len = payload.len(),
            "ignoring oversize clock request"
        );
        return None;
    }
    match serde_json::from_slice::<ClockRequest>(payload) {
        Ok(request) => Some((clock_reply_topic(receiver), request)),
        Err(error) => {
            tracing::debug!(receiver, %error, "ignoring malformed clock request");
            None
        }
    }
}

/// Answers a clock request received at `t2_us` (see the module docs). Never
/// waits: if the reply cannot be queued the receiver simply asks again.
pub fn answer(client: &AsyncClient, publish: &rumqttc::Publish, t2_us: i64) {
    let Some((topic, request)) = parse_request(&publish.topic, &publish.payload) else {
        return;
    };
    let mut reply = ClockReply {
        seq: request.seq,
        t1_us: request.t1_us,
        t2_us,
        t3_us: 0,
    };
    reply.t3_us = now_us();
    let payload = serde_json::to_vec(&reply).expect("clock replies serialise");
    if client
        .try_publish(topic, QoS::AtMostOnce, false, payload)
        .is_err()
    {
        tracing::debug!("clock reply dropped: live link queue full or closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_topics_are_recognised() {
        assert_eq!(
            receiver_of_clock_topic("loa/v1/receivers/loa-1/clock"),
            Some("loa-1")
        );
        for bad in [
            "loa/v1/receivers/loa-1/clock-reply",
            "loa/v1/receivers/+/clock",
            "loa/v1/receivers/a/b/clock",
            "loa/v1/receivers//clock",
            "loa/v1/live/zones/x",
        ] {
            assert_eq!(receiver_of_clock_topic(bad), None, "{bad}");
        }
    }

    #[test]
    fn requests_are_parsed_and_bad_ones_ignored() {
        let (topic, req) =
            parse_request("loa/v1/receivers/loa-1/clock", br#"{"seq":7,"t1_us":123}"#).unwrap();
        assert_eq!(topic, "loa/v1/receivers/loa-1/clock-reply");
        assert_eq!(req, ClockRequest { seq: 7, t1_us: 123 });
        assert!(parse_request("loa/v1/receivers/loa-1/clock", b"{nope").is_none());
        let huge = vec![b' '; MAX_REQUEST_BYTES + 1];
        assert!(parse_request("loa/v1/receivers/loa-1/clock", &huge).is_none());
    }

    #[test]
    fn the_clock_is_unix_microseconds() {
        let now = now_us();
        // 2020-01-01 < now < 2100-01-01
        assert!(now > 1_577_836_800_000_000 && now < 4_102_444_800_000_000);
    }
}
