use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::Close;

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// The connection is closing; the frame will never be written.
    #[error("connection is closing")]
    Closed,
    /// The queue was full: the connection is now being closed as a slow consumer.
    #[error("outbound queue full")]
    Full,
}

/// A connection's bounded outbound queue, drained by its one writer.
///
/// A plain `VecDeque` behind a mutex rather than a channel: it allocates nothing until the first
/// frame and gives the writer everything queued in one go, so a burst becomes one flush.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    notify: Notify,
    capacity: usize,
    byte_limit: usize,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Bytes>,
    bytes: usize,
    close: Option<Close>,
    /// When the oldest queued downstream delivery reached the node.
    delivered_at: Option<Instant>,
}

impl Outbox {
    /// An empty outbox holding at most `capacity` frames.
    pub fn new(capacity: usize) -> Self {
        Outbox {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            capacity: capacity.max(1),
            byte_limit: usize::MAX,
        }
    }

    /// Also counts the connection a slow consumer once `bytes` are waiting. A single frame
    /// larger than the limit is still queued when nothing else waits.
    pub fn with_byte_limit(mut self, bytes: usize) -> Self {
        self.byte_limit = bytes.max(1);
        self
    }

    /// Queues an encoded frame. When the queue is full the connection is closed with 4004: a
    /// client that cannot keep up loses its connection, never silently its messages.
    pub fn push(&self, frame: Bytes) -> Result<(), PushError> {
        self.push_marked(frame, None)
    }

    /// Queues a downstream delivery that reached the node at `at`, so the writer can tell how
    /// long it took to reach the socket.
    pub fn push_delivery(&self, frame: Bytes, at: Instant) -> Result<(), PushError> {
        self.push_marked(frame, Some(at))
    }

    fn push_marked(&self, frame: Bytes, at: Option<Instant>) -> Result<(), PushError> {
        let mut state = self.state.lock();
        if state.close.is_some() {
            return Err(PushError::Closed);
        }
        let over_bytes = state.bytes + frame.len() > self.byte_limit && !state.queue.is_empty();
        if state.queue.len() >= self.capacity || over_bytes {
            state.queue.clear();
            state.bytes = 0;
            state.delivered_at = None;
            state.close = Some(Close::SLOW_CONSUMER);
            drop(state);
            self.notify.notify_one();
            return Err(PushError::Full);
        }
        state.bytes += frame.len();
        state.queue.push_back(frame);
        if state.delivered_at.is_none() {
            state.delivered_at = at;
        }
        drop(state);
        self.notify.notify_one();
        Ok(())
    }

    /// Asks the writer to send what is queued, then `close`. The first close wins.
    pub fn close(&self, close: Close) {
        let mut state = self.state.lock();
        if state.close.is_none() {
            state.close = Some(close);
        }
        drop(state);
        self.notify.notify_one();
    }

    /// True once a close was requested.
    pub fn is_closing(&self) -> bool {
        self.state.lock().close.is_some()
    }

    /// Number of frames waiting.
    pub fn len(&self) -> usize {
        self.state.lock().queue.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until there is something to do, moves every queued frame into `batch` and returns
    /// the close to send after them, if one was requested.
    pub async fn next_batch(&self, batch: &mut Vec<Bytes>) -> Option<Close> {
        self.next_batch_marked(batch, &mut None).await
    }

    /// [`Outbox::next_batch`], also setting `delivered_at` to when the oldest downstream
    /// delivery in the batch reached the node (left alone when the batch has none).
    pub async fn next_batch_marked(
        &self,
        batch: &mut Vec<Bytes>,
        delivered_at: &mut Option<Instant>,
    ) -> Option<Close> {
        loop {
            // Register interest before looking, so a push between the check and the wait is
            // not missed.
            let notified = self.notify.notified();
            {
                let mut state = self.state.lock();
                if !state.queue.is_empty() || state.close.is_some() {
                    batch.extend(state.queue.drain(..));
                    state.bytes = 0;
                    if let Some(at) = state.delivered_at.take() {
                        *delivered_at = Some(at);
                    }
                    if state.queue.capacity() > 64 {
                        state.queue.shrink_to(16);
                    }
                    return state.close.clone();
                }
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn batches_everything_queued() {
        let outbox = Outbox::new(8);
        outbox.push(Bytes::from_static(b"a")).unwrap();
        outbox.push(Bytes::from_static(b"b")).unwrap();
        let mut batch = Vec::new();
        assert_eq!(outbox.next_batch(&mut batch).await, None);
        assert_eq!(batch.len(), 2);
    }

    #[tokio::test]
    async fn queued_bytes_past_the_limit_close_as_slow_consumer() {
        let outbox = Outbox::new(1024).with_byte_limit(10);
        // One frame larger than the limit still goes out when nothing else waits.
        outbox.push(Bytes::from(vec![0u8; 16])).unwrap();
        let mut batch = Vec::new();
        assert_eq!(outbox.next_batch(&mut batch).await, None);
        outbox.push(Bytes::from(vec![0u8; 6])).unwrap();
        assert_eq!(outbox.push(Bytes::from(vec![0u8; 6])), Err(PushError::Full));
        batch.clear();
        assert_eq!(
            outbox.next_batch(&mut batch).await.map(|c| c.code),
            Some(4004)
        );
        assert!(
            batch.is_empty(),
            "what was queued is dropped with the connection"
        );
    }

    #[tokio::test]
    async fn full_queue_closes_as_slow_consumer() {
        let outbox = Outbox::new(1);
        outbox.push(Bytes::from_static(b"a")).unwrap();
        assert_eq!(outbox.push(Bytes::from_static(b"b")), Err(PushError::Full));
        assert_eq!(
            outbox.push(Bytes::from_static(b"c")),
            Err(PushError::Closed)
        );
        let mut batch = Vec::new();
        let close = outbox.next_batch(&mut batch).await.unwrap();
        assert_eq!(close.code, 4004);
    }
}
