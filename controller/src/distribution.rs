//! Distribution: computes each receiver's play events over the horizon from
//! every schedule that touches it and publishes them retained over MQTT.
//! (Being written; the handle below is the contract the API uses.)

use std::sync::Arc;

/// Handle the API uses to say "schedules, receivers or programmes changed;
/// recompute and republish". Cloning is cheap (an `Arc`). Notifications
/// coalesce: many changes in a burst cause one recomputation.
#[derive(Clone, Default)]
pub struct Distributor {
    changed: Arc<tokio::sync::Notify>,
}

impl Distributor {
    /// Asks for a recomputation soon; returns at once.
    pub fn schedules_changed(&self) {
        self.changed.notify_one();
    }
}
