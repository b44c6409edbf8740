//! `containerd.task.v3.Task` (and v2, same wire format) as a thin adaptor over [`Containers`]:
//! convert the request, call the store, convert the reply, map the error.

use std::path::PathBuf;

use async_trait::async_trait;
use containerd_shim::asynchronous::io::Stdio;
use containerd_shim_protos::{
    api::{
        CheckpointTaskRequest, CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
        DeleteRequest, DeleteResponse, ExecProcessRequest, KillRequest, PauseRequest, PidsRequest, PidsResponse,
        ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest, StartResponse, StateRequest, StateResponse,
        StatsRequest, StatsResponse, UpdateTaskRequest, WaitRequest, WaitResponse,
    },
    protobuf::{
        well_known_types::{any::Any, empty::Empty},
        MessageFull,
    },
    shim::oci::{CheckpointOptions, Options, ProcessDetails},
    shim_async::Task,
    ttrpc::{self, r#async::TtrpcContext},
    types::task::{ProcessInfo, Status as ProtoStatus},
};
use tracing::{info, instrument};

use super::{lifecycle::CreateArgs, CheckpointArgs, Containers, CriuFlags, Status};
use crate::error::Error;

pub struct TaskService {
    pub store: Containers,
}

type R<T> = ttrpc::Result<T>;

/// Decodes `any` as `M` when its type URL names `M`; other types (or none) give `None`.
fn decode<M: MessageFull>(any: Option<&Any>) -> Result<Option<M>, Error> {
    match any {
        Some(a) if a.type_url.ends_with(M::descriptor().full_name()) => Ok(Some(M::parse_from_bytes(&a.value)?)),
        _ => Ok(None),
    }
}

fn proto_status(s: Status) -> ProtoStatus {
    match s {
        Status::Created => ProtoStatus::CREATED,
        Status::Running => ProtoStatus::RUNNING,
        Status::Paused => ProtoStatus::PAUSED,
        Status::Stopped => ProtoStatus::STOPPED,
    }
}

#[async_trait]
impl Task for TaskService {
    #[instrument(skip_all, fields(id = %req.id))]
    async fn create(&self, _ctx: &TtrpcContext, req: CreateTaskRequest) -> R<CreateTaskResponse> {
        // containerd.runc.v1.Options (from ctr or CRI's task API endpoint) or anything else: only
        // the CRIU work path matters here.
        let opts: Option<Options> = decode(req.options.as_ref())?;
        let args = CreateArgs {
            id: req.id.clone(),
            bundle: PathBuf::from(&req.bundle),
            rootfs: req.rootfs.clone(),
            stdio: Stdio::new(&req.stdin, &req.stdout, &req.stderr, req.terminal),
            checkpoint: (!req.checkpoint.is_empty()).then(|| PathBuf::from(&req.checkpoint)),
            criu_work_path: opts.map(|o| o.criu_work_path).filter(|p| !p.is_empty()).map(PathBuf::from),
        };
        let pid = self.store.create(args).await?;
        Ok(CreateTaskResponse { pid, ..Default::default() })
    }

    #[instrument(skip_all, fields(id = %req.id, exec = %req.exec_id))]
    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> R<StartResponse> {
        let pid = self.store.start(&req.id, &req.exec_id).await?;
        Ok(StartResponse { pid, ..Default::default() })
    }

    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> R<StateResponse> {
        let (c, p) = self.store.process(&req.id, &req.exec_id)?;
        let status = if req.exec_id.is_empty() {
            c.status()
        } else if p.exit().is_some() {
            Status::Stopped
        } else if p.started() {
            Status::Running
        } else {
            Status::Created
        };
        let exit = p.exit();
        Ok(StateResponse {
            id: if req.exec_id.is_empty() { req.id.clone() } else { req.exec_id.clone() },
            bundle: c.bundle.to_string_lossy().into_owned(),
            pid: p.pid(),
            status: proto_status(status).into(),
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exit_status: exit.map(|e| e.status).unwrap_or_default(),
            exited_at: exit.map(|e| e.at.into()).into(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    #[instrument(skip_all, fields(id = %req.id, exec = %req.exec_id))]
    async fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> R<DeleteResponse> {
        let (pid, exit) = self.store.delete(&req.id, &req.exec_id).await?;
        Ok(DeleteResponse {
            pid,
            exit_status: exit.status,
            exited_at: Some(exit.at.into()).into(),
            ..Default::default()
        })
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> R<PidsResponse> {
        let mut processes = Vec::new();
        for (pid, exec_id) in self.store.pids(&req.id).await? {
            let mut info = ProcessInfo { pid, ..Default::default() };
            if !exec_id.is_empty() {
                let details = ProcessDetails { exec_id, ..Default::default() };
                info.info = Some(containerd_shim::util::convert_to_any(Box::new(details)).map_err(Error::from)?).into();
            }
            processes.push(info);
        }
        Ok(PidsResponse { processes, ..Default::default() })
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> R<Empty> {
        self.store.pause(&req.id).await?;
        Ok(Empty::new())
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> R<Empty> {
        self.store.resume(&req.id).await?;
        Ok(Empty::new())
    }

    #[instrument(skip_all, fields(id = %req.id, path = %req.path))]
    async fn checkpoint(&self, _ctx: &TtrpcContext, req: CheckpointTaskRequest) -> R<Empty> {
        let opts: CheckpointOptions = decode(req.options.as_ref())?.unwrap_or_default();
        let (c, _) = self.store.process(&req.id, "")?;
        // Like the Go shim: the request path is the image dir; the work dir is scratch.
        let scratch = opts.work_path.is_empty();
        let work = if scratch { c.bundle.join("criu-work") } else { PathBuf::from(&opts.work_path) };
        let args = CheckpointArgs {
            image_path: PathBuf::from(&req.path),
            work_path: work.clone(),
            leave_running: !opts.exit,
            tcp_established: opts.open_tcp,
            file_locks: opts.file_locks,
        };
        let flags = CriuFlags {
            tcp_established: opts.open_tcp,
            file_locks: opts.file_locks,
            ext_unix_sk: opts.external_unix_sockets,
            shell_job: opts.terminal,
        };
        let res = self.store.checkpoint_with(&req.id, &args, flags).await;
        if scratch && res.is_ok() {
            let _ = tokio::fs::remove_dir_all(&work).await;
        }
        res?;
        Ok(Empty::new())
    }

    #[instrument(skip_all, fields(id = %req.id, exec = %req.exec_id, signal = req.signal))]
    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> R<Empty> {
        self.store.kill_process(&req.id, &req.exec_id, req.signal, req.all).await?;
        Ok(Empty::new())
    }

    #[instrument(skip_all, fields(id = %req.id, exec = %req.exec_id))]
    async fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> R<Empty> {
        let spec = req.spec.as_ref().map(|a| a.value.clone()).unwrap_or_default();
        let stdio = Stdio::new(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        self.store.add_exec(&req.id, &req.exec_id, stdio, spec)?;
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> R<Empty> {
        self.store.resize_pty(&req.id, &req.exec_id, req.width, req.height)?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> R<Empty> {
        self.store.close_io(&req.id, &req.exec_id)?;
        Ok(Empty::new())
    }

    async fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> R<Empty> {
        // containerd marshals the OCI LinuxResources as JSON inside the Any.
        let json = req.resources.as_ref().map(|a| a.value.clone()).unwrap_or_default();
        self.store.update(&req.id, json).await?;
        Ok(Empty::new())
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> R<WaitResponse> {
        let (_, p) = self.store.process(&req.id, &req.exec_id)?;
        let exit = p.wait().await;
        Ok(WaitResponse { exit_status: exit.status, exited_at: Some(exit.at.into()).into(), ..Default::default() })
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> R<StatsResponse> {
        let stats = self.store.stats(&req.id).await?;
        Ok(StatsResponse { stats: Some(stats).into(), ..Default::default() })
    }

    async fn connect(&self, _ctx: &TtrpcContext, req: ConnectRequest) -> R<ConnectResponse> {
        // containerd reconnects with the sandbox id after a restart, which is no container
        // here: answer with the shim pid alone rather than NotFound (which would make
        // containerd delete the sandbox).
        let task_pid = self.store.process(&req.id, "").map(|(_, p)| p.pid()).unwrap_or(0);
        Ok(ConnectResponse { shim_pid: std::process::id(), task_pid, ..Default::default() })
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, req: ShutdownRequest) -> R<Empty> {
        if self.store.may_shutdown() {
            info!(id = %req.id, "last container gone, shutting down");
            self.store.request_exit();
        }
        Ok(Empty::new())
    }
}
