//! `podcr check`: a node preflight. Each check says pass, warn or fail with a reason; any failure
//! makes the command exit 1 after printing them all.

use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use crate::{
    containerd::Containerd,
    cri::Cri,
    output,
    version::{major_minor, tool_output},
};

#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Warn,
    Fail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub outcome: Outcome,
    pub detail: String,
}

fn check(name: &'static str, outcome: Outcome, detail: impl Into<String>) -> Check {
    Check { name, outcome, detail: detail.into() }
}

/// At least `min` (major, minor) in `version`.
fn at_least(name: &'static str, version: &str, min: (u32, u32)) -> Check {
    match major_minor(version) {
        Some(v) if v >= min => check(name, Outcome::Pass, version),
        Some(_) => check(name, Outcome::Fail, format!("{version}: podcr needs {}.{} or later", min.0, min.1)),
        None => check(name, Outcome::Warn, format!("cannot read the version {version:?}")),
    }
}

/// runc 1.3.3 or later, as the shim requires before it creates a container: 1.3.3 fixed
/// CVE-2025-31133, CVE-2025-52565 and CVE-2025-52881.
fn runc_check(version: &str) -> Check {
    let patch = |v: &str| -> Option<u32> {
        v.split('.')
            .nth(2)
            .map(|p| p.chars().take_while(char::is_ascii_digit).collect::<String>())
            .and_then(|p| p.parse().ok())
    };
    match (major_minor(version), patch(version).unwrap_or(0)) {
        (Some(mm), p) if (mm.0, mm.1, p) >= (1, 3, 3) => check("runc", Outcome::Pass, version),
        (Some(_), _) => check(
            "runc",
            Outcome::Fail,
            format!("{version}: podcr needs 1.3.3 or later (CVE-2025-31133, -52565, -52881); the shim refuses older"),
        ),
        (None, _) => check("runc", Outcome::Warn, format!("cannot read the version {version:?}")),
    }
}

/// The node's signing key and trusted keys per `[signing]`: without a key every checkpoint is
/// refused, without a trusted key every restore is.
fn signing_checks(cfg: &podcr_archive::signing_config::SigningConfig) -> Vec<Check> {
    use podcr_archive::signing::{Signer, TrustPolicy};
    let key = match Signer::from_config(cfg) {
        Ok(Some(s)) => check("signing key", Outcome::Pass, format!("{} ({})", cfg.key.display(), s.key_id())),
        Ok(None) => check(
            "signing key",
            Outcome::Warn,
            "none; checkpoints are written unsigned ([signing] allow_unsigned)".to_string(),
        ),
        Err(e) => check("signing key", Outcome::Fail, e.to_string()),
    };
    let trusted = match TrustPolicy::from_config(cfg) {
        Ok(p) if !p.is_empty() => {
            check("trusted keys", Outcome::Pass, format!("{} in {}", p.len(), cfg.trusted_dir.display()))
        }
        Ok(_) if cfg.allow_unsigned => check(
            "trusted keys",
            Outcome::Warn,
            format!("none in {}; only unsigned checkpoints restore", cfg.trusted_dir.display()),
        ),
        Ok(_) => check(
            "trusted keys",
            Outcome::Fail,
            format!("none in {}: no checkpoint can be restored (podcr key trust FILE.pub)", cfg.trusted_dir.display()),
        ),
        Err(e) => check("trusted keys", Outcome::Fail, e.to_string()),
    };
    vec![key, trusted]
}

