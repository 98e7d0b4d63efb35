//! What one hostile sandbox may cost the daemon, beyond connection counts: a write deadline on
//! every connection (a client that stops reading is cut off), and a global byte budget for the
//! built answers alive at once (held by the cache or by responses being written). Knows nothing
//! of HTTP routes or of values: an answer is an opaque buffer here.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;
use zeroize::Zeroizing;

/// Default budget for the answers alive at once.
pub const DEFAULT_ANSWER_BUDGET: usize = 64 * 1024 * 1024;
/// Answers up to this size are always admitted (and counted): a sandbox with an ordinary set of
/// secrets is served even while large answers of others fill the budget.
pub const ALWAYS_ADMITTED: usize = 1024 * 1024;
/// Default time a client may leave a write waiting (not reading its answer).
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// A stream whose writes fail with `TimedOut` once one has waited `timeout` without progress:
/// a client that sends a request and never reads cannot hold its connection (and the answer it
/// was given) for longer. Reads pass through (the HTTP layer times out requests).
pub struct WriteDeadline<S> {
    inner: S,
    timeout: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteDeadline<S> {
    pub fn new(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            stalled: None,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Called with the result of a write-side poll: progress resets the deadline; waiting arms
    /// it, and past it the wait becomes an error.
    fn watch<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let timeout = self.timeout;
                let sleep = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("client did not read its answer within {timeout:?}"),
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        // Kept, so the HTTP layer queues a shared answer instead of copying it into its buffer.
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, r)
    }
}

/// A built answer: opaque bytes, zeroized when the last holder drops it.
pub type AnswerBytes = Arc<Zeroizing<Vec<u8>>>;

/// Answers at least this large are let go off the async workers ([`release`]).
const RELEASED_OFF_RUNTIME: usize = 256 * 1024;

/// Lets go of a holder of an answer. When it is the last holder of a large answer, zeroizing
/// megabytes would hold the async worker it runs on (and every sandbox waiting on it), so the
/// drop moves to a blocking thread; small answers, and drops outside the runtime, happen here.
pub fn release(answer: AnswerBytes) {
    if answer.len() >= RELEASED_OFF_RUNTIME && Arc::strong_count(&answer) == 1 {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn_blocking(move || drop(answer));
            return;
        }
    }
    drop(answer);
}

/// The answers over the budget: what is held and what was asked.
#[derive(Debug, thiserror::Error)]
#[error("answers being served hold {held} bytes; one more of {asked} bytes would pass the daemon's budget of {budget} bytes (retry shortly)")]
pub struct OverBudget {
    pub held: usize,
    pub asked: usize,
    pub budget: usize,
}

/// The global byte budget for built answers alive at once, whoever holds them (the cache, or
/// responses still being written to slow clients). Answers are tracked by weak reference, so an
/// answer stops counting the moment its last holder drops it; nothing has to give bytes back.
pub struct AnswerBudget {
    budget: usize,
    live: Mutex<Vec<Tracked>>,
}

/// One answer counted against the budget: a weak reference and its size.
type Tracked = (Weak<Zeroizing<Vec<u8>>>, usize);

