//! What a restore request must agree with, and what it must grant, before a checkpoint is
//! restored into it (cri-api `RestorePod`: the checkpoint is authoritative for process and
//! filesystem state; labels, annotations, mounts, devices, resources, logging and security come
//! from the request).
//!
//! Two kinds of fields are compared, each only where both sides know it:
//!
//! - **What the checkpoint is authoritative for** (image, command, args, working directory): the
//!   request must agree, else the restore is refused naming the field. A request cannot turn a
//!   checkpointed process into another program.
//! - **Privilege** (privileged, capabilities, unconfined seccomp/AppArmor, host namespaces, run-as
//!   user): a checkpoint that needs more than the request grants is refused naming the field. A
//!   checkpoint that needs less is restored with what the request grants.
//!
//! Everything else (mounts, devices, resources, cgroup parent, log paths, labels, annotations) is
//! never read from the checkpoint: the caller's configs are the only source, so nothing here
//! compares them.
//!
//! Both sides are read into a [`ContainerView`], from a CRI `ContainerConfig` (+ its pod's
//! `PodSandboxConfig`), as snake_case JSON, or from an OCI runtime spec, so one comparison serves
//! the shim's RPCs (CRI configs), its Task.Create (the OCI spec containerd generated) and the CLI.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::error::{Error, Result};

/// The capabilities containerd's CRI gives a non-privileged container (`oci.DefaultCaps`).
pub const DEFAULT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every Linux capability by number (`include/uapi/linux/capability.h`), so a `CapEff` mask can
/// be named and a spec's capability names turned into a mask.
pub const ALL_CAPS: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// `CAP_SYS_ADMIN` style name of a CRI (`SYS_ADMIN`) or OCI (`CAP_SYS_ADMIN`) capability.
pub fn cap_name(s: &str) -> String {
    let up = s.trim().to_ascii_uppercase();
    if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    }
}

/// The bit mask of a set of capability names; unknown names are ignored (a kernel newer than
/// this table has more, and an unknown name grants nothing here).
pub fn cap_mask<'a>(names: impl IntoIterator<Item = &'a String>) -> u64 {
    names.into_iter().filter_map(|n| ALL_CAPS.iter().position(|c| *c == n.as_str())).fold(0, |m, bit| m | (1u64 << bit))
}

/// The names of the bits set in `mask`, for messages.
pub fn cap_names(mask: u64) -> Vec<String> {
    (0..64)
        .filter(|bit| mask & (1u64 << bit) != 0)
        .map(|bit| ALL_CAPS.get(bit).map_or_else(|| format!("cap{bit}"), |c| c.to_string()))
        .collect()
}

/// Where a view was read from; argv is compared exactly only between two of a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Source {
    #[default]
    Cri,
    Oci,
}

/// One container as a request or a checkpoint describes it (see the module docs). `None` means
/// "not known from this source"; such a field is not compared.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerView {
    pub source: Source,
    /// Image names (as the user wrote them, or resolved references).
    pub image_names: BTreeSet<String>,
    /// Image digests and ids (`sha256:...`), from `name@sha256:...` references or image ids.
    pub image_digests: BTreeSet<String>,
    /// CRI `command` and `args`; for an OCI spec, `process.args` as `command` and no `args`.
    pub command: Option<Vec<String>>,
    pub args: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub privileged: bool,
    /// The most the processes may hold (OCI: bounding ∪ permitted ∪ effective).
    pub capabilities: Option<BTreeSet<String>>,
    pub seccomp_unconfined: Option<bool>,
    pub apparmor_unconfined: Option<bool>,
    pub host_network: bool,
    pub host_pid: bool,
    pub host_ipc: bool,
    pub run_as_user: Option<i64>,
}

/// CRI `NamespaceMode::NODE`.
const NS_NODE: i64 = 2;
/// CRI `SecurityProfile.ProfileType`.
const PROFILE_RUNTIME_DEFAULT: i64 = 0;
const PROFILE_UNCONFINED: i64 = 1;

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect()).unwrap_or_default()
}

fn non_empty(v: &Value) -> Option<String> {
    v.as_str().filter(|s| !s.is_empty()).map(str::to_string)
}

