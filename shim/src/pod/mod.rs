//! The pod side of the shim: the sandbox ttrpc service, the Checkpoint service, the anchor
//! ("holder") process and the runc backend of the sandbox controller. (Stub until filled in.)

pub mod holder;

use std::collections::HashMap;

use ttrpc::r#async::Service;

/// Extra ttrpc services the pod side serves on the shim socket, next to the Task service.
/// `serve` calls this once and registers each entry.
pub fn services() -> HashMap<String, Service> {
    HashMap::new()
}