/// The CRI's view of the handler: registered, and with the runtime type and sandboxer podcr needs.
fn handler_check(handler: &str, handlers: &[String], config: Option<&serde_json::Value>) -> Check {
    const NAME: &str = "cri handler";
    if !handlers.iter().any(|h| h == handler) {
        return check(
            NAME,
            Outcome::Fail,
            format!("the CRI has no runtime handler {handler:?} (install.sh adds it; restart containerd after)"),
        );
    }
    let Some(rt) = config.and_then(|c| c.pointer(&format!("/containerd/runtimes/{handler}"))) else {
        return check(
            NAME,
            Outcome::Warn,
            format!("{handler:?} is registered; its configuration is not in the CRI status"),
        );
    };
    let runtime_type = rt.get("runtimeType").and_then(|v| v.as_str()).unwrap_or_default();
    let sandboxer = rt.get("sandboxer").and_then(|v| v.as_str()).unwrap_or_default();
    if runtime_type != "io.containerd.podcr.v1" || sandboxer != "shim" {
        return check(
            NAME,
            Outcome::Fail,
            format!("{handler:?} has runtime_type {runtime_type:?} and sandboxer {sandboxer:?}; podcr needs 'io.containerd.podcr.v1' and 'shim'"),
        );
    }
    check(NAME, Outcome::Pass, format!("{handler:?}: runtime_type io.containerd.podcr.v1, sandboxer shim"))
}

/// Which cgroup driver the node's runc pods use, from the CRI's runc handler options: podcr
/// uses cgroupfs paths only, so a systemd node runs podcr pods outside its slices.
fn cgroup_check(config: Option<&serde_json::Value>) -> Check {
    const NAME: &str = "cgroups";
    let version = if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() { "v2" } else { "v1" };
    let systemd = config.and_then(|c| c.pointer("/containerd/runtimes")).and_then(|r| r.as_object()).is_some_and(|r| {
        r.values().any(|rt| rt.pointer("/options/SystemdCgroup").and_then(|v| v.as_bool()) == Some(true))
    });
    if systemd {
        return check(NAME, Outcome::Warn, format!("cgroup {version}; runc handlers use the systemd cgroup driver, which podcr does not support yet (its pods use cgroupfs paths)"));
    }
    check(NAME, Outcome::Pass, format!("cgroup {version}, cgroupfs driver"))
}

pub async fn run_checks(
    cd: Result<&Containerd, String>,
    cri: Option<&Cri>,
    handler: &str,
    runtime: &str,
    timeout: Duration,
) -> Vec<Check> {
    let mut all = Vec::new();
    let mut cri_config = None;
    match cd {
        Err(e) => all.push(check("containerd", Outcome::Fail, e)),
        Ok(cd) => {
            match cd.version().await {
                Ok((v, _)) => all.push(at_least("containerd", &v, (2, 1))),
                Err(e) => all.push(check("containerd", Outcome::Fail, crate::error::render(&e))),
            }
            match cri {
                None => all.push(check("cri handler", Outcome::Fail, "the CRI is not reachable")),
                Some(cri) => match cri.handlers_and_config().await {
                    Ok((handlers, config)) => {
                        all.push(handler_check(handler, &handlers, config.as_ref()));
                        cri_config = config;
                    }
                    Err(e) => all.push(check("cri handler", Outcome::Fail, crate::error::render(&e))),
                },
            }
            match cd.runtime_info(runtime).await {
                Ok(info) if info.features.is_some() => {
                    let v = info.version.unwrap_or_default().version;
                    all.push(check("shim", Outcome::Pass, format!("{} {v}, reports runc's features", info.name)))
                }
                Ok(info) => all.push(check("shim", Outcome::Warn, format!("{} answers but reports no runtime features (runc without `features`?)", info.name))),
                Err(e) => all.push(check("shim", Outcome::Fail, format!("containerd cannot run the shim's -info (is containerd-shim-podcr-v1 on containerd's PATH?): {e:#}"))),
            }
        }
    }
    match tool_output("runc", &["--version"], timeout).await {
        Ok((_, text)) => match crate::version::parse_version(&text) {
            Some(v) => all.push(runc_check(&v)),
            None => all.push(check("runc", Outcome::Fail, format!("no version in `runc --version`: {}", text.trim()))),
        },
        Err(e) => all.push(check("runc", Outcome::Fail, crate::error::render(&e))),
    }
    match tool_output("criu", &["--version"], timeout).await {
        Ok((_, text)) => match crate::version::parse_version(&text) {
            Some(v) => {
                let version = at_least("criu", &v, (4, 2));
                all.push(version.clone());
                if version.outcome == Outcome::Pass {
                    all.push(criu_check(timeout).await);
                }
            }
            None => all.push(check("criu", Outcome::Fail, format!("no version in `criu --version`: {}", text.trim()))),
        },
        Err(e) => {
            all.push(check("criu", Outcome::Fail, format!("{e:#}; checkpoint and restore need CRIU 4.2 or later")))
        }
    }
    all.push(cgroup_check(cri_config.as_ref()));
    let path = podcr_sandbox_controller::node_config::NodeConfig::path();
    match podcr_sandbox_controller::node_config::NodeConfig::load() {
        Ok(cfg) => {
            all.push(check("node config", Outcome::Pass, format!("{} (missing means defaults)", path.display())));
            all.extend(signing_checks(&cfg.signing));
        }
        Err(e) => all.push(check("node config", Outcome::Fail, e.to_string())),
    }
    all
}

