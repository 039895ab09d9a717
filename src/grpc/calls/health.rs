//! Health: `eventstream.EventService/HealthCheck` and `grpc.health.v1.Health` (Check and
//! Watch). The server is healthy while every shard answers a ping within
//! [`PING_TIMEOUT`] and it is not stopping.

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;

use super::dispatch::Call;
use super::Session;
use crate::grpc::service;
use crate::grpc::status::GrpcError;
use crate::proto;
use crate::proto::grpc::health::v1::{
    health_check_response::ServingStatus, HealthCheckRequest, HealthCheckResponse,
};

/// How long every shard has to answer a health ping.
const PING_TIMEOUT: Duration = Duration::from_secs(1);

impl Session {
    /// Whether the server is healthy: every shard answers a ping within 1 s, it is not
    /// stopping, and a required NATS bridge is connected. None when the call was cancelled
    /// meanwhile.
    async fn healthy(self: &Rc<Self>, stream: u32) -> Option<bool> {
        self.calls.borrow_mut().insert(stream, Call::Waiting);
        let answered =
            glommio::timer::timeout(PING_TIMEOUT, async { Ok(self.shard.ping_all().await) })
                .await
                .is_ok();
        self.calls.borrow_mut().remove(&stream)?;
        Some(answered && !self.shard.is_closing() && self.shard.dependencies_serving())
    }

    pub(super) async fn health(self: &Rc<Self>, stream: u32) {
        let Some(healthy) = self.healthy(stream).await else {
            return;
        };
        let response = proto::HealthResponse {
            healthy,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_seconds: self.shard.uptime().as_secs() as i64,
        };
        self.respond(stream, &response);
    }

    /// `grpc.health.v1`: the whole server ("") and `eventstream.EventService` are SERVING
    /// while every shard answers a ping within 1 s and the server is not stopping.
    pub(super) async fn health_v1(
        self: &Rc<Self>,
        stream: u32,
        message: Bytes,
        watch: bool,
    ) -> Result<(), GrpcError> {
        let request: HealthCheckRequest = service::decode(message)?;
        let known = matches!(request.service.as_str(), "" | "eventstream.EventService");
        if !known && !watch {
            return Err(GrpcError::NotFound(format!(
                "unknown service {:?}",
                request.service
            )));
        }
        let Some(healthy) = self.healthy(stream).await else {
            return Ok(()); // cancelled meanwhile
        };
        let status = match (known, healthy) {
            (false, _) => ServingStatus::ServiceUnknown,
            (true, true) => ServingStatus::Serving,
            (true, false) => ServingStatus::NotServing,
        };
        let response = HealthCheckResponse {
            status: status as i32,
        };
        if watch {
            self.send_response_headers(stream);
            self.h2
                .borrow_mut()
                .send_data(stream, &service::framed(&response));
            self.calls.borrow_mut().insert(stream, Call::Watch);
        } else {
            self.respond(stream, &response);
        }
        Ok(())
    }

    /// A Watch's last message, at shutdown.
    pub(super) fn send_not_serving(&self, stream: u32) {
        let response = HealthCheckResponse {
            status: ServingStatus::NotServing as i32,
        };
        self.h2
            .borrow_mut()
            .send_data(stream, &service::framed(&response));
    }
}
