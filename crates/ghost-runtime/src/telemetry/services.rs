//! Five services in one process, five `service.name`s in the trace viewer.
//!
//! Under `ghost up` every span passes through one subscriber and one tracer provider, whose
//! resource can name only one service. So each span is attributed when it starts
//! ([`ServiceTracer`]) and each exported batch is split by that attribution ([`ByService`]):
//!
//! - a span that names its service (`ghost.service`, set on every server span) keeps it;
//! - a span emitted by a service crate (its tracing target's first segment is `gateway`,
//!   `router`, `executor`, `summarizer` or `alerter`) belongs to that service;
//! - a span from a shared crate (`ghost_runtime`, tower, tonic, …) inherits its parent's
//!   service, which the tracer remembers while the parent is alive (tracing closes a parent only
//!   after its children, so a child always finds it);
//! - anything else belongs to [`LOCAL_SERVICE`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    Span as _, SpanBuilder, SpanContext, SpanId, Status, TraceContextExt, Tracer,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracer, SpanData, SpanExporter};

/// The span attribute naming the service a span belongs to.
pub const SERVICE_ATTRIBUTE: &str = "ghost.service";

/// The services `ghost up` runs, by the name their crates, binaries and spans use.
pub const SERVICES: [&str; 5] = ["gateway", "router", "executor", "summarizer", "alerter"];

/// The service of spans no service emitted (the `ghost` command itself).
pub const LOCAL_SERVICE: &str = "ghost";

/// `name` as one of [`SERVICES`], if it is one.
fn known(name: &str) -> Option<&'static str> {
    SERVICES.iter().copied().find(|service| *service == name)
}

/// Live spans' services, by span id.
type Attribution = Arc<Mutex<HashMap<SpanId, &'static str>>>;

/// A tracer that adds [`SERVICE_ATTRIBUTE`] to every span it starts.
#[derive(Debug)]
pub(super) struct ServiceTracer {
    inner: SdkTracer,
    live: Attribution,
}

impl ServiceTracer {
    pub(super) fn new(inner: SdkTracer) -> Self {
        Self {
            inner,
            live: Attribution::default(),
        }
    }

    fn service_of(&self, builder: &SpanBuilder, parent: &Context) -> &'static str {
        let attribute = |key: &str| {
            builder
                .attributes
                .iter()
                .flatten()
                .find(|kv| kv.key.as_str() == key)
                .map(|kv| kv.value.as_str().into_owned())
        };
        if let Some(service) = attribute(SERVICE_ATTRIBUTE).as_deref().and_then(known) {
            return service;
        }
        // tracing-opentelemetry records the span's target and module path.
        for key in ["target", "code.module.name"] {
            if let Some(service) = attribute(key)
                .as_deref()
                .and_then(|path| path.split("::").next())
                .and_then(known)
            {
                return service;
            }
        }
        let parent_span = parent.span();
        let parent_context = parent_span.span_context();
        if parent_context.is_valid() && !parent_context.is_remote() {
            let live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(service) = live.get(&parent_context.span_id()) {
                return service;
            }
        }
        LOCAL_SERVICE
    }
}

impl Tracer for ServiceTracer {
    type Span = ServiceSpan;

    fn build_with_context(&self, mut builder: SpanBuilder, parent_cx: &Context) -> Self::Span {
        let service = self.service_of(&builder, parent_cx);
        let attributes = builder.attributes.get_or_insert_with(Vec::new);
        if !attributes
            .iter()
            .any(|kv| kv.key.as_str() == SERVICE_ATTRIBUTE)
        {
            attributes.push(KeyValue::new(SERVICE_ATTRIBUTE, service));
        }
        let inner = self.inner.build_with_context(builder, parent_cx);
        let id = inner.span_context().span_id();
        if id != SpanId::INVALID {
            self.live
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(id, service);
        }
        ServiceSpan {
            inner,
            live: Arc::clone(&self.live),
        }
    }
}

/// An SDK span that is forgotten by its [`ServiceTracer`] when dropped.
#[derive(Debug)]
pub(super) struct ServiceSpan {
    inner: opentelemetry_sdk::trace::Span,
    live: Attribution,
}