/// An image name as containerd stores it: `busybox` is `docker.io/library/busybox:latest`.
pub fn normalize_image_name(name: &str) -> String {
    let (domain, rest) = match name.split_once('/') {
        Some((first, rest)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            (first.to_string(), rest.to_string())
        }
        Some(_) => ("docker.io".to_string(), name.to_string()),
        None => ("docker.io".to_string(), format!("library/{name}")),
    };
    let tagged = rest.rsplit('/').next().is_some_and(|last| last.contains(':'));
    format!("{domain}/{rest}{}", if tagged { "" } else { ":latest" })
}

/// Splits an image reference into the names and digests it identifies.
fn add_image(view: &mut ContainerView, image: &str) {
    let image = image.trim();
    if image.is_empty() {
        return;
    }
    if let Some((_, digest)) = image.split_once('@') {
        // `name@digest` pins the digest; the name says nothing more.
        view.image_digests.insert(digest.to_string());
    } else if image.starts_with("sha256:") {
        view.image_digests.insert(image.to_string());
    } else {
        view.image_names.insert(normalize_image_name(image));
    }
}

impl ContainerView {
    /// A CRI `ContainerConfig` (snake_case JSON), with the pod's `PodSandboxConfig` for the
    /// pod-level namespace options when known.
    pub fn from_cri(config: &Value, pod: Option<&Value>) -> ContainerView {
        let mut v = ContainerView { source: Source::Cri, ..Default::default() };
        add_image(&mut v, config["image"]["image"].as_str().unwrap_or_default());
        add_image(&mut v, config["image"]["user_specified_image"].as_str().unwrap_or_default());
        let command = strings(&config["command"]);
        let args = strings(&config["args"]);
        // An empty command or args means "the image's": unknown here, so not compared.
        v.command = (!command.is_empty()).then_some(command);
        v.args = (!args.is_empty()).then_some(args);
        v.working_dir = non_empty(&config["working_dir"]);
        let sc = &config["linux"]["security_context"];
        v.privileged = sc["privileged"].as_bool().unwrap_or(false);
        let mut caps: BTreeSet<String> = if v.privileged {
            ALL_CAPS.iter().map(|c| c.to_string()).collect()
        } else {
            let add = strings(&sc["capabilities"]["add_capabilities"]);
            let drop = strings(&sc["capabilities"]["drop_capabilities"]);
            let mut set: BTreeSet<String> = if drop.iter().any(|d| d.eq_ignore_ascii_case("ALL")) {
                BTreeSet::new()
            } else {
                DEFAULT_CAPS.iter().map(|c| c.to_string()).collect()
            };
            for d in &drop {
                set.remove(&cap_name(d));
            }
            if add.iter().any(|a| a.eq_ignore_ascii_case("ALL")) {
                set.extend(ALL_CAPS.iter().map(|c| c.to_string()));
            }
            set.extend(add.iter().filter(|a| !a.eq_ignore_ascii_case("ALL")).map(|a| cap_name(a)));
            set
        };
        caps.extend(strings(&sc["capabilities"]["add_ambient_capabilities"]).iter().map(|a| cap_name(a)));
        v.capabilities = Some(caps);
        // containerd's CRI: no seccomp profile means none (unconfined); no AppArmor profile means
        // the runtime default. Privileged containers get neither.
        let seccomp_type = sc["seccomp"]["profile_type"].as_i64();
        let seccomp_path = sc["seccomp_profile_path"].as_str().unwrap_or_default();
        v.seccomp_unconfined = Some(
            v.privileged
                || seccomp_type == Some(PROFILE_UNCONFINED)
                || (sc["seccomp"].is_null() && (seccomp_path.is_empty() || seccomp_path == "unconfined")),
        );
        let apparmor_type = sc["apparmor"]["profile_type"].as_i64();
        let apparmor_path = sc["apparmor_profile"].as_str().unwrap_or_default();
        v.apparmor_unconfined = Some(
            v.privileged
                || apparmor_type == Some(PROFILE_UNCONFINED)
                || (apparmor_type != Some(PROFILE_RUNTIME_DEFAULT) && apparmor_path == "unconfined"),
        );
        let mut ns = vec![&sc["namespace_options"]];
        if let Some(pod) = pod {
            ns.push(&pod["linux"]["security_context"]["namespace_options"]);
        }
        for n in ns {
            v.host_network |= n["network"].as_i64() == Some(NS_NODE);
            v.host_pid |= n["pid"].as_i64() == Some(NS_NODE);
            v.host_ipc |= n["ipc"].as_i64() == Some(NS_NODE);
        }
        v.run_as_user = sc["run_as_user"]["value"].as_i64();
        v
    }

