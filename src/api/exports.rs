//! ExportService.

use tonic::{Request, Response, Status};

use super::State;
use crate::api::status::to_status;
use crate::error::Error;
use crate::pb;
use crate::pb::export_service_server::ExportService;

pub struct ExportApi {
    #[allow(dead_code)]
    state: State,
}

impl ExportApi {
    pub fn new(state: State) -> Self {
        ExportApi { state }
    }
}

fn not_yet(method: &str) -> Status {
    to_status(Error::unimplemented(
        method,
        format!("{method} is not implemented in this version of exportd yet"),
    ))
}

type Reply<T> = std::result::Result<Response<T>, Status>;

#[tonic::async_trait]
impl ExportService for ExportApi {
    async fn create_export(&self, _: Request<pb::CreateExportRequest>) -> Reply<pb::Export> {
        Err(not_yet("CreateExport"))
    }
    async fn get_export(&self, _: Request<pb::GetExportRequest>) -> Reply<pb::Export> {
        Err(not_yet("GetExport"))
    }
    async fn list_exports(&self, _: Request<pb::ListExportsRequest>) -> Reply<pb::ListExportsResponse> {
        Err(not_yet("ListExports"))
    }
    async fn update_export(&self, _: Request<pb::UpdateExportRequest>) -> Reply<pb::Export> {
        Err(not_yet("UpdateExport"))
    }
    async fn delete_export(&self, _: Request<pb::DeleteExportRequest>) -> Reply<pb::DeleteExportResponse> {
        Err(not_yet("DeleteExport"))
    }
    async fn duplicate_export(&self, _: Request<pb::DuplicateExportRequest>) -> Reply<pb::Export> {
        Err(not_yet("DuplicateExport"))
    }
    async fn detach_connection(&self, _: Request<pb::DetachConnectionRequest>) -> Reply<pb::Export> {
        Err(not_yet("DetachConnection"))
    }
    async fn run_export(&self, _: Request<pb::RunExportRequest>) -> Reply<pb::ExportRun> {
        Err(not_yet("RunExport"))
    }
    async fn run_all_exports(&self, _: Request<pb::RunAllExportsRequest>) -> Reply<pb::RunAllExportsResponse> {
        Err(not_yet("RunAllExports"))
    }
    async fn update_export_schedules(
        &self,
        _: Request<pb::UpdateExportSchedulesRequest>,
    ) -> Reply<pb::UpdateExportSchedulesResponse> {
        Err(not_yet("UpdateExportSchedules"))
    }
    async fn list_export_runs(&self, _: Request<pb::ListExportRunsRequest>) -> Reply<pb::ListExportRunsResponse> {
        Err(not_yet("ListExportRuns"))
    }
    async fn get_export_run(&self, _: Request<pb::GetExportRunRequest>) -> Reply<pb::ExportRun> {
        Err(not_yet("GetExportRun"))
    }
    type WatchExportRunStream = futures::stream::BoxStream<'static, std::result::Result<pb::ExportRun, Status>>;
    async fn watch_export_run(&self, _: Request<pb::WatchExportRunRequest>) -> Reply<Self::WatchExportRunStream> {
        Err(not_yet("WatchExportRun"))
    }
    async fn cancel_export_run(&self, _: Request<pb::CancelExportRunRequest>) -> Reply<pb::ExportRun> {
        Err(not_yet("CancelExportRun"))
    }
}
