//! The ttrpc Task service: one line per method, from the wire to [`Tasks`] and back.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use crust_proto::shim::{
    Attach, AttachRequest, AttachResponse, Logs, ReopenLogRequest, ReopenLogResponse,
    create_attach, create_logs,
};
use crust_proto::task::{
    CheckpointTaskRequest, CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest,
    CreateTaskResponse, DeleteRequest, DeleteResponse, ExecProcessRequest, KillRequest,
    PauseRequest, PidsRequest, PidsResponse, ResizePtyRequest, ResumeRequest, ShutdownRequest,
    StartRequest, StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse, Task,
    UpdateTaskRequest, WaitRequest, WaitResponse,
};
use crust_proto::ttrpc::{self, r#async::Service, r#async::TtrpcContext};
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

/// Every ttrpc service the daemon serves, by name: the Task API (under both its names) and
/// crust's own Logs and Attach, all answered by one [`TaskService`].
pub fn services(service: Arc<TaskService>) -> HashMap<String, Service> {
    let mut table = crust_proto::task::services(Arc::clone(&service) as _);
    table.extend(create_logs(Arc::clone(&service) as _));
    table.extend(create_attach(service));
    table
}

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

/// crust's Attach service (`crust.shim.v1.Attach`), for crustd's streaming server.
#[async_trait]
impl Attach for TaskService {
    async fn attach(&self, _: &TtrpcContext, request: AttachRequest) -> Reply<AttachResponse> {
        log::debug!(
            "attach id={} exec_id={} stdout={:?} stderr={:?}",
            request.id,
            request.exec_id,
            request.stdout,
            request.stderr
        );
        self.tasks.attach(request)?;
        Ok(AttachResponse::new())
    }
}

#[cfg(test)]
mod tests {
    use crust_proto::shim::{ATTACH_SERVICE, AttachClient, LOGS_SERVICE};
    use crust_proto::task::{SERVICE_V2, SERVICE_V3};
    use crust_proto::ttrpc::Code;
    use crust_proto::ttrpc::r#async::{Client, Server};

    use super::*;
    use crate::events::Publisher;
    use crate::reaper::Reaper;

    #[tokio::test(flavor = "current_thread")]
    async fn attach_is_served_beside_the_task_api_and_logs() {
        let (events, _sender) = Publisher::start(None, "ns");
        let service = Arc::new(TaskService::new(Tasks::new("ns", Reaper::new(), events)));
        let table = services(service);
        let mut names: Vec<&str> = table.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [SERVICE_V2, SERVICE_V3, ATTACH_SERVICE, LOGS_SERVICE]
        );

        let dir = tempfile::tempdir().unwrap();
        let address = format!("unix://{}", dir.path().join("shim.sock").display());
        let mut server = Server::new()
            .bind(&address)
            .unwrap()
            .register_service(table);
        server.start().await.unwrap();
        let client = AttachClient::new(Client::connect(&address).await.unwrap());
        let code_of = |request: AttachRequest| {
            let client = client.clone();
            async move {
                let context = ttrpc::context::with_timeout(5_000_000_000);
                match client.attach(context, &request).await {
                    Err(ttrpc::Error::RpcStatus(status)) => status.code(),
                    other => panic!("expected a status, got {other:?}"),
                }
            }
        };
        let request = |stdout: &str| AttachRequest {
            id: "nosuch".into(),
            stdout: stdout.into(),
            ..Default::default()
        };
        assert_eq!(code_of(request("/run/x/stdout")).await, Code::NOT_FOUND);
        assert_eq!(code_of(request("x/stdout")).await, Code::INVALID_ARGUMENT);
        assert_eq!(code_of(request("/run/../x")).await, Code::INVALID_ARGUMENT);
        server.shutdown().await.unwrap();
    }
}
