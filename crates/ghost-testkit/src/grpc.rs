//! Serving a stand-in for another service over gRPC.

use tokio::sync::oneshot;

/// Serves `routes` (a stand-in for another service) on `listener` until the returned sender
/// is dropped.
pub fn serve_routes(
    routes: tonic::service::Routes,
    listener: tokio::net::TcpListener,
) -> oneshot::Sender<()> {
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            )
            .await
            .unwrap();
    });
    stop
}