impl Drop for ServiceSpan {
    fn drop(&mut self) {
        let id = self.inner.span_context().span_id();
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }
}

impl opentelemetry::trace::Span for ServiceSpan {
    fn add_event_with_timestamp<T>(
        &mut self,
        name: T,
        timestamp: SystemTime,
        attributes: Vec<KeyValue>,
    ) where
        T: Into<std::borrow::Cow<'static, str>>,
    {
        self.inner
            .add_event_with_timestamp(name, timestamp, attributes);
    }

    fn span_context(&self) -> &SpanContext {
        self.inner.span_context()
    }

    fn is_recording(&self) -> bool {
        self.inner.is_recording()
    }

    fn set_attribute(&mut self, attribute: KeyValue) {
        self.inner.set_attribute(attribute);
    }

    fn set_status(&mut self, status: Status) {
        self.inner.set_status(status);
    }

    fn update_name<T>(&mut self, new_name: T)
    where
        T: Into<std::borrow::Cow<'static, str>>,
    {
        self.inner.update_name(new_name);
    }

    fn add_link(&mut self, span_context: SpanContext, attributes: Vec<KeyValue>) {
        self.inner.add_link(span_context, attributes);
    }

    fn end_with_timestamp(&mut self, timestamp: SystemTime) {
        self.inner.end_with_timestamp(timestamp);
    }
}

/// `resource` with `service.name` set to `service`.
fn named(resource: &Resource, service: &'static str) -> Resource {
    Resource::builder_empty()
        .with_attributes(
            resource
                .iter()
                .map(|(key, value)| KeyValue::new(key.clone(), value.clone())),
        )
        .with_service_name(service)
        .build()
}

/// An exporter per service, each with its own `service.name`: a batch is split by
/// [`SERVICE_ATTRIBUTE`] and each part goes out under its service's resource.
#[derive(Debug)]
pub(super) struct ByService<E> {
    /// One per [`SERVICES`] entry, then [`LOCAL_SERVICE`]'s.
    parts: Vec<(&'static str, E)>,
}

impl<E: SpanExporter> ByService<E> {
    /// Builds one exporter per service with `make`.
    pub(super) fn new(make: impl Fn() -> anyhow::Result<E>) -> anyhow::Result<Self> {
        let mut parts = Vec::with_capacity(SERVICES.len() + 1);
        for service in SERVICES.into_iter().chain([LOCAL_SERVICE]) {
            let mut exporter = make()?;
            exporter.set_resource(&named(&Resource::builder().build(), service));
            parts.push((service, exporter));
        }
        Ok(Self { parts })
    }

    fn part_of(&self, span: &SpanData) -> usize {
        let service = span
            .attributes
            .iter()
            .find(|kv| kv.key.as_str() == SERVICE_ATTRIBUTE)
            .map(|kv| kv.value.as_str());
        self.parts
            .iter()
            .position(|(name, _)| Some(*name) == service.as_deref())
            .unwrap_or(self.parts.len() - 1)
    }

