//! `podcr sandbox run|ls|rm`: shim sandboxes through containerd's sandbox API.
//!
//! containerd 2.1's `ctr sandbox run` writes the store record without a sandboxer and never
//! calls the controller, so it cannot start a shim sandbox. This does what containerd 2.2's
//! client does: store record with sandboxer "shim", Controller/Create, Controller/Start.

use std::collections::HashMap;

use anyhow::{Context, Result};
use containerd_client::types::{sandbox::Runtime, Sandbox};
use k8s_cri::v1::{
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceOption, PodSandboxConfig, PodSandboxMetadata,
};
use prost::Message;
use prost_types::{Any, Timestamp};
use tracing::{info, warn};

use crate::{
    containerd::{Containerd, SHIM_SANDBOXER},
    output::{self, SandboxRow},
};

/// `type_url` containerd's CRI uses for the pod config it passes to CreateSandbox.
pub const POD_SANDBOX_CONFIG_TYPE: &str = "runtime.v1.PodSandboxConfig";
/// CRI `NamespaceMode` values.
const NS_POD: i32 = 0;
const NS_CONTAINER: i32 = 1;
const NS_NODE: i32 = 2;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOptions {
    pub id: String,
    pub runtime: String,
    pub netns: Option<String>,
    pub hostname: Option<String>,
    pub name: Option<String>,
    pub pod_namespace: Option<String>,
}

/// The CRI pod config a kubelet would send for such a pod: its own IPC and UTS, per-container
/// PID namespaces, and the node's network unless a netns is given.
pub fn pod_config(opts: &RunOptions) -> PodSandboxConfig {
    let name = opts.name.clone().unwrap_or_else(|| opts.id.clone());
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.clone(),
            namespace: opts.pod_namespace.clone().unwrap_or_else(|| "default".into()),
            uid: opts.id.clone(),
            attempt: 0,
        }),
        hostname: opts.hostname.clone().unwrap_or(name),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: if opts.netns.is_some() { NS_POD } else { NS_NODE },
                    pid: NS_CONTAINER,
                    ipc: NS_POD,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn pod_config_any(config: &PodSandboxConfig) -> Any {
    Any { type_url: POD_SANDBOX_CONFIG_TYPE.into(), value: config.encode_to_vec() }
}

fn now() -> Timestamp {
    let now = chrono::Utc::now();
    Timestamp { seconds: now.timestamp(), nanos: now.timestamp_subsec_nanos() as i32 }
}

pub fn record(opts: &RunOptions) -> Sandbox {
    Sandbox {
        sandbox_id: opts.id.clone(),
        // No runtime options: containerd 2.1 then hands the shim the runc task options it
        // expects (see the research notes on the `options` pitfall).
        runtime: Some(Runtime { name: opts.runtime.clone(), options: None }),
        labels: HashMap::from([("io.podcr.created-by".to_string(), "podcr".to_string())]),
        created_at: Some(now()),
        updated_at: Some(now()),
        sandboxer: SHIM_SANDBOXER.into(),
        ..Default::default()
    }
}

pub async fn run(cd: &Containerd, opts: &RunOptions) -> Result<()> {
    if let Some(netns) = &opts.netns {
        anyhow::ensure!(std::path::Path::new(netns).exists(), "network namespace {netns} does not exist");
    }
    let sandbox = cd.store_create(record(opts)).await?;
    let options = pod_config_any(&pod_config(opts));
    let started = async {
        cd.controller_create(&sandbox, Some(options), opts.netns.as_deref().unwrap_or("")).await?;
        cd.controller_start(&opts.id, SHIM_SANDBOXER).await
    }
    .await;
    match started {
        Ok(resp) => {
            info!(id = %opts.id, pid = resp.pid, address = %resp.address, "sandbox started");
            println!("{}", opts.id);
            Ok(())
        }
        Err(e) => {
            // Leave nothing behind: no shim, no record. Rollback errors are logged, the
            // original error is what the user needs to see.
            if let Err(re) = cd.controller_shutdown(&opts.id, SHIM_SANDBOXER).await {
                warn!(error = %format!("{re:#}"), "rollback: shutdown");
            }
            if let Err(re) = cd.store_delete(&opts.id).await {
                warn!(error = %format!("{re:#}"), "rollback: delete record");
            }
            Err(e)
        }
    }
}

