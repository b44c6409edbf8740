//! Polling for a condition instead of sleeping for a guessed time.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};

/// How often conditions are re-checked: short enough to keep tests fast, long enough not to spin.
pub const POLL: Duration = Duration::from_millis(50);

/// Polls `check` until it returns `Ok(Some(v))` and returns `v`. `Ok(None)` means "not yet"; an `Err` is
/// also treated as "not yet" (a socket may not exist yet, a task may not be created yet), and the last
/// one is reported if `timeout` passes. `what` names the condition in that error.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match check() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() >= deadline {
            return Err(match last_err {
                Some(e) => e.context(format!("timed out after {timeout:?} waiting for {what}")),
                None => anyhow!("timed out after {timeout:?} waiting for {what}"),
            });
        }
        std::thread::sleep(POLL);
    }
}

/// `wait_for` for a plain boolean condition.
pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
    wait_for(what, timeout, || Ok(check()?.then_some(())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_value_once_ready() {
        let mut n = 0;
        let v = wait_for("n to reach 3", Duration::from_secs(5), || {
            n += 1;
            Ok((n >= 3).then_some(n))
        });
        assert_eq!(v.unwrap(), 3);
    }

    #[test]
    fn times_out_with_the_last_error() {
        let err = wait_for::<()>("never", Duration::from_millis(120), || anyhow::bail!("boom")).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("waiting for never") && msg.contains("boom"), "{msg}");
    }
}