    /// An OCI runtime spec: what the runtime actually applies (or applied, for `spec.dump`).
    pub fn from_oci(spec: &Value) -> ContainerView {
        let mut v = ContainerView { source: Source::Oci, ..Default::default() };
        let anns = &spec["annotations"];
        for key in ["io.kubernetes.cri.image-name", "io.kubernetes.cri.image-ref"] {
            add_image(&mut v, anns[key].as_str().unwrap_or_default());
        }
        let process = &spec["process"];
        let argv = strings(&process["args"]);
        v.command = (!argv.is_empty()).then_some(argv);
        v.working_dir = non_empty(&process["cwd"]);
        // Only what the spec states is compared: a spec without a section says nothing of it.
        let caps = &process["capabilities"];
        v.capabilities = caps.is_object().then(|| {
            ["bounding", "permitted", "effective", "ambient"]
                .iter()
                .flat_map(|k| strings(&caps[*k]))
                .map(|c| cap_name(&c))
                .collect()
        });
        let linux = &spec["linux"];
        v.seccomp_unconfined = linux.is_object().then(|| linux["seccomp"].is_null());
        // No profile in a spec may only mean a host without AppArmor: not known either way.
        v.apparmor_unconfined = match process["apparmorProfile"].as_str().unwrap_or_default() {
            "" => None,
            p => Some(p == "unconfined"),
        };
        if let Some(list) = linux["namespaces"].as_array() {
            let namespaces: BTreeSet<&str> = list.iter().filter_map(|n| n["type"].as_str()).collect();
            // A container without its own (or its pod's) namespace of a type runs in the host's.
            v.host_network = !namespaces.contains("network");
            v.host_pid = !namespaces.contains("pid");
            v.host_ipc = !namespaces.contains("ipc");
        }
        v.run_as_user = process["user"]["uid"].as_i64();
        v
    }

    /// The whole argv, where this view knows it.
    pub fn argv(&self) -> Option<Vec<String>> {
        match (&self.command, &self.args) {
            (Some(c), Some(a)) => Some(c.iter().chain(a).cloned().collect()),
            (Some(c), None) => Some(c.clone()),
            _ => None,
        }
    }
}

fn refuse(container: &str, field: &str, msg: String) -> Error {
    Error::InvalidArgument(format!("container {container:?}: {field}: {msg}"))
}

