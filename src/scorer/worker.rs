//! The scorer worker: one OS thread owns the scorer, async callers reach it through a bounded
//! queue, and jobs waiting in the queue are scored together as one batch.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::{score_each, RequestScores, Score, ScoreError, ScoreRequest};

/// Why a job was not scored.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The queue is full: the caller should shed load (429/503).
    #[error("the scoring queue is full")]
    QueueFull,
    /// The worker thread has stopped.
    #[error("the scorer has stopped")]
    Stopped,
    /// The scorer failed.
    #[error(transparent)]
    Score(#[from] ScoreError),
}

struct Job {
    requests: Vec<ScoreRequest>,
    reply: oneshot::Sender<Result<Vec<RequestScores>, ScoreError>>,
    span: tracing::Span,
}

/// Called with the number of texts of each batch the worker scores (for metrics).
pub type BatchHook = Arc<dyn Fn(usize) + Send + Sync>;

/// A cloneable handle to the worker thread.
#[derive(Clone)]
pub struct ScorerHandle {
    tx: mpsc::Sender<Job>,
    scorer: Arc<dyn Score>,
}

impl ScorerHandle {
    /// Starts the worker thread. `queue` jobs may wait; up to `max_batch` requests from waiting
    /// jobs are scored in one batch. Jobs whose caller has gone are dropped unscored.
    pub fn spawn(scorer: Arc<dyn Score>, queue: usize, max_batch: usize) -> std::io::Result<Self> {
        Self::spawn_with_hook(scorer, queue, max_batch, Arc::new(|_| {}))
    }

    /// [`ScorerHandle::spawn`], calling `on_batch` with each batch's size.
    pub fn spawn_with_hook(
        scorer: Arc<dyn Score>,
        queue: usize,
        max_batch: usize,
        on_batch: BatchHook,
    ) -> std::io::Result<Self> {
        let (tx, mut rx) = mpsc::channel::<Job>(queue.max(1));
        let handle = Self {
            tx,
            scorer: scorer.clone(),
        };
        std::thread::Builder::new()
            .name("shieldgate-scorer".into())
            .spawn(move || {
                yield_to_connections();
                let mut carried = None;
                while let Some(jobs) = gather(&mut rx, &mut carried, scorer.as_ref(), max_batch) {
                    on_batch(jobs.iter().map(|j| j.requests.len()).sum());
                    run_batch(scorer.as_ref(), jobs);
                }
            })?;
        Ok(handle)
    }

    /// Jobs waiting in the queue.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Scores `requests` on the worker; fails at once when the queue is full. Scores the
    /// scorer has at hand (see [`Score::at_hand`]) come back at once, without queueing.
    pub async fn score(
        &self,
        requests: Vec<ScoreRequest>,
    ) -> Result<Vec<RequestScores>, WorkerError> {
        if let Some(scores) = self.scorer.at_hand(&requests) {
            return Ok(scores);
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            requests,
            reply,
            span: tracing::Span::current(),
        };
        self.tx.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => WorkerError::QueueFull,
            mpsc::error::TrySendError::Closed(_) => WorkerError::Stopped,
        })?;
        Ok(answer.await.map_err(|_| WorkerError::Stopped)??)
    }
}

/// Puts the calling thread (the scorer's) under Linux's `SCHED_BATCH` policy, nice unchanged:
/// when a job wakes it, it waits for the connection worker that queued the job to finish
/// what it is running, instead of taking the CPU at once. The worker can then serve its other
/// connections and queue more jobs for the same batch, and two context switches per job are
/// saved where both share a core. Only worth a debug line if the system refuses.
fn yield_to_connections() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: pid 0 names the calling thread and `param` is a valid, live sched_param;
        // SCHED_BATCH with priority 0 needs no privilege.
        #[allow(unsafe_code)]
        let status = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
        if status != 0 {
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                "the scorer thread keeps the default scheduling policy"
            );
        }
    }
}

