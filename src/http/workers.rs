//! Worker threads for a listener's connections, one single-threaded runtime each, as nginx
//! runs worker processes. A connection stays on the worker it was handed to for its whole life,
//! with everything its requests start (their upstream calls go out on that worker's own
//! connection pool): no task hops between threads and no worker wakes another to share work.
//! Under concurrency that means fewer system calls and more requests per second than one
//! work-stealing runtime (the README's gateway-overhead section has the figures).

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

/// Single-threaded runtimes on their own threads; they stop when this is dropped (tasks still
/// on them are dropped with them).
pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    _stops: Vec<oneshot::Sender<()>>,
}

impl Workers {
    /// Starts `count` worker threads named `name-0`, `name-1`, …; 0: one per core.
    pub fn start(count: usize, name: &str) -> std::io::Result<Self> {
        let count = match count {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let mut handles = Vec::new();
        let mut stops = Vec::new();
        for i in 0..count {
            let runtime = Builder::new_current_thread().enable_all().build()?;
            handles.push(runtime.handle().clone());
            let (stop, stopped) = oneshot::channel::<()>();
            stops.push(stop);
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                })?;
        }
        Ok(Self {
            handles,
            next: AtomicUsize::new(0),
            _stops: stops,
        })
    }

    /// How many workers there are.
    pub fn count(&self) -> usize {
        self.handles.len()
    }

    /// The worker for the next connection, in turn.
    pub fn next(&self) -> &Handle {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        &self.handles[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_dealt_in_turn_to_distinct_threads() {
        let workers = Workers::start(2, "test-worker").expect("workers");
        assert_eq!(workers.count(), 2);
        let name = |w: &Workers| {
            let (tx, rx) = std::sync::mpsc::channel();
            w.next().spawn(async move {
                let _ = tx.send(std::thread::current().name().map(String::from));
            });
            rx.recv().expect("the worker ran the task")
        };
        let names: Vec<_> = (0..4).map(|_| name(&workers)).collect();
        assert_eq!(
            names,
            [
                "test-worker-0",
                "test-worker-1",
                "test-worker-0",
                "test-worker-1"
            ]
            .map(|n| Some(n.to_string()))
        );
    }
}