/// Checks `request` against `checkpoint` for one container (see the module docs); the error
/// names the container and the field.
pub fn check_container(container: &str, request: &ContainerView, checkpoint: &ContainerView) -> Result<()> {
    // Authoritative fields: the request must agree.
    if !request.image_digests.is_empty() && !checkpoint.image_digests.is_empty() {
        if request.image_digests.is_disjoint(&checkpoint.image_digests) {
            return Err(refuse(
                container,
                "image",
                format!(
                    "the request runs {:?}, the checkpoint was taken from {:?}",
                    request.image_digests, checkpoint.image_digests
                ),
            ));
        }
    } else if !request.image_names.is_empty()
        && !checkpoint.image_names.is_empty()
        && request.image_names.is_disjoint(&checkpoint.image_names)
    {
        return Err(refuse(
            container,
            "image",
            format!(
                "the request runs {:?}, the checkpoint was taken from {:?}",
                request.image_names, checkpoint.image_names
            ),
        ));
    }
    if request.source == checkpoint.source {
        for (field, r, c) in
            [("command", &request.command, &checkpoint.command), ("args", &request.args, &checkpoint.args)]
        {
            if let (Some(r), Some(c)) = (r, c) {
                if r != c {
                    return Err(refuse(container, field, format!("the request has {r:?}, the checkpoint {c:?}")));
                }
            }
        }
    } else if let (Some(r), Some(c)) = (request.argv(), checkpoint.argv()) {
        // A CRI command is the whole argv only with the image's entrypoint replaced, which is
        // when it is set; the OCI argv is always whole.
        if r != c {
            return Err(refuse(container, "command", format!("the request runs {r:?}, the checkpoint {c:?}")));
        }
    }
    if let (Some(r), Some(c)) = (&request.working_dir, &checkpoint.working_dir) {
        if r != c {
            return Err(refuse(container, "working directory", format!("the request has {r:?}, the checkpoint {c:?}")));
        }
    }

    // Privilege: the checkpoint may need no more than the request grants.
    if checkpoint.privileged && !request.privileged {
        return Err(refuse(
            container,
            "privileged",
            "the checkpoint is of a privileged container; the request is not privileged".into(),
        ));
    }
    if let (Some(r), Some(c)) = (&request.capabilities, &checkpoint.capabilities) {
        let missing: Vec<&String> = c.difference(r).collect();
        if !missing.is_empty() {
            return Err(refuse(
                container,
                "capabilities",
                format!("the checkpoint needs {missing:?}, which the request does not grant"),
            ));
        }
    }
    let wider = |r: Option<bool>, c: Option<bool>| c == Some(true) && r == Some(false);
    if wider(request.seccomp_unconfined, checkpoint.seccomp_unconfined) {
        return Err(refuse(container, "seccomp", "the checkpoint ran unconfined; the request confines it".into()));
    }
    if wider(request.apparmor_unconfined, checkpoint.apparmor_unconfined) {
        return Err(refuse(container, "apparmor", "the checkpoint ran unconfined; the request confines it".into()));
    }
    for (field, r, c) in [
        ("host network", request.host_network, checkpoint.host_network),
        ("host PID namespace", request.host_pid, checkpoint.host_pid),
        ("host IPC namespace", request.host_ipc, checkpoint.host_ipc),
    ] {
        if c && !r {
            return Err(refuse(
                container,
                field,
                "the checkpoint ran in the host's namespace; the request does not grant it".into(),
            ));
        }
    }
    if let (Some(r), Some(c)) = (request.run_as_user, checkpoint.run_as_user) {
        // CRIU restores the processes' credentials from the images: a different user is a
        // different identity on every file the container can reach, whichever way it differs.
        if r != c {
            return Err(refuse(
                container,
                "run-as user",
                format!("the checkpoint ran as uid {c}; the request runs as uid {r}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn cri() -> Value {
        json!({
            "metadata": {"name": "app", "attempt": 0},
            "image": {"image": "docker.io/library/busybox@sha256:aaa", "user_specified_image": "busybox"},
            "command": ["/bin/sh", "-c"],
            "args": ["sleep 1000"],
            "working_dir": "/work",
            "linux": {"security_context": {"run_as_user": {"value": 1000}, "seccomp": {"profile_type": 1}}}
        })
    }

    fn oci(caps: &[&str]) -> Value {
        json!({
            "annotations": {"io.kubernetes.cri.image-name": "busybox"},
            "process": {"args": ["/bin/sh", "-c", "sleep 1000"], "cwd": "/work", "user": {"uid": 1000},
                        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps}},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "network", "path": "/proc/1/ns/net"}, {"type": "mount"}],
                      "seccomp": {"defaultAction": "SCMP_ACT_ERRNO"}}
        })
    }

    fn ok(r: &Value, c: &Value) -> Result<()> {
        check_container("app", &ContainerView::from_cri(r, None), &ContainerView::from_cri(c, None))
    }

    fn field_of(e: Error) -> String {
        e.to_string()
    }

    #[test]
    fn an_identical_request_is_accepted() {
        ok(&cri(), &cri()).unwrap();
        let spec = oci(&DEFAULT_CAPS);
        check_container("app", &ContainerView::from_oci(&spec), &ContainerView::from_oci(&spec)).unwrap();
        // A CRI request against an OCI spec.dump: the whole argv agrees.
        check_container("app", &ContainerView::from_cri(&cri(), None), &ContainerView::from_oci(&spec)).unwrap();
    }

    #[test]
    fn authoritative_fields_must_agree() {
        for (path, value, field) in [
            ("/image/image", json!("docker.io/library/busybox@sha256:bbb"), "image"),
            ("/command", json!(["/bin/bash", "-c"]), "command"),
            ("/args", json!(["sleep 1"]), "args"),
            ("/working_dir", json!("/"), "working directory"),
        ] {
            let mut r = cri();
            *r.pointer_mut(path).unwrap() = value;
            let e = field_of(ok(&r, &cri()).unwrap_err());
            assert!(e.contains(&format!(": {field}:")), "{path}: {e}");
            assert!(e.starts_with("invalid argument: container \"app\""), "{e}");
        }
        // Another image by name, when no digest is known on one side.
        let mut r = cri();
        r["image"] = json!({"image": "docker.io/library/alpine:3"});
        assert!(field_of(ok(&r, &cri()).unwrap_err()).contains(": image:"));
        // The same image by digest under another name is the same image.
        r["image"] = json!({"image": "registry.local/mirror/busybox@sha256:aaa"});
        ok(&r, &cri()).unwrap();
        // Names compare as containerd stores them.
        let mut r = cri();
        r["image"] = json!({"image": "docker.io/library/busybox:latest"});
        let mut c = cri();
        c["image"] = json!({"image": "busybox"});
        ok(&r, &c).unwrap();
        assert_eq!(normalize_image_name("localhost/podcr/app:1"), "localhost/podcr/app:1");
        assert_eq!(normalize_image_name("quay.io/a/b"), "quay.io/a/b:latest");
        assert_eq!(normalize_image_name("a/b:2"), "docker.io/a/b:2");
        // The image's own command (empty) is not compared.
        let mut r = cri();
        r["command"] = json!([]);
        r["args"] = json!([]);
        r["working_dir"] = json!("");
        ok(&r, &cri()).unwrap();
        let mut other = oci(&DEFAULT_CAPS);
        other["process"]["args"] = json!(["/bin/sh", "-c", "exec evil"]);
        let e = check_container("app", &ContainerView::from_cri(&cri(), None), &ContainerView::from_oci(&other))
            .unwrap_err();
        assert!(field_of(e).contains(": command:"));
    }

    #[test]
    fn a_checkpoint_needing_more_privilege_is_refused_naming_the_field() {
        let cases: Vec<(&str, Value, &str)> = vec![
            ("/linux/security_context/privileged", json!(true), "privileged"),
            ("/linux/security_context/capabilities", json!({"add_capabilities": ["SYS_ADMIN"]}), "capabilities"),
            ("/linux/security_context/namespace_options", json!({"network": 2}), "host network"),
            ("/linux/security_context/namespace_options", json!({"pid": 2}), "host PID namespace"),
            ("/linux/security_context/namespace_options", json!({"ipc": 2}), "host IPC namespace"),
            ("/linux/security_context/run_as_user", json!({"value": 0}), "run-as user"),
            ("/linux/security_context/apparmor", json!({"profile_type": 1}), "apparmor"),
        ];
        for (path, value, field) in cases {
            let mut c = cri();
            let (parent, key) = path.rsplit_once('/').unwrap();
            c.pointer_mut(parent).unwrap()[key] = value;
            let e = field_of(ok(&cri(), &c).unwrap_err());
            assert!(e.contains(&format!(": {field}:")), "{path}: {e}");
        }
        // Unconfined seccomp: a confined request refuses an unconfined checkpoint, not the reverse.
        let mut confined = cri();
        confined["linux"]["security_context"]["seccomp"] = json!({"profile_type": 0});
        assert!(field_of(ok(&confined, &cri()).unwrap_err()).contains(": seccomp:"));
        ok(&cri(), &confined).unwrap();
        // Host namespaces may also come from the checkpoint's pod config.
        let pod = json!({"linux": {"security_context": {"namespace_options": {"network": 2}}}});
        let e = check_container(
            "app",
            &ContainerView::from_cri(&cri(), None),
            &ContainerView::from_cri(&cri(), Some(&pod)),
        )
        .unwrap_err();
        assert!(field_of(e).contains(": host network:"));
    }

    #[test]
    fn a_request_granting_more_restores_with_what_it_grants() {
        let mut r = cri();
        r["linux"]["security_context"]["privileged"] = json!(true);
        ok(&r, &cri()).unwrap();
        let mut r = cri();
        r["linux"]["security_context"]["capabilities"] = json!({"add_capabilities": ["NET_ADMIN"]});
        ok(&r, &cri()).unwrap();
        // Dropping ALL and adding back what the checkpoint had is enough.
        let mut c = cri();
        c["linux"]["security_context"]["capabilities"] =
            json!({"drop_capabilities": ["ALL"], "add_capabilities": ["CHOWN"]});
        ok(&cri(), &c).unwrap();
        let mut r = cri();
        r["linux"]["security_context"]["capabilities"] = json!({"drop_capabilities": ["ALL"]});
        assert!(field_of(ok(&r, &cri()).unwrap_err()).contains("CAP_CHOWN"));
    }

    #[test]
    fn oci_specs_compare_capability_sets_namespaces_and_profiles() {
        let granted = oci(&DEFAULT_CAPS);
        let mut more: Vec<&str> = DEFAULT_CAPS.to_vec();
        more.push("CAP_SYS_ADMIN");
        let e = check_container("app", &ContainerView::from_oci(&granted), &ContainerView::from_oci(&oci(&more)))
            .unwrap_err();
        assert!(field_of(e).contains("CAP_SYS_ADMIN"));
        let mut host = oci(&DEFAULT_CAPS);
        host["linux"]["namespaces"] = json!([{"type": "pid"}, {"type": "ipc"}, {"type": "mount"}]);
        let e =
            check_container("app", &ContainerView::from_oci(&granted), &ContainerView::from_oci(&host)).unwrap_err();
        assert!(field_of(e).contains(": host network:"));
        let mut unconfined = oci(&DEFAULT_CAPS);
        unconfined["linux"].as_object_mut().unwrap().remove("seccomp");
        let e = check_container("app", &ContainerView::from_oci(&granted), &ContainerView::from_oci(&unconfined))
            .unwrap_err();
        assert!(field_of(e).contains(": seccomp:"));
        let mut aa = oci(&DEFAULT_CAPS);
        aa["process"]["apparmorProfile"] = json!("cri-containerd.apparmor.d");
        let mut aa_off = oci(&DEFAULT_CAPS);
        aa_off["process"]["apparmorProfile"] = json!("unconfined");
        let e = check_container("app", &ContainerView::from_oci(&aa), &ContainerView::from_oci(&aa_off)).unwrap_err();
        assert!(field_of(e).contains(": apparmor:"));
        // A spec without a profile (a host without AppArmor) says nothing either way.
        check_container("app", &ContainerView::from_oci(&aa), &ContainerView::from_oci(&granted)).unwrap();
        let mut root = oci(&DEFAULT_CAPS);
        root["process"]["user"]["uid"] = json!(0);
        let e =
            check_container("app", &ContainerView::from_oci(&granted), &ContainerView::from_oci(&root)).unwrap_err();
        assert!(field_of(e).contains(": run-as user:"));
    }

    #[test]
    fn a_spec_that_states_nothing_compares_nothing() {
        let empty = ContainerView::from_oci(&json!({}));
        assert_eq!((empty.capabilities.clone(), empty.seccomp_unconfined, empty.host_network), (None, None, false));
        check_container("app", &ContainerView::from_cri(&cri(), None), &empty).unwrap();
        check_container("app", &empty, &ContainerView::from_cri(&cri(), None)).unwrap();
    }

    #[test]
    fn capability_masks_round_trip() {
        let names: Vec<String> = ["CAP_CHOWN", "CAP_SYS_ADMIN", "CAP_NO_SUCH"].iter().map(|s| s.to_string()).collect();
        let mask = cap_mask(&names);
        assert_eq!(mask, 1 | (1 << 21));
        assert_eq!(cap_names(mask), ["CAP_CHOWN", "CAP_SYS_ADMIN"]);
        assert_eq!(cap_name("sys_admin"), "CAP_SYS_ADMIN");
        assert_eq!(cap_names(1 << 45), ["cap45"]);
    }
}