impl AnswerBudget {
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            live: Mutex::new(Vec::new()),
        }
    }

    pub fn budget(&self) -> usize {
        self.budget
    }

    fn held_locked(live: &mut Vec<Tracked>) -> usize {
        live.retain(|(w, _)| w.strong_count() > 0);
        live.iter().map(|(_, n)| n).sum()
    }

    /// Bytes of the answers alive now.
    pub fn held(&self) -> usize {
        Self::held_locked(&mut self.live.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Counts `answer` against the budget if it fits, or if it is small ([`ALWAYS_ADMITTED`]);
    /// `Err` (and the answer is not counted) when a large one would pass it. `make_room` is called once before refusing, to drop what the
    /// caller can (its cache), and the check is made again.
    pub fn admit(&self, answer: &AnswerBytes, make_room: impl FnOnce()) -> Result<(), OverBudget> {
        let asked = answer.len();
        {
            let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
            if asked <= ALWAYS_ADMITTED || Self::held_locked(&mut live) + asked <= self.budget {
                live.push((Arc::downgrade(answer), asked));
                return Ok(());
            }
        }
        make_room();
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let held = Self::held_locked(&mut live);
        if held + asked <= self.budget {
            live.push((Arc::downgrade(answer), asked));
            Ok(())
        } else {
            Err(OverBudget {
                held,
                asked,
                budget: self.budget,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn answer(n: usize) -> AnswerBytes {
        Arc::new(Zeroizing::new(vec![b'x'; n]))
    }

    #[test]
    fn small_answers_are_served_while_large_ones_fill_the_budget() {
        let budget = AnswerBudget::new(2 * ALWAYS_ADMITTED + 10);
        let big = [answer(ALWAYS_ADMITTED + 5), answer(ALWAYS_ADMITTED + 5)];
        for a in &big {
            budget.admit(a, || {}).unwrap();
        }
        assert!(budget.admit(&answer(ALWAYS_ADMITTED + 1), || {}).is_err());
        let small = answer(ALWAYS_ADMITTED);
        budget
            .admit(&small, || unreachable!("small answers need no room"))
            .unwrap();
        assert_eq!(budget.held(), 3 * ALWAYS_ADMITTED + 10);
    }

    #[test]
    fn the_budget_counts_answers_while_held_and_makes_room_before_refusing() {
        // Every answer here is over the always-admitted size, so the budget decides.
        const K: usize = ALWAYS_ADMITTED;
        let budget = AnswerBudget::new(K + 100);
        let a = answer(K + 60);
        budget.admit(&a, || unreachable!("fits")).unwrap();
        assert_eq!(budget.held(), K + 60);
        // A second holder (a response being written) does not count twice.
        let writing = Arc::clone(&a);
        let b = answer(K + 50);
        let mut cache = vec![a];
        let e = budget.admit(&b, || {}).unwrap_err();
        assert_eq!((e.held, e.asked, e.budget), (K + 60, K + 50, K + 100));
        assert!(
            e.to_string()
                .contains(&format!("budget of {} bytes", K + 100)),
            "{e}"
        );
        // The cache drops its copy, but a response still holds it: still over.
        let e = budget.admit(&b, || cache.clear()).unwrap_err();
        assert_eq!(e.held, K + 60);
        // Once the last holder is done, the bytes are free without anyone giving them back.
        drop(writing);
        assert_eq!(budget.held(), 0);
        budget.admit(&b, || unreachable!("fits")).unwrap();
        // Room made by the caller is used at once.
        let mut cache = vec![b];
        let c = answer(K + 90);
        budget.admit(&c, || cache.clear()).unwrap();
        assert_eq!(budget.held(), K + 90);
    }

    #[tokio::test]
    async fn a_peer_that_never_reads_is_cut_off_and_one_that_reads_is_not() {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let mut w = WriteDeadline::new(ours, Duration::from_millis(300));
        // A reader that keeps up: writes far larger than the pipe go through.
        let reader = tokio::spawn(async move {
            let mut sink = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut theirs, &mut sink)
                .await
                .map(|_| sink.len())
        });
        w.write_all(&vec![1u8; 64 * 1024]).await.unwrap();
        w.shutdown().await.unwrap();
        drop(w);
        assert_eq!(reader.await.unwrap().unwrap(), 64 * 1024);

        // A peer that never reads: the write fails once the deadline passes without progress.
        let (ours, _theirs) = tokio::io::duplex(1024);
        let mut w = WriteDeadline::new(ours, Duration::from_millis(300));
        let t = tokio::time::Instant::now();
        let e = w.write_all(&vec![1u8; 64 * 1024]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("did not read its answer"), "{e}");
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(5),
            "{took:?}"
        );
    }
}
