//! The three broadcast priority levels of Thông tư 39/2020/TT-BTTTT.

use serde::{Deserialize, Serialize};

/// How urgent a play is. Ordered: `Normal < Priority < Emergency`; a higher
/// level pre-empts a lower one.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Everyday programmes: bulletins, music, relays.
    #[default]
    Normal,
    /// Important notices that must not wait behind normal programmes.
    Priority,
    /// Disaster and emergency announcements.
    Emergency,
}

impl Priority {
    /// The wire name (`normal`, `priority`, `emergency`).
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Normal => "normal",
            Priority::Priority => "priority",
            Priority::Emergency => "emergency",
        }
    }
}

impl std::str::FromStr for Priority {
    type Err = UnknownPriority;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "normal" => Ok(Priority::Normal),
            "priority" => Ok(Priority::Priority),
            "emergency" => Ok(Priority::Emergency),
            other => Err(UnknownPriority(other.to_string())),
        }
    }
}

/// A priority name that is not one of `normal`, `priority`, `emergency`.
#[derive(Debug, thiserror::Error)]
#[error("unknown priority {0:?}: expected normal, priority or emergency")]
pub struct UnknownPriority(pub String);
