//! The other replicas' notes ([`Note`]) on [`CHANNEL`], read by LISTEN on a connection of the
//! store's own (not the pool's), opened again when it is lost.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{ACQUIRE_TIMEOUT, CHANNEL, Note, PgStore};

impl PgStore {
    /// The notes of the other replicas, until `shutdown`. The listening connection is its own
    /// (not the pool's); when it is lost it is opened again, at most once a second. Notes sent
    /// meanwhile are missed: the router's polling catches up with them.
    pub fn subscribe(&self, shutdown: CancellationToken) -> mpsc::Receiver<Note> {
        let (sender, notes) = mpsc::channel(1024);
        let options = std::sync::Arc::clone(&self.options);
        let origin = self.origin.clone();
        tokio::spawn(async move {
            while !shutdown.is_cancelled() {
                let listened = tokio::select! {
                    () = shutdown.cancelled() => return,
                    listened = listen(&options, &origin, &sender) => listened,
                };
                if let Err(err) = listened {
                    tracing::debug!(error = %err, "listening for other replicas failed; again in 1 s");
                }
                if sender.is_closed() {
                    return;
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
        notes
    }
}

/// Listens on [`CHANNEL`] and forwards the notes of other replicas until the connection is lost.
async fn listen(
    options: &PgConnectOptions,
    origin: &str,
    sender: &mpsc::Sender<Note>,
) -> Result<(), sqlx::Error> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options.clone())
        .await?;
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.listen(CHANNEL).await?;
    while let Some(notification) = listener.try_recv().await? {
        let Some((from, note)) = Note::parse(notification.payload()) else {
            continue;
        };
        if from != origin && sender.send(note).await.is_err() {
            break;
        }
    }
    pool.close().await;
    Ok(())
}
