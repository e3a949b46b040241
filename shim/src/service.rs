//! The ttrpc Task service: one line per method, from the wire to [`Tasks`] and back.

use std::sync::Arc;

use async_trait::async_trait;
use crust_proto::shim::{Logs, ReopenLogRequest, ReopenLogResponse};
use crust_proto::task::{
    CheckpointTaskRequest, CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest,
    CreateTaskResponse, DeleteRequest, DeleteResponse, ExecProcessRequest, KillRequest,
    PauseRequest, PidsRequest, PidsResponse, ResizePtyRequest, ResumeRequest, ShutdownRequest,
    StartRequest, StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse, Task,
    UpdateTaskRequest, WaitRequest, WaitResponse,
};
use crust_proto::ttrpc::{self, r#async::TtrpcContext};
use crust_proto::wellknown::Empty;

use crate::task::Tasks;

/// Serves the Task API from a [`Tasks`] core.
#[derive(Debug)]
pub struct TaskService {
    tasks: Arc<Tasks>,
}

impl TaskService {
    /// The service for `tasks`.
    pub fn new(tasks: Arc<Tasks>) -> Self {
        Self { tasks }
    }
}

type Reply<T> = ttrpc::Result<T>;

impl TaskService {
    /// Runs a lifecycle change to its end even if the caller hangs up mid-way (its manager
    /// restarting): ttrpc drops a handler whose connection closes, and a create, start or
    /// delete cut short leaves a task half-made or half-deleted that no later call can finish.
    async fn to_completion<T, F, Fut>(&self, operation: F) -> Reply<T>
    where
        F: FnOnce(Arc<Tasks>) -> Fut,
        Fut: std::future::Future<Output = crate::error::Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let finished = tokio::spawn(operation(Arc::clone(&self.tasks)))
            .await
            .map_err(|e| ttrpc::Error::Others(format!("task operation: {e}")))?;
        Ok(finished?)
    }
}

#[async_trait]
impl Task for TaskService {
    async fn state(&self, _: &TtrpcContext, request: StateRequest) -> Reply<StateResponse> {
        log::debug!("state id={} exec_id={}", request.id, request.exec_id);
        Ok(self.tasks.state(request)?)
    }

    async fn create(
        &self,
        _: &TtrpcContext,
        request: CreateTaskRequest,
    ) -> Reply<CreateTaskResponse> {
        log::debug!("create id={} bundle={}", request.id, request.bundle);
        self.to_completion(|tasks| async move { tasks.create(request).await })
            .await
    }

    async fn start(&self, _: &TtrpcContext, request: StartRequest) -> Reply<StartResponse> {
        log::debug!("start id={} exec_id={}", request.id, request.exec_id);
        self.to_completion(|tasks| async move { tasks.start(request).await })
            .await
    }

    async fn delete(&self, _: &TtrpcContext, request: DeleteRequest) -> Reply<DeleteResponse> {
        log::debug!("delete id={} exec_id={}", request.id, request.exec_id);
        self.to_completion(|tasks| async move { tasks.delete(request).await })
            .await
    }

    async fn pids(&self, _: &TtrpcContext, request: PidsRequest) -> Reply<PidsResponse> {
        log::debug!("pids id={}", request.id);
        Ok(self.tasks.pids(request).await?)
    }

    async fn pause(&self, _: &TtrpcContext, request: PauseRequest) -> Reply<Empty> {
        log::debug!("pause id={}", request.id);
        self.tasks.pause(request).await?;
        Ok(Empty::new())
    }

    async fn resume(&self, _: &TtrpcContext, request: ResumeRequest) -> Reply<Empty> {
        log::debug!("resume id={}", request.id);
        self.tasks.resume(request).await?;
        Ok(Empty::new())
    }

    async fn checkpoint(&self, _: &TtrpcContext, request: CheckpointTaskRequest) -> Reply<Empty> {
        log::debug!("checkpoint id={} path={}", request.id, request.path);
        self.tasks.checkpoint(request).await?;
        Ok(Empty::new())
    }

    async fn kill(&self, _: &TtrpcContext, request: KillRequest) -> Reply<Empty> {
        log::debug!(
            "kill id={} exec_id={} signal={} all={}",
            request.id,
            request.exec_id,
            request.signal,
            request.all
        );
        self.tasks.kill(request).await?;
        Ok(Empty::new())
    }

    async fn exec(&self, _: &TtrpcContext, request: ExecProcessRequest) -> Reply<Empty> {
        log::debug!("exec id={} exec_id={}", request.id, request.exec_id);
        self.tasks.exec(request)?;
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _: &TtrpcContext, request: ResizePtyRequest) -> Reply<Empty> {
        log::debug!(
            "resize_pty id={} exec_id={} {}x{}",
            request.id,
            request.exec_id,
            request.width,
            request.height
        );
        self.tasks.resize_pty(request)?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _: &TtrpcContext, request: CloseIORequest) -> Reply<Empty> {
        log::debug!("close_io id={} exec_id={}", request.id, request.exec_id);
        self.tasks.close_io(request)?;
        Ok(Empty::new())
    }

    async fn update(&self, _: &TtrpcContext, request: UpdateTaskRequest) -> Reply<Empty> {
        log::debug!("update id={}", request.id);
        self.tasks.update(request).await?;
        Ok(Empty::new())
    }

    async fn wait(&self, _: &TtrpcContext, request: WaitRequest) -> Reply<WaitResponse> {
        log::debug!("wait id={} exec_id={}", request.id, request.exec_id);
        Ok(self.tasks.wait(request).await?)
    }

    async fn stats(&self, _: &TtrpcContext, request: StatsRequest) -> Reply<StatsResponse> {
        log::debug!("stats id={}", request.id);
        Ok(self.tasks.stats(request)?)
    }

    async fn connect(&self, _: &TtrpcContext, request: ConnectRequest) -> Reply<ConnectResponse> {
        log::debug!("connect id={}", request.id);
        Ok(self.tasks.connect(request))
    }

    async fn shutdown(&self, _: &TtrpcContext, request: ShutdownRequest) -> Reply<Empty> {
        log::debug!("shutdown id={} now={}", request.id, request.now);
        self.tasks.shutdown();
        Ok(Empty::new())
    }
}

/// crust's Logs service (`crust.shim.v1.Logs`), for crustd.
#[async_trait]
impl Logs for TaskService {
    async fn reopen(
        &self,
        _: &TtrpcContext,
        request: ReopenLogRequest,
    ) -> Reply<ReopenLogResponse> {
        log::debug!("reopen log id={} exec_id={}", request.id, request.exec_id);
        self.tasks.reopen_log(request)?;
        Ok(ReopenLogResponse::new())
    }
}
