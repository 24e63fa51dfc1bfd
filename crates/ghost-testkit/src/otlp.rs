//! A real OTLP/gRPC trace collector for tests: services export to it exactly as they would to
//! Jaeger or an OpenTelemetry Collector, and tests read back the spans it received.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;

/// One span as received, ids in lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedSpan {
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits, empty for a root span.
    pub parent_span_id: String,
    /// The span name.
    pub name: String,
    /// The `service.name` of the resource the span was exported under (empty if none).
    pub service_name: String,
    /// String, integer and boolean attributes, rendered as text.
    pub attributes: HashMap<String, String>,
}

#[derive(Clone, Default)]
struct Recorder {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tonic::async_trait]
impl TraceService for Recorder {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource in request.into_inner().resource_spans {
            let service_name = resource
                .resource
                .iter()
                .flat_map(|resource| &resource.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(name) => Some(name.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    let attributes = span
                        .attributes
                        .iter()
                        .filter_map(|kv| {
                            let value = match kv.value.as_ref()?.value.as_ref()? {
                                Value::StringValue(s) => s.clone(),
                                Value::IntValue(i) => i.to_string(),
                                Value::BoolValue(b) => b.to_string(),
                                Value::DoubleValue(d) => d.to_string(),
                                _ => return None,
                            };
                            Some((kv.key.clone(), value))
                        })
                        .collect();
                    received.push(ReceivedSpan {
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        name: span.name,
                        service_name: service_name.clone(),
                        attributes,
                    });
                }
            }
        }
        self.spans
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(received);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// A running OTLP/gRPC receiver (on 127.0.0.1 unless started elsewhere); stops when dropped.
pub struct OtlpReceiver {
    addr: SocketAddr,
    recorder: Recorder,
    _stop: oneshot::Sender<()>,
}

impl OtlpReceiver {
    /// Starts the receiver on a free loopback port.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts the receiver on `addr` (e.g. the host side of a test's veth pair, port 0), so
    /// processes in another network namespace can export to it.
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let recorder = Recorder::default();
        let (stop, stopped) = oneshot::channel::<()>();
        let service = TraceServiceServer::new(recorder.clone());
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Self {
            addr,
            recorder,
            _stop: stop,
        })
    }

    /// The endpoint to export to, e.g. `http://127.0.0.1:4317`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.recorder
            .spans
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Spans of one trace, polling until `done` accepts them or `timeout` passes.
    pub async fn wait_for_trace<F>(
        &self,
        trace_id: &str,
        timeout: Duration,
        done: F,
    ) -> Vec<ReceivedSpan>
    where
        F: Fn(&[ReceivedSpan]) -> bool,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let spans: Vec<ReceivedSpan> = self
                .spans()
                .into_iter()
                .filter(|span| span.trace_id == trace_id)
                .collect();
            if done(&spans) || tokio::time::Instant::now() >= deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
