//! The pod's shared files: hostname, hosts, resolv.conf and the /dev/shm tmpfs.
//!
//! containerd 2.1's CRI bind-mounts these into every container from fixed paths — but only if
//! they exist, and it creates them only for its own pause sandboxes. So a shim sandbox must make
//! them at exactly those paths: `<containerd root>/io.containerd.grpc.v1.cri/sandboxes/<id>/`
//! and `<containerd state>/io.containerd.grpc.v1.cri/sandboxes/<id>/shm`. Both roots are read
//! off the sandbox bundle containerd gave us, so a private containerd works as well.

use std::{
    fs,
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use podcr_sandbox_controller::backend::{DnsConfig, PodSpec};

use crate::runc_error::{Error, Result};

const CRI_PLUGIN_DIR: &str = "io.containerd.grpc.v1.cri";
const SHM_SIZE: &str = "65536k";

/// Where the files really are, inside the sandbox's own directories; the CRI's paths are
/// symlinks to these. containerd's CRI, each time it starts, removes every directory under
/// `sandboxes/` that has no sandbox *container* (`cleanupOrphanedIDDirs`, unmounting what is
/// in the way), and a shim sandbox has none: running containers' /etc/hostname, hosts and
/// resolv.conf would become deleted files, which CRIU dumps as such and then cannot restore
/// ("Can't re-create deleted file ...: File exists"). That clean-up only removes directories,
/// never symlinks, and containerd removes the sandbox's own directories with the sandbox.
const DATA_DIR: &str = "pod-files";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFiles {
    /// `<root>/io.containerd.grpc.v1.cri/sandboxes/<id>`: hostname, hosts, resolv.conf. A
    /// symlink to `root_data`.
    pub root_dir: PathBuf,
    /// `<state>/io.containerd.grpc.v1.cri/sandboxes/<id>`: shm. A symlink to `state_data`.
    pub state_dir: PathBuf,
    /// `<sandbox work dir>/pod-files`.
    pub root_data: PathBuf,
    /// `<sandbox bundle>/pod-files`.
    pub state_data: PathBuf,
}

impl PodFiles {
    /// Derives the CRI's per-sandbox directories from the sandbox bundle
    /// `<state>/io.containerd.sandbox.controller.v1.shim/<ns>/<id>`, whose `work` link points to
    /// `<root>/io.containerd.sandbox.controller.v1.shim/<ns>/<id>`.
    pub fn for_bundle(bundle: &Path, id: &str) -> Result<PodFiles> {
        let state = ancestor(bundle, 3)?;
        let work = fs::read_link(bundle.join("work")).map_err(Error::io(format!("read {}/work", bundle.display())))?;
        let root = ancestor(&work, 3)?;
        Ok(PodFiles {
            root_dir: root.join(CRI_PLUGIN_DIR).join("sandboxes").join(id),
            state_dir: state.join(CRI_PLUGIN_DIR).join("sandboxes").join(id),
            root_data: work.join(DATA_DIR),
            state_data: bundle.join(DATA_DIR),
        })
    }

    pub fn shm(&self) -> PathBuf {
        self.state_dir.join("shm")
    }

    pub fn create(&self, spec: &PodSpec) -> Result<()> {
        for (link, data) in [(&self.root_dir, &self.root_data), (&self.state_dir, &self.state_data)] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o711)
                .create(data)
                .map_err(Error::io(format!("create {}", data.display())))?;
            if let Some(parent) = link.parent() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o711)
                    .create(parent)
                    .map_err(Error::io(format!("create {}", parent.display())))?;
            }
            if fs::read_link(link).ok().as_ref() != Some(data) {
                std::os::unix::fs::symlink(data, link).map_err(Error::io(format!(
                    "link {} to {}",
                    link.display(),
                    data.display()
                )))?;
            }
        }
        let hostname = if spec.hostname.is_empty() {
            nix::unistd::gethostname().map_err(Error::nix("gethostname"))?.to_string_lossy().into_owned()
        } else {
            spec.hostname.clone()
        };
        write(&self.root_dir.join("hostname"), &format!("{hostname}\n"))?;
        let hosts =
            fs::read_to_string("/etc/hosts").unwrap_or_else(|_| "127.0.0.1\tlocalhost\n::1\tlocalhost\n".into());
        write(&self.root_dir.join("hosts"), &hosts)?;
        let resolv = match &spec.dns {
            Some(dns) if !dns.servers.is_empty() || !dns.searches.is_empty() => resolv_conf(dns),
            _ => fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        };
        write(&self.root_dir.join("resolv.conf"), &resolv)?;
        if !spec.host_ipc {
            let shm = self.shm();
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&shm)
                .or_else(exists_ok)
                .map_err(Error::io(format!("create {}", shm.display())))?;
            let options = format!("mode=1777,size={SHM_SIZE}");
            mount(
                Some("shm"),
                &shm,
                Some("tmpfs"),
                MsFlags::MS_NOEXEC | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some(options.as_str()),
            )
            .map_err(Error::nix(format!("mount shm tmpfs on {}", shm.display())))?;
        }
        Ok(())
    }

    /// Removes everything `create` made. Idempotent: missing pieces are fine.
    pub fn remove(&self) -> Result<()> {
        let shm = self.shm();
        match umount2(&shm, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(Error::Nix { context: format!("unmount {}", shm.display()), source: e }),
        }
        for link in [&self.root_dir, &self.state_dir] {
            // A directory there (left by an older podcr) goes too; a symlink is never followed.
            let gone = match fs::symlink_metadata(link) {
                Ok(m) if m.is_dir() => fs::remove_dir_all(link),
                Ok(_) => fs::remove_file(link),
                Err(e) => Err(e),
            };
            match gone {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::Io { context: format!("remove {}", link.display()), source: e }),
            }
        }
        for dir in [&self.root_data, &self.state_data] {
            match fs::remove_dir_all(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::Io { context: format!("remove {}", dir.display()), source: e }),
            }
        }
        Ok(())
    }
}

