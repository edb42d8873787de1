//! MQTT topic names. Every topic Loa uses is built here and nowhere else.
//!
//! | topic | direction | QoS / retain | payload |
//! |---|---|---|---|
//! | `loa/v1/receivers/{id}/schedule` | controller → receiver | 1, retained | [`ReceiverSchedule`](crate::ReceiverSchedule) |
//! | `loa/v1/receivers/{id}/status` | receiver → controller (+ last will) | 1, retained | [`ReceiverStatus`](crate::ReceiverStatus) |
//! | `loa/v1/receivers/{id}/plays` | receiver → controller | 1 | [`PlayReport`](crate::PlayReport) |
//! | `loa/v1/receivers/{id}/acks` | controller → receiver | 1 | [`ReportAck`](crate::ReportAck) |
//! | `loa/v1/receivers/{id}/settings` | controller → receiver | 1, retained | [`ReceiverSettings`](crate::ReceiverSettings) |
//! | `loa/v1/receivers/{id}/commands` | controller → receiver | 1 | [`ReceiverCommand`](crate::ReceiverCommand) |
//!
//! Every controller → receiver payload travels inside a signed envelope
//! ([`Signed`](crate::signed::Signed)): the payloads above are its `payload`.

/// Root of every Loa topic; the version lets a future protocol live beside this one.
pub const PREFIX: &str = "loa/v1";

/// What a per-receiver topic carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiverTopic {
    Schedule,
    Status,
    Plays,
    Acks,
    /// Output settings set from the console (retained).
    Settings,
    /// One-off commands such as a test tone (not retained).
    Commands,
}

impl ReceiverTopic {
    fn leaf(self) -> &'static str {
        match self {
            ReceiverTopic::Schedule => "schedule",
            ReceiverTopic::Status => "status",
            ReceiverTopic::Plays => "plays",
            ReceiverTopic::Acks => "acks",
            ReceiverTopic::Settings => "settings",
            ReceiverTopic::Commands => "commands",
        }
    }

    /// The topic of this kind for one receiver.
    pub fn for_receiver(self, receiver_id: &str) -> String {
        format!("{PREFIX}/receivers/{receiver_id}/{}", self.leaf())
    }

    /// A subscription filter matching this kind for every receiver.
    pub fn for_all(self) -> String {
        format!("{PREFIX}/receivers/+/{}", self.leaf())
    }
}

/// Splits a per-receiver topic into the receiver id and the kind, or `None`
/// for anything that is not exactly one of Loa's receiver topics.
pub fn parse_receiver_topic(topic: &str) -> Option<(&str, ReceiverTopic)> {
    let rest = topic.strip_prefix(PREFIX)?.strip_prefix("/receivers/")?;
    let (id, leaf) = rest.split_once('/')?;
    if !crate::is_valid_id(id) {
        return None;
    }
    let kind = match leaf {
        "schedule" => ReceiverTopic::Schedule,
        "status" => ReceiverTopic::Status,
        "plays" => ReceiverTopic::Plays,
        "acks" => ReceiverTopic::Acks,
        "settings" => ReceiverTopic::Settings,
        "commands" => ReceiverTopic::Commands,
        _ => return None,
    };
    Some((id, kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip() {
        for kind in [
            ReceiverTopic::Schedule,
            ReceiverTopic::Status,
            ReceiverTopic::Plays,
            ReceiverTopic::Acks,
            ReceiverTopic::Settings,
            ReceiverTopic::Commands,
        ] {
            let t = kind.for_receiver("thon-1");
            assert_eq!(parse_receiver_topic(&t), Some(("thon-1", kind)));
        }
        assert_eq!(parse_receiver_topic("loa/v1/receivers/a/b/status"), None);
        assert_eq!(parse_receiver_topic("loa/v1/receivers/+/status"), None);
        assert_eq!(parse_receiver_topic("other/receivers/a/status"), None);
    }
}