/// Lists sandboxes as a table, as JSON, or (`quiet`) as ids only, one a line.
pub async fn ls(cd: &Containerd, format: output::Format, quiet: bool) -> Result<()> {
    let mut rows = Vec::new();
    for sb in cd.store_list().await? {
        let mut row = SandboxRow {
            id: sb.sandbox_id.clone(),
            runtime: sb.runtime.as_ref().map(|r| r.name.clone()).unwrap_or_default(),
            sandboxer: sb.sandboxer.clone(),
            created: sb.created_at.as_ref().map(output::format_timestamp).unwrap_or_default(),
            state: String::new(),
            pid: None,
        };
        if sb.sandboxer == SHIM_SANDBOXER {
            match cd.controller_status(&sb.sandbox_id, SHIM_SANDBOXER).await {
                Ok(st) => {
                    row.state = if st.state.is_empty() { "unknown".into() } else { st.state };
                    row.pid = (st.pid != 0).then_some(st.pid);
                }
                Err(e) => row.state = format!("error: {}", output::short_error(&e)),
            }
        }
        rows.push(row);
    }
    rows.sort_by(|a, b| a.id.cmp(&b.id));
    if quiet {
        rows.iter().for_each(|r| println!("{}", r.id));
    } else if format == output::Format::Json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", output::sandbox_table(&rows));
    }
    Ok(())
}

/// Stops, shuts down and deletes each sandbox; with `force`, a failed stop does not keep the
/// sandbox from being shut down. Carries on with the next id after an error.
pub async fn rm(cd: &Containerd, ids: &[String], force: bool) -> Result<()> {
    let mut failed = Vec::new();
    for id in ids {
        match remove_one(cd, id, force).await {
            Ok(()) => println!("{id}"),
            Err(e) => {
                eprintln!("podcr: remove {id}: {e:#}");
                failed.push(id.clone());
            }
        }
    }
    anyhow::ensure!(failed.is_empty(), "could not remove {}", failed.join(", "));
    Ok(())
}

async fn remove_one(cd: &Containerd, id: &str, force: bool) -> Result<()> {
    let sb = cd
        .store_get(id)
        .await?
        .with_context(|| format!("sandbox {id} not found in namespace {}", cd.namespace_name))?;
    let sandboxer = if sb.sandboxer.is_empty() { SHIM_SANDBOXER.to_string() } else { sb.sandboxer };
    if let Err(e) = cd.controller_stop(id, &sandboxer).await {
        if !force {
            return Err(e);
        }
        warn!(error = %format!("{e:#}"), "stop failed; removing anyway (--force)");
    }
    cd.controller_shutdown(id, &sandboxer).await?;
    cd.store_delete(id).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_follows_flags() {
        let opts = RunOptions { id: "pod1".into(), runtime: "io.containerd.podcr.v1".into(), ..Default::default() };
        let cfg = pod_config(&opts);
        let meta = cfg.metadata.clone().unwrap();
        assert_eq!((meta.name.as_str(), meta.namespace.as_str(), meta.uid.as_str()), ("pod1", "default", "pod1"));
        assert_eq!(cfg.hostname, "pod1");
        let ns = cfg.linux.unwrap().security_context.unwrap().namespace_options.unwrap();
        assert_eq!((ns.network, ns.pid, ns.ipc), (NS_NODE, NS_CONTAINER, NS_POD));

        let opts = RunOptions {
            netns: Some("/var/run/netns/x".into()),
            hostname: Some("h".into()),
            name: Some("web".into()),
            pod_namespace: Some("prod".into()),
            ..opts
        };
        let cfg = pod_config(&opts);
        assert_eq!(cfg.hostname, "h");
        assert_eq!(cfg.metadata.as_ref().unwrap().namespace, "prod");
        let any = pod_config_any(&cfg);
        assert_eq!(any.type_url, POD_SANDBOX_CONFIG_TYPE);
        assert_eq!(PodSandboxConfig::decode(any.value.as_slice()).unwrap(), cfg);
        let ns = cfg.linux.unwrap().security_context.unwrap().namespace_options.unwrap();
        assert_eq!(ns.network, NS_POD);
    }

    #[test]
    fn record_uses_the_shim_sandboxer_without_runtime_options() {
        let sb = record(&RunOptions { id: "p".into(), runtime: "io.containerd.podcr.v1".into(), ..Default::default() });
        assert_eq!(sb.sandboxer, "shim");
        let rt = sb.runtime.unwrap();
        assert_eq!(rt.name, "io.containerd.podcr.v1");
        assert!(rt.options.is_none());
        assert!(sb.created_at.is_some());
    }
}
