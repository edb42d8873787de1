//! Which MQTT topics a receiver may read and write: the one policy behind
//! both the embedded broker's front end ([`crate::mqtt_front_end`]) and the
//! ACL file written for Mosquitto ([`crate::mosquitto`]).
//!
//! A receiver may read only its own controller-to-receiver topics
//! (schedule, acks, settings, commands, clock replies), its own live topic
//! and the live topic of the zone it is registered in; it may write only its
//! own status, plays and clock-request topics. Exact topic names only: no
//! wildcard filter is ever granted to a receiver. The controller may read
//! and write every Loa topic.

use loa_protocol::live::{
    clock_reply_topic, clock_request_topic, receiver_live_topic, zone_live_topic,
};
use loa_protocol::topics::ReceiverTopic;

/// The topics receiver `id` in zone `zone` may subscribe to.
pub fn receiver_reads(id: &str, zone: Option<&str>) -> Vec<String> {
    let mut topics: Vec<String> = [
        ReceiverTopic::Schedule,
        ReceiverTopic::Acks,
        ReceiverTopic::Settings,
        ReceiverTopic::Commands,
    ]
    .iter()
    .map(|kind| kind.for_receiver(id))
    .collect();
    topics.push(clock_reply_topic(id));
    topics.push(receiver_live_topic(id));
    if let Some(zone) = zone {
        topics.push(zone_live_topic(zone));
    }
    topics
}

/// The topics receiver `id` may publish on (its last will included).
pub fn receiver_writes(id: &str) -> Vec<String> {
    vec![
        ReceiverTopic::Status.for_receiver(id),
        ReceiverTopic::Plays.for_receiver(id),
        clock_request_topic(id),
    ]
}

/// Whether receiver `id` may publish on `topic`.
pub fn may_publish(id: &str, topic: &str) -> bool {
    receiver_writes(id).iter().any(|t| t == topic)
}

/// Whether receiver `id` (in `zone`, if known) may subscribe to `filter`.
pub fn may_subscribe(id: &str, zone: Option<&str>, filter: &str) -> bool {
    receiver_reads(id, zone).iter().any(|t| t == filter)
}

/// Whether `filter` is some zone's live topic (the one read permission that
/// depends on the receiver's registration, looked up when asked for).
pub fn is_zone_live_topic(filter: &str) -> bool {
    zone_live_topic("")
        .strip_suffix('/')
        .and_then(|prefix| filter.strip_prefix(prefix))
        .and_then(|rest| rest.strip_prefix('/'))
        .is_some_and(loa_protocol::is_valid_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receiver_reads_its_own_topics_and_its_zone_only() {
        assert!(may_subscribe(
            "loa-1",
            Some("z1"),
            "loa/v1/receivers/loa-1/schedule"
        ));
        assert!(may_subscribe(
            "loa-1",
            Some("z1"),
            "loa/v1/receivers/loa-1/clock-reply"
        ));
        assert!(may_subscribe("loa-1", Some("z1"), &zone_live_topic("z1")));
        assert!(may_subscribe("loa-1", None, &receiver_live_topic("loa-1")));
        assert!(!may_subscribe(
            "loa-1",
            Some("z1"),
            "loa/v1/receivers/loa-2/schedule"
        ));
        assert!(!may_subscribe("loa-1", Some("z1"), &zone_live_topic("z2")));
        assert!(!may_subscribe("loa-1", None, &zone_live_topic("z1")));
        for wildcard in [
            "#",
            "loa/v1/#",
            "loa/v1/receivers/+/schedule",
            "loa/v1/receivers/loa-1/#",
        ] {
            assert!(!may_subscribe("loa-1", Some("z1"), wildcard), "{wildcard}");
        }
        // Its own write-only topics are not readable either.
        assert!(!may_subscribe(
            "loa-1",
            Some("z1"),
            "loa/v1/receivers/loa-1/status"
        ));
    }

    #[test]
    fn a_receiver_writes_only_its_own_status_plays_and_clock_requests() {
        assert!(may_publish("loa-1", "loa/v1/receivers/loa-1/status"));
        assert!(may_publish("loa-1", "loa/v1/receivers/loa-1/plays"));
        assert!(may_publish("loa-1", &clock_request_topic("loa-1")));
        assert!(!may_publish("loa-1", "loa/v1/receivers/loa-2/status"));
        assert!(!may_publish("loa-1", "loa/v1/receivers/loa-1/schedule"));
        assert!(!may_publish("loa-1", &zone_live_topic("z1")));
        assert!(!may_publish("loa-1", "loa/v1/receivers/loa-1/statuses"));
    }

    #[test]
    fn zone_live_topics_are_recognised() {
        assert!(is_zone_live_topic(&zone_live_topic("thon-3")));
        assert!(!is_zone_live_topic(&zone_live_topic("a/b")));
        assert!(!is_zone_live_topic(&zone_live_topic("+")));
        assert!(!is_zone_live_topic("loa/v1/receivers/x/schedule"));
    }
}
