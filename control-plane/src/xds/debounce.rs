//! Debouncing model changes into push epochs.
//!
//! A `kubectl apply` of a directory or an editor's save produces bursts of changes; pushing each
//! one to every proxy would churn Envoy for nothing. Like istiod, the server waits for a quiet
//! period after the last change (about 100 ms) but never longer than a bounded maximum delay
//! after the first, so a steady trickle of changes cannot starve pushes. The first model (the
//! sources' initial sync) is published at once. All timing goes through tokio's clock.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::model::Model;

/// Debounce timings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DebounceConfig {
    /// How long the model must stay unchanged before a push.
    pub quiet: Duration,
    /// The longest a change may wait for a push, however busy the sources are.
    pub max_delay: Duration,
}

impl Default for DebounceConfig {
    fn default() -> Self {
        DebounceConfig {
            quiet: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        }
    }
}

/// A model to push, with when its first unpushed change happened (for push latency).
#[derive(Debug)]
pub struct Epoch {
    /// Increases by one per published model, starting at 1.
    pub id: u64,
    /// The model.
    pub model: Arc<Model>,
    /// When the oldest change folded into this epoch was seen.
    pub changed_at: Instant,
}

/// The channel connections watch: `None` until the sources' initial sync.
pub type Epochs = watch::Receiver<Option<Arc<Epoch>>>;

/// Spawns the debouncer. `models` carries `None` until the sources have synced. The task ends
/// when the model sender or every epoch receiver is dropped.
pub fn debounce(
    mut models: watch::Receiver<Option<Arc<Model>>>,
    config: DebounceConfig,
) -> (Epochs, JoinHandle<()>) {
    let (tx, rx) = watch::channel(None);
    let task = tokio::spawn(async move {
        let mut id = 0;
        let mut pending = models.borrow_and_update().clone();
        let mut changed_at = Instant::now();
        loop {
            if let Some(model) = pending.take() {
                id += 1;
                tracing::debug!(epoch = id, "push epoch published");
                tx.send_replace(Some(Arc::new(Epoch {
                    id,
                    model,
                    changed_at,
                })));
            }
            tokio::select! {
                changed = models.changed() => if changed.is_err() { return },
                () = tx.closed() => return,
            }
            changed_at = Instant::now();
            if id > 0 {
                let deadline = changed_at + config.max_delay;
                let mut last = changed_at;
                loop {
                    let wake = (last + config.quiet).min(deadline);
                    tokio::select! {
                        () = tokio::time::sleep_until(wake) => break,
                        changed = models.changed() => {
                            if changed.is_err() { return }
                            last = Instant::now();
                        }
                    }
                }
            }
            pending = models.borrow_and_update().clone();
        }
    });
    (rx, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Option<Arc<Model>> {
        Some(Arc::new(Model::default()))
    }

    async fn next(rx: &mut Epochs) -> (u64, Instant) {
        rx.changed().await.unwrap();
        let epoch = rx.borrow_and_update().clone().unwrap();
        (epoch.id, Instant::now())
    }

    #[tokio::test(start_paused = true)]
    async fn initial_sync_is_immediate_then_bursts_coalesce() {
        let (tx, rx) = watch::channel(None);
        let (mut epochs, _task) = debounce(rx, DebounceConfig::default());
        assert!(epochs.borrow().is_none(), "nothing before the initial sync");
        let start = Instant::now();
        tx.send_replace(model());
        assert_eq!(next(&mut epochs).await, (1, start));

        // A burst of three changes 50 ms apart: one push, 100 ms after the last.
        for _ in 0..3 {
            tx.send_replace(model());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (id, at) = next(&mut epochs).await;
        assert_eq!(id, 2);
        assert_eq!(at - start, Duration::from_millis(200));
    }

    #[tokio::test(start_paused = true)]
    async fn steady_changes_are_pushed_by_the_max_delay() {
        let (tx, rx) = watch::channel(model());
        let (mut epochs, _task) = debounce(rx, DebounceConfig::default());
        let start = Instant::now();
        assert_eq!(next(&mut epochs).await, (1, start));
        let feeder = tokio::spawn(async move {
            loop {
                tx.send_replace(model());
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
        });
        let (id, at) = next(&mut epochs).await;
        assert_eq!(id, 2);
        assert_eq!(at - start, Duration::from_secs(1));
        feeder.abort();
    }
}