/// The next batch: the job carried over from the last gathering (or the next to arrive), then
/// the jobs already waiting, in order, while the batch holds fewer than `max_batch` texts and
/// their shares of a batch (see [`Score::batch_share`]) add up to at most one; the first job
/// that would overflow is carried, with its share, to the next batch. Shares are computed only
/// when a second job could join (the engine tokenizes to know them). Jobs whose caller has
/// gone are dropped. `None` once the queue is closed and empty.
fn gather(
    rx: &mut mpsc::Receiver<Job>,
    carried: &mut Option<(Job, f64)>,
    scorer: &dyn Score,
    max_batch: usize,
) -> Option<Vec<Job>> {
    let share = |job: &Job| -> f64 { job.requests.iter().map(|r| scorer.batch_share(r)).sum() };
    loop {
        let (first, known) = match carried.take() {
            Some((job, share)) => (job, Some(share)),
            None => (rx.blocking_recv()?, None),
        };
        if first.reply.is_closed() {
            continue;
        }
        let mut size = first.requests.len();
        let mut used = known;
        let mut jobs = vec![first];
        while size < max_batch {
            let Ok(job) = rx.try_recv() else { break };
            if job.reply.is_closed() {
                continue;
            }
            let so_far = *used.get_or_insert_with(|| jobs.iter().map(share).sum());
            let more = share(&job);
            if so_far + more > 1.0 {
                *carried = Some((job, more));
                break;
            }
            size += job.requests.len();
            used = Some(so_far + more);
            jobs.push(job);
        }
        return Some(jobs);
    }
}

