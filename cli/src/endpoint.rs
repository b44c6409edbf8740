//! Where podcr talks to: containerd's socket (`-a/--address`, `$CONTAINERD_ADDRESS`, as `ctr`
//! takes it) and the CRI's (`--runtime-endpoint`, `$CONTAINER_RUNTIME_ENDPOINT`, as `crictl`
//! takes it; containerd serves both on one socket, so it defaults to containerd's). Both accept
//! `unix:///path` or a plain path; anything else is refused before any connection is tried.

use std::path::PathBuf;

use crate::error::UsageError;

pub const DEFAULT_CONTAINERD: &str = "/run/containerd/containerd.sock";

/// A unix socket path from `unix:///path` or `/path` (a relative path is taken as given).
pub fn socket_path(flag: &str, value: &str) -> Result<PathBuf, UsageError> {
    let path = match value.split_once("://") {
        None => value,
        Some(("unix", rest)) => rest,
        Some((scheme, _)) => {
            return Err(UsageError(format!(
                "{flag} {value:?}: {scheme}:// is not supported; podcr talks to containerd over a unix socket (unix:///path or a path)"
            )))
        }
    };
    if path.is_empty() {
        return Err(UsageError(format!("{flag} {value:?} names no socket")));
    }
    Ok(PathBuf::from(path))
}

/// containerd's and the CRI's sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub containerd: PathBuf,
    pub cri: PathBuf,
}

impl Endpoints {
    pub fn resolve(address: &str, runtime_endpoint: Option<&str>) -> Result<Endpoints, UsageError> {
        let containerd = socket_path("--address", address)?;
        let cri = match runtime_endpoint.filter(|r| !r.is_empty()) {
            Some(r) => socket_path("--runtime-endpoint", r)?,
            None => containerd.clone(),
        };
        Ok(Endpoints { containerd, cri })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_urls_and_plain_paths() {
        assert_eq!(socket_path("-a", "unix:///run/c.sock").unwrap(), PathBuf::from("/run/c.sock"));
        assert_eq!(socket_path("-a", "/run/c.sock").unwrap(), PathBuf::from("/run/c.sock"));
        assert_eq!(socket_path("-a", "c.sock").unwrap(), PathBuf::from("c.sock"));
        let err = socket_path("-a", "tcp://1.2.3.4:5").unwrap_err().to_string();
        assert!(err.contains("tcp:// is not supported"), "{err}");
        assert!(socket_path("-a", "unix://").is_err());
    }

    #[test]
    fn the_cri_defaults_to_containerds_socket() {
        let e = Endpoints::resolve("unix:///a.sock", None).unwrap();
        assert_eq!(e.cri, PathBuf::from("/a.sock"));
        let e = Endpoints::resolve("/a.sock", Some("unix:///b.sock")).unwrap();
        assert_eq!((e.containerd, e.cri), (PathBuf::from("/a.sock"), PathBuf::from("/b.sock")));
    }
}