fn resolv_conf(dns: &DnsConfig) -> String {
    let mut out = String::new();
    if !dns.searches.is_empty() {
        out.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for server in &dns.servers {
        out.push_str(&format!("nameserver {server}\n"));
    }
    if !dns.options.is_empty() {
        out.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    out
}

fn ancestor(path: &Path, levels: usize) -> Result<PathBuf> {
    let mut p = path;
    for _ in 0..levels {
        p = p
            .parent()
            .ok_or_else(|| Error::invalid_argument(format!("unexpected bundle layout: {}", path.display())))?;
    }
    Ok(p.to_path_buf())
}

fn write(path: &Path, contents: &str) -> Result<()> {
    fs::write(path, contents).map_err(Error::io(format!("write {}", path.display())))
}

fn exists_ok(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == std::io::ErrorKind::AlreadyExists {
        Ok(())
    } else {
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_dirs_follow_containerds_root_and_state() {
        let tmp = tempfile::tempdir().unwrap();
        let bundle = tmp.path().join("state/io.containerd.sandbox.controller.v1.shim/k8s.io/sb1");
        fs::create_dir_all(&bundle).unwrap();
        std::os::unix::fs::symlink(
            tmp.path().join("root/io.containerd.sandbox.controller.v1.shim/k8s.io/sb1"),
            bundle.join("work"),
        )
        .unwrap();
        let files = PodFiles::for_bundle(&bundle, "sb1").unwrap();
        assert_eq!(files.root_dir, tmp.path().join("root/io.containerd.grpc.v1.cri/sandboxes/sb1"));
        assert_eq!(files.shm(), tmp.path().join("state/io.containerd.grpc.v1.cri/sandboxes/sb1/shm"));
        assert_eq!(
            files.root_data,
            tmp.path().join("root/io.containerd.sandbox.controller.v1.shim/k8s.io/sb1/pod-files")
        );
        assert_eq!(files.state_data, bundle.join("pod-files"));
    }

    #[test]
    fn resolv_conf_from_cri_dns() {
        let dns = DnsConfig {
            servers: vec!["10.0.0.10".into()],
            searches: vec!["default.svc".into()],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(resolv_conf(&dns), "search default.svc\nnameserver 10.0.0.10\noptions ndots:5\n");
    }
}