/// `criu check`: what CRIU itself says this kernel can do.
async fn criu_check(timeout: Duration) -> Check {
    match tool_output("criu", &["check"], timeout).await {
        Ok((true, text)) => check("criu check", Outcome::Pass, text.lines().last().unwrap_or("ok").trim().to_string()),
        Ok((false, text)) => {
            let reason: Vec<&str> =
                text.lines().filter(|l| l.contains("Error") || l.contains("rror:")).take(3).collect();
            let reason =
                if reason.is_empty() { text.lines().last().unwrap_or_default().to_string() } else { reason.join("; ") };
            check("criu check", Outcome::Fail, reason.trim().to_string())
        }
        Err(e) => check("criu check", Outcome::Fail, crate::error::render(&e)),
    }
}

/// Prints the checks; returns how many failed.
pub fn print(checks: &[Check], format: output::Format) -> Result<usize> {
    if format == output::Format::Json {
        println!("{}", serde_json::to_string_pretty(checks)?);
    } else {
        let rows: Vec<Vec<String>> = checks
            .iter()
            .map(|c| {
                let outcome = match c.outcome {
                    Outcome::Pass => "ok",
                    Outcome::Warn => "WARN",
                    Outcome::Fail => "FAIL",
                };
                vec![c.name.to_string(), outcome.to_string(), c.detail.clone()]
            })
            .collect();
        print!("{}", output::table(&["CHECK", "RESULT", "DETAIL"], &rows));
    }
    Ok(checks.iter().filter(|c| c.outcome == Outcome::Fail).count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handler_needs_the_podcr_type_and_the_shim_sandboxer() {
        let cfg = serde_json::json!({"containerd": {"runtimes": {
            "podcr": {"runtimeType": "io.containerd.podcr.v1", "sandboxer": "shim"},
            "wrong": {"runtimeType": "io.containerd.runc.v2", "sandboxer": "podsandbox"},
            "runc": {"runtimeType": "io.containerd.runc.v2", "options": {"SystemdCgroup": true}},
        }}});
        let handlers = ["podcr".to_string(), "wrong".to_string()];
        assert_eq!(handler_check("podcr", &handlers, Some(&cfg)).outcome, Outcome::Pass);
        assert_eq!(handler_check("wrong", &handlers, Some(&cfg)).outcome, Outcome::Fail);
        assert_eq!(handler_check("absent", &handlers, Some(&cfg)).outcome, Outcome::Fail);
        assert_eq!(handler_check("podcr", &handlers, None).outcome, Outcome::Warn);
        assert_eq!(cgroup_check(Some(&cfg)).outcome, Outcome::Warn, "systemd cgroup driver on runc handlers");
        assert_eq!(cgroup_check(None).outcome, Outcome::Pass);
        assert_eq!(at_least("runc", "1.2.9", (1, 3)).outcome, Outcome::Fail);
        assert_eq!(runc_check("1.3.2").outcome, Outcome::Fail);
        assert_eq!(runc_check("1.3.3").outcome, Outcome::Pass);
        assert_eq!(runc_check("1.4.0-rc.1").outcome, Outcome::Pass);
        assert_eq!(at_least("runc", "1.3.6", (1, 3)).outcome, Outcome::Pass);
    }
}
