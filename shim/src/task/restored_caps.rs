//! After CRIU restored a container: no process of it may hold a capability its spec does not
//! grant. CRIU sets capabilities from the images, so an edited (yet validly signed) checkpoint
//! could otherwise hand a process more than the caller allowed; this is the last gate.

use podcr_sandbox_controller::restore::policy::{cap_mask, cap_name, cap_names};

use super::{container::Container, lifecycle::read_spec};
use crate::runc_error::{Error, Result};

/// Refuses a restored container any of whose processes holds a capability (effective,
/// permitted or bounding) that its spec does not grant.
pub(super) async fn check(c: &Container) -> Result<()> {
    let spec = read_spec(&c.bundle).await?;
    let caps = &spec["process"]["capabilities"];
    let granted: Vec<String> = ["bounding", "permitted", "effective", "ambient"]
        .iter()
        .filter_map(|k| caps[*k].as_array())
        .flatten()
        .filter_map(|v| v.as_str().map(cap_name))
        .collect();
    let allowed = cap_mask(&granted);
    for pid in c.runc.ps(&c.id).await? {
        // A process that exited meanwhile holds nothing.
        let Ok(status) = tokio::fs::read_to_string(format!("/proc/{pid}/status")).await else { continue };
        if let Some((field, extra)) = excess_caps(&status, allowed) {
            return Err(Error::failed_precondition(format!(
                "restored process {pid} of container {} holds {:?} ({field}), which its spec does not grant; the container was killed",
                c.id,
                cap_names(extra)
            )));
        }
    }
    Ok(())
}

/// The first of a `/proc/<pid>/status`'s capability sets (effective, permitted, bounding) that
/// holds a capability outside `allowed`, with the excess; an unreadable field counts as all set.
fn excess_caps(status: &str, allowed: u64) -> Option<(&'static str, u64)> {
    ["CapEff", "CapPrm", "CapBnd"].into_iter().find_map(|field| {
        let held = status
            .lines()
            .find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(':')))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(u64::MAX);
        let extra = held & !allowed;
        (extra != 0).then_some((field, extra))
    })
}

#[cfg(test)]
mod tests {
    use super::excess_caps;

    #[test]
    fn restored_capabilities_beyond_the_spec_are_found() {
        let status = "Name:\tcounter\nCapInh:\t0000000000000000\nCapPrm:\t00000000a80425fb\nCapEff:\t00000000a80425fb\nCapBnd:\t00000000a80425fb\nCapAmb:\t0000000000000000\n";
        assert_eq!(excess_caps(status, 0xa80425fb), None);
        let admin = status.replace("CapEff:\t00000000a80425fb", "CapEff:\t00000000a82425fb");
        assert_eq!(excess_caps(&admin, 0xa80425fb), Some(("CapEff", 1 << 21)));
        let bounding = status.replace("CapBnd:\t00000000a80425fb", "CapBnd:\t000001ffffffffff");
        assert_eq!(excess_caps(&bounding, 0xa80425fb).map(|(f, _)| f), Some("CapBnd"));
        assert!(excess_caps("Name:\tx\n", 0xa80425fb).is_some(), "unreadable sets are not trusted");
    }
}
