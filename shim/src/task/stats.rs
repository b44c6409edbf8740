//! Task.Stats: cgroup metrics of the init process, as the `io.containerd.cgroups.v1.Metrics` /
//! `io.containerd.cgroups.v2.Metrics` Any that containerd (and the CRI) decode.

use std::path::Path;

use protobuf::well_known_types::any::Any;

use super::Containers;
use crate::runc_error::{Error, Result};

impl Containers {
    pub async fn stats(&self, id: &str) -> Result<Any> {
        let c = self.get(id)?;
        let pid = c.init.pid();
        if pid == 0 || c.init.exit().is_some() {
            return Err(Error::not_found(format!("container {id} is not running")));
        }
        tokio::task::spawn_blocking(move || -> Result<Any> {
            let cg = containerd_shim::cgroup::get_cgroup(pid)?;
            let metrics: Box<dyn protobuf::MessageDyn> = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
                Box::new(containerd_shim::cgroup::collect_metrics_v2(&cg)?)
            } else {
                Box::new(containerd_shim::cgroup::collect_metrics(&cg)?)
            };
            Ok(containerd_shim::util::convert_to_any(metrics)?)
        })
        .await
        .map_err(Error::join("stats task"))?
    }
}
