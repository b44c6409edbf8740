//! `podcr version`: the versions of everything a pod checkpoint passes through — this client, the
//! shim containerd would start, containerd, and the runc and CRIU on this machine's PATH.

use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use crate::{containerd::Containerd, output};

/// One component: its version, or why it could not be told.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Component {
    pub name: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub revision: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Component {
    fn of(name: &'static str, r: Result<(String, String)>) -> Component {
        match r {
            Ok((version, revision)) => Component { name, version: Some(version), revision, error: None },
            Err(e) => Component { name, error: Some(crate::error::render(&e)), ..Default::default() },
        }
    }
}

pub fn client() -> Component {
    Component {
        name: "client",
        version: Some(env!("CARGO_PKG_VERSION").to_string()),
        revision: option_env!("PODCR_REVISION").unwrap_or_default().to_string(),
        error: None,
    }
}

/// The first `X.Y[.Z]` in a tool's `--version` output.
pub fn parse_version(text: &str) -> Option<String> {
    text.split(|c: char| c.is_whitespace() || c == ',')
        .map(|w| w.trim_start_matches('v'))
        .find(|w| {
            let mut parts = w.split('.');
            parts.next().is_some_and(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
                && parts.next().is_some_and(|p| p.chars().next().is_some_and(|c| c.is_ascii_digit()))
        })
        .map(|w| w.trim_end_matches(|c: char| !c.is_ascii_digit() && c != '.').to_string())
}

/// `(major, minor)` of a version string, for minimum-version checks.
pub fn major_minor(v: &str) -> Option<(u32, u32)> {
    // containerd reports `v2.4.0-beta.0-70-g301026e58` for a build from git, `2.1.9` packaged.
    let mut parts = v.trim_start_matches('v').split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.chars().take_while(char::is_ascii_digit).collect::<String>().parse().ok()?;
    Some((major, minor))
}

/// `<tool> <args>`, bounded by `timeout`; stdout and stderr together.
pub async fn tool_output(tool: &str, args: &[&str], timeout: Duration) -> Result<(bool, String)> {
    let run = tokio::process::Command::new(tool).args(args).kill_on_drop(true).output();
    let out = tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| anyhow::anyhow!("`{tool} {}` did not finish within {timeout:?}", args.join(" ")))?
        .map_err(|e| anyhow::anyhow!("cannot run {tool}: {e}"))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}

async fn tool_version(tool: &str, timeout: Duration) -> Result<(String, String)> {
    let (_, text) = tool_output(tool, &["--version"], timeout).await?;
    let v = parse_version(&text).ok_or_else(|| anyhow::anyhow!("no version in `{tool} --version`: {}", text.trim()))?;
    Ok((v, String::new()))
}

/// Every component, and containerd's failure if it did not answer (the command then fails,
/// as `ctr version` does, after printing what it could find).
pub async fn collect(
    cd: Result<&Containerd, String>,
    runtime: &str,
    timeout: Duration,
) -> (Vec<Component>, Option<anyhow::Error>) {
    let mut all = vec![client()];
    let mut failure = None;
    match cd {
        Ok(cd) => {
            match cd.version().await {
                Ok(v) => all.push(Component::of("containerd", Ok(v))),
                Err(e) => {
                    all.push(Component {
                        name: "containerd",
                        error: Some(crate::error::render(&e)),
                        ..Default::default()
                    });
                    failure = Some(e);
                }
            }
            let shim = cd.runtime_info(runtime).await.map(|i| {
                let v = i.version.unwrap_or_default();
                (v.version, v.revision)
            });
            all.push(Component::of("shim", shim));
        }
        Err(e) => {
            for name in ["containerd", "shim"] {
                all.push(Component { name, error: Some(e.clone()), ..Default::default() });
            }
        }
    }
    all.push(Component::of("runc", tool_version("runc", timeout).await));
    all.push(Component::of("criu", tool_version("criu", timeout).await));
    (all, failure)
}

pub fn print(components: &[Component], format: output::Format) -> Result<()> {
    if format == output::Format::Json {
        let map: serde_json::Map<String, serde_json::Value> =
            components.iter().map(|c| Ok((c.name.to_string(), serde_json::to_value(c)?))).collect::<Result<_>>()?;
        println!("{}", serde_json::to_string_pretty(&map)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = components
        .iter()
        .map(|c| {
            vec![
                c.name.to_string(),
                c.version.clone().unwrap_or_else(|| "-".into()),
                c.error.clone().unwrap_or_else(|| c.revision.clone()),
            ]
        })
        .collect();
    print!("{}", output::table(&["COMPONENT", "VERSION", "REVISION / ERROR"], &rows));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_tool_output() {
        assert_eq!(parse_version("runc version 1.3.6\ncommit: v1.3.6-0\nspec: 1.2.1").as_deref(), Some("1.3.6"));
        assert_eq!(parse_version("Version: 4.2.1\n").as_deref(), Some("4.2.1"));
        assert_eq!(parse_version("containerd github.com/x v2.1.9+unknown abc").as_deref(), Some("2.1.9"));
        assert_eq!(parse_version("nothing here"), None);
        assert_eq!(major_minor("2.1.9+unknown"), Some((2, 1)));
        assert_eq!(major_minor("4.2"), Some((4, 2)));
        assert_eq!(major_minor("v2.4.0-beta.0-70-g301026e58"), Some((2, 4)));
        assert_eq!(major_minor("x"), None);
    }
}