    /// Calls every exporter (even after one fails) and answers the first failure.
    fn each(&self, call: impl Fn(&E) -> OTelSdkResult) -> OTelSdkResult {
        let results: Vec<OTelSdkResult> = self
            .parts
            .iter()
            .map(|(_, exporter)| call(exporter))
            .collect();
        results.into_iter().find(Result::is_err).unwrap_or(Ok(()))
    }
}

impl<E: SpanExporter> SpanExporter for ByService<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let mut groups: Vec<Vec<SpanData>> = self.parts.iter().map(|_| Vec::new()).collect();
        for span in batch {
            let part = self.part_of(&span);
            groups[part].push(span);
        }
        let mut outcome = Ok(());
        for ((_, exporter), group) in self.parts.iter().zip(groups) {
            if group.is_empty() {
                continue;
            }
            let result = exporter.export(group).await;
            outcome = outcome.and(result);
        }
        outcome
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.each(|exporter| exporter.shutdown_with_timeout(timeout))
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.each(SpanExporter::force_flush)
    }

    fn set_resource(&mut self, resource: &Resource) {
        for (service, exporter) in &mut self.parts {
            exporter.set_resource(&named(resource, service));
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// An exporter that keeps what it is given.
    #[derive(Debug, Clone, Default)]
    struct Recording {
        spans: Arc<Mutex<Vec<SpanData>>>,
        resource: Arc<Mutex<Option<Resource>>>,
    }

    impl SpanExporter for Recording {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.spans.lock().unwrap().extend(batch);
            Ok(())
        }

        fn set_resource(&mut self, resource: &Resource) {
            *self.resource.lock().unwrap() = Some(resource.clone());
        }
    }

    impl Recording {
        fn service_name(&self) -> String {
            let resource = self.resource.lock().unwrap();
            let name = resource
                .as_ref()
                .and_then(|r| r.get(&opentelemetry::Key::from_static_str("service.name")));
            name.map(|value| value.as_str().into_owned())
                .unwrap_or_default()
        }

        fn span_names(&self) -> Vec<String> {
            let mut names: Vec<String> = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .map(|span| span.name.to_string())
                .collect();
            names.sort();
            names
        }
    }

    #[test]
    fn only_the_five_services_are_known() {
        assert_eq!(known("router"), Some("router"));
        assert_eq!(known("ghost_runtime"), None);
        assert_eq!(known(""), None);
    }

    #[test]
    fn spans_go_out_under_the_service_that_emitted_them_or_their_parents() {
        let made = Arc::new(Mutex::new(Vec::new()));
        let exporter = ByService::new(|| {
            let recording = Recording::default();
            made.lock().unwrap().push(recording.clone());
            Ok(recording)
        })
        .unwrap();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter)
            .build();
        let tracer = ServiceTracer::new(provider.tracer("test"));
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(tracer));
        tracing::subscriber::with_default(subscriber, || {
            let rpc = tracing::info_span!(target: "router::grpc", "rpc");
            let _rpc = rpc.enter();
            // A shared crate's span inherits the service it runs in, and so do its children.
            let shared = tracing::info_span!(target: "ghost_runtime::serve", "shared");
            let _shared = shared.enter();
            tracing::info_span!(target: "tower::timeout", "deeper").in_scope(|| {});
            // A span that names its service keeps it, wherever it comes from.
            tracing::info_span!(
                target: "ghost_runtime::propagation",
                "named",
                ghost.service = "summarizer"
            )
            .in_scope(|| {});
            tracing::info_span!(target: "alerter::outbox", "explicit").in_scope(|| {});
        });
        let subscriber = tracing_subscriber::registry().with(
            tracing_opentelemetry::layer().with_tracer(ServiceTracer::new(provider.tracer("test"))),
        );
        tracing::subscriber::with_default(subscriber, || {
            tracing::info_span!(target: "ghost_cli::up", "orphan").in_scope(|| {});
        });
        provider.force_flush().unwrap();

        let made = made.lock().unwrap();
        let by_name: HashMap<String, Vec<String>> = made
            .iter()
            .map(|recording| (recording.service_name(), recording.span_names()))
            .collect();
        let expect = |service: &str, spans: &[&str]| {
            assert_eq!(
                by_name.get(service).map(Vec::as_slice),
                Some(
                    spans
                        .iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>()
                        .as_slice()
                ),
                "{service}: {by_name:?}"
            );
        };
        expect("router", &["deeper", "rpc", "shared"]);
        expect("summarizer", &["named"]);
        expect("alerter", &["explicit"]);
        expect("ghost", &["orphan"]);
        expect("gateway", &[]);
        expect("executor", &[]);
        // Every span also says which service it is, for viewers that show span attributes.
        for recording in made.iter() {
            for span in recording.spans.lock().unwrap().iter() {
                let attribute = span
                    .attributes
                    .iter()
                    .find(|kv| kv.key.as_str() == SERVICE_ATTRIBUTE)
                    .map(|kv| kv.value.as_str().into_owned());
                assert_eq!(attribute, Some(recording.service_name()), "{span:?}");
            }
        }
    }
}