/// Scores several jobs as one batch; a request that cannot be scored fails only its own job.
/// A panicking scorer fails the batch's jobs, not the worker.
fn run_batch(scorer: &dyn Score, mut jobs: Vec<Job>) {
    let sizes: Vec<usize> = jobs.iter().map(|j| j.requests.len()).collect();
    let all: Vec<ScoreRequest> = jobs
        .iter_mut()
        .flat_map(|j| std::mem::take(&mut j.requests))
        .collect();
    let _span = jobs.first().map(|j| j.span.clone().entered());
    let scored = std::panic::catch_unwind(AssertUnwindSafe(|| score_each(scorer, &all)));
    let results = scored.unwrap_or_else(|panic| {
        let message = panic_message(panic.as_ref());
        tracing::error!(%message, "the scorer panicked; failing this batch");
        all.iter()
            .map(|_| Err(ScoreError::Panicked(message.clone())))
            .collect()
    });
    let mut results = results.into_iter();
    for (job, size) in jobs.into_iter().zip(sizes) {
        let mine: Result<Vec<_>, _> = results.by_ref().take(size).collect();
        let _ = job.reply.send(mine);
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text panic".into())
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;
    use std::sync::mpsc as std_mpsc;
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::scorer::cache::CachedScorer;
    use crate::scorer::testing::{empty_results, request};

    /// Says when a call begins, scores nothing until the test lets it through, and keeps the
    /// texts of every batch. A text's share of a batch is its length / 10.
    struct Gated {
        entered: Mutex<std_mpsc::Sender<()>>,
        gate: Mutex<std_mpsc::Receiver<()>>,
        batches: Mutex<Vec<Vec<String>>>,
        shares_asked: std::sync::atomic::AtomicUsize,
    }

    impl Gated {
        fn new() -> (Self, std_mpsc::Sender<()>, std_mpsc::Receiver<()>) {
            let (open, gate) = std_mpsc::channel();
            let (entered, calls) = std_mpsc::channel();
            let gated = Self {
                entered: Mutex::new(entered),
                gate: Mutex::new(gate),
                batches: Mutex::default(),
                shares_asked: Default::default(),
            };
            (gated, open, calls)
        }
    }

    impl Score for Gated {
        fn score(&self, requests: &[ScoreRequest]) -> Result<Vec<RequestScores>, ScoreError> {
            let _ = self
                .entered
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .send(());
            let gate = self.gate.lock().unwrap_or_else(|e| e.into_inner());
            gate.recv().map_err(|_| ScoreError::MissingResult)?;
            self.batches
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(requests.iter().map(|r| r.user.clone()).collect());
            Ok(empty_results(requests))
        }

        fn batch_share(&self, request: &ScoreRequest) -> f64 {
            self.shares_asked
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            request.user.len() as f64 / 10.0
        }
    }

    #[tokio::test]
    async fn waiting_checks_are_gathered_in_order_up_to_one_batch_share() {
        let (gated, open, calls) = Gated::new();
        let gated = Arc::new(gated);
        let handle = ScorerHandle::spawn(gated.clone(), 16, 16).expect("worker");
        let first = tokio::spawn({
            let handle = handle.clone();
            async move { handle.score(vec![request("a")]).await }
        });
        while calls.try_recv().is_err() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // While the worker is busy, checks of shares 0.5, 0.4, 0.3, 0.2 and 0.1 wait.
        let mut waiting = Vec::new();
        for text in ["bbbbb", "cccc", "ddd", "ee", "f"] {
            let client = handle.clone();
            waiting.push(tokio::spawn(async move {
                client.score(vec![request(text)]).await
            }));
            while handle.queued() < waiting.len() {
                tokio::task::yield_now().await;
            }
        }
        for _ in 0..3 {
            open.send(()).expect("gate");
        }
        first.await.expect("task").expect("scored");
        for w in waiting {
            w.await.expect("task").expect("scored");
        }
        let batches = gated
            .batches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        assert_eq!(
            batches,
            [vec!["a"], vec!["bbbbb", "cccc"], vec!["ddd", "ee", "f"]],
            "0.5 + 0.4 fit, 0.3 would overflow and starts the next batch"
        );
        assert_eq!(
            gated
                .shares_asked
                .load(std::sync::atomic::Ordering::Relaxed),
            5,
            "each waiting text's share once (the carried one is not asked again); none for \
             the lone first check"
        );
    }

    #[tokio::test]
    async fn a_cache_hit_does_not_wait_behind_a_running_batch() {
        let (gated, open, calls) = Gated::new();
        let cached = Arc::new(CachedScorer::new(
            Arc::new(gated),
            NonZeroUsize::new(8).expect("nonzero"),
            "m",
        ));
        let handle = ScorerHandle::spawn(cached.clone(), 4, 4).expect("worker");
        open.send(()).expect("gate");
        handle.score(vec![request("seen")]).await.expect("scored");
        // The worker is now stuck on a new text until the gate opens again ...
        let busy = tokio::spawn({
            let handle = handle.clone();
            async move { handle.score(vec![request("new")]).await }
        });
        let _ = calls.recv();
        while calls.try_recv().is_err() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // ... and the text it scored before comes back from the cache regardless.
        let hit = tokio::time::timeout(Duration::from_secs(5), handle.score(vec![request("seen")]))
            .await
            .expect("answered while the worker is busy")
            .expect("scores");
        assert_eq!(hit.len(), 1);
        assert_eq!(cached.stats(), (1, 2), "one hit; both texts missed once");
        open.send(()).expect("gate");
        busy.await.expect("task").expect("scored");
    }

    /// The scheduling policy of the calling thread: field 41 of /proc/thread-self/stat.
    #[cfg(target_os = "linux")]
    fn scheduling_policy() -> Option<u32> {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
        let (_, fields) = stat.rsplit_once(')')?;
        // Fields after the name start at field 3.
        fields.split_whitespace().nth(41 - 3)?.parse().ok()
    }

    /// Records the scheduling policy of the thread it scores on.
    #[cfg(target_os = "linux")]
    struct PolicySpy(Mutex<Option<u32>>);

    #[cfg(target_os = "linux")]
    impl Score for PolicySpy {
        fn score(&self, requests: &[ScoreRequest]) -> Result<Vec<RequestScores>, ScoreError> {
            *self.0.lock().unwrap_or_else(|e| e.into_inner()) = scheduling_policy();
            Ok(empty_results(requests))
        }
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_scorer_thread_runs_under_the_batch_policy_and_callers_do_not() {
        let spy = Arc::new(PolicySpy(Mutex::new(None)));
        let handle = ScorerHandle::spawn(spy.clone(), 4, 4).expect("worker");
        handle.score(vec![request("a")]).await.expect("scored");
        let seen = *spy.0.lock().unwrap_or_else(|e| e.into_inner());
        assert_eq!(seen, Some(libc::SCHED_BATCH as u32));
        assert_eq!(scheduling_policy(), Some(libc::SCHED_OTHER as u32));
    }
}
