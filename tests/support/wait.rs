//! Bounded polling: every wait in the tests has a deadline and says what it
//! was waiting for when it gives up.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// Polls `check` every 250 ms until it returns `Ok(Some(value))`. An `Err`
/// counts as "not yet" (a restarting controller refuses connections) and
/// is reported if the deadline passes.
pub async fn until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if Instant::now() > deadline {
            match last_error {
                Some(e) => {
                    bail!("timed out after {timeout:?} waiting for {what}; last error: {e:#}")
                }
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
