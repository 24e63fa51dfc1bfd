//! gRPC reflection (both versions), built on its first call.

use std::sync::{Arc, OnceLock};

/// `routes` with both reflection versions added: grpcurl speaks v1, many clients (Python
/// grpcio) still v1alpha. Only `grpc_names` (this service's own gRPC services) and health are
/// advertised, not every Ghost Runner proto.
pub(super) fn add_reflection(
    routes: tonic::service::Routes,
    grpc_names: &[&'static str],
) -> tonic::service::Routes {
    let grpc_names = grpc_names.to_vec();
    let reflection = move || {
        let builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(ghost_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health");
        grpc_names.iter().fold(builder, |builder, grpc_name| {
            builder.with_service_name(*grpc_name)
        })
    };
    routes
        .add_service(Lazy::new({
            let reflection = reflection.clone();
            move || reflection().build_v1()
        }))
        .add_service(Lazy::new(move || reflection().build_v1alpha()))
}

/// A gRPC service built on its first call. Reflection decodes every descriptor it serves when
/// it is built (about 150 KB a service, once per protocol version), and few clients ever ask:
/// built at start, that memory stayed resident in every idle service.
struct Lazy<S, F> {
    built: Arc<OnceLock<Result<S, String>>>,
    make: Arc<F>,
}

impl<S, F> Lazy<S, F> {
    fn new(make: F) -> Self {
        Self {
            built: Arc::new(OnceLock::new()),
            make: Arc::new(make),
        }
    }
}

impl<S, F> Clone for Lazy<S, F> {
    fn clone(&self) -> Self {
        Self {
            built: Arc::clone(&self.built),
            make: Arc::clone(&self.make),
        }
    }
}

impl<S: tonic::server::NamedService, F> tonic::server::NamedService for Lazy<S, F> {
    const NAME: &'static str = S::NAME;
}

type LazyFuture<E> =
    std::pin::Pin<Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, E>> + Send>>;

impl<S, F, E, B> tower::Service<http::Request<B>> for Lazy<S, F>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    F: Fn() -> Result<S, E>,
    E: std::fmt::Display,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = LazyFuture<S::Error>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        // The service may not be built yet: its own readiness is awaited in `call`.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let built = self.built.get_or_init(|| {
            (self.make)().map_err(|err| {
                tracing::error!(service = S::NAME, error = %err, "cannot build this gRPC service");
                err.to_string()
            })
        });
        match built {
            Ok(service) => {
                let mut service = service.clone();
                Box::pin(async move {
                    std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
                    service.call(request).await
                })
            }
            Err(err) => {
                let status = tonic::Status::internal(format!("cannot build this service: {err}"));
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}
