use crate::codec::{CodecResult, Message, ZmqFramedWrite};

use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};

const WRITE_BATCH_LIMIT: usize = 128;

/// Writes queued socket messages into the underlying framed sink in small batches.
#[inline]
pub(crate) async fn write_message_queue(
    mut queue_receiver: mpsc::Receiver<Message>,
    mut send_queue: ZmqFramedWrite,
) -> CodecResult<()> {
    let mut bursts = false; // PATCH(write-burst)
    while let Some(message) = queue_receiver.next().await {
        // PATCH(write-burst): while messages come in bursts (the last batch held more than
        // one), let every other ready task run once before taking the batch, so the tasks
        // about to queue theirs do it first; a lone message (the last batch held one) is
        // written at once.
        if bursts {
            crate::async_rt::task::yield_now().await;
        }
        // When backlog already exists, feed a batch before flushing once to avoid per-message flush cost during bursts.
        send_queue.feed(message).await?;

        let mut taken = 1; // PATCH(write-burst)
        for _ in 1..WRITE_BATCH_LIMIT {
            let message = match queue_receiver.try_recv() {
                Ok(message) => message,
                Err(_) => break,
            };
            taken += 1; // PATCH(write-burst)
            send_queue.feed(message).await?;
        }
        bursts = taken > 1; // PATCH(write-burst)

        send_queue.flush().await?;
    }

    Ok(())
}

#[cfg(test)]
mod tests {
    mod batch_boundaries;

    use super::*;
    use crate::codec::{CodecError, ZmqCodec};
    use crate::ZmqMessage;

    use bytes::Bytes;
    use futures::{AsyncWrite, SinkExt};
    use parking_lot::Mutex;
    use std::io;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    #[derive(Default)]
    struct WriteStats {
        bytes: Vec<u8>,
        flushes: usize,
    }

    struct RecordingWrite {
        stats: Arc<Mutex<WriteStats>>,
    }

    impl AsyncWrite for RecordingWrite {
        fn poll_write(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let mut stats = self.stats.lock();
            stats.bytes.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.stats.lock().flushes += 1;
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    struct FailingWrite;

    impl AsyncWrite for FailingWrite {
        fn poll_write(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            _buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "writer failed",
            )))
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[crate::async_rt::test]
    async fn test_write_message_queue_batches_ready_messages_into_one_flush() {
        let (mut sender, receiver) = mpsc::channel(8);
        sender
            .send(Message::Message(ZmqMessage::from(Bytes::from_static(b"a"))))
            .await
            .expect("send first message");
        sender
            .send(Message::Message(ZmqMessage::from(Bytes::from_static(b"b"))))
            .await
            .expect("send second message");
        sender
            .send(Message::Message(ZmqMessage::from(Bytes::from_static(b"c"))))
            .await
            .expect("send third message");
        drop(sender);

        let stats = Arc::new(Mutex::new(WriteStats::default()));
        let writer = RecordingWrite {
            stats: Arc::clone(&stats),
        };
        let send_queue = ZmqFramedWrite::new(Box::new(writer), ZmqCodec::new());

        write_message_queue(receiver, send_queue)
            .await
            .expect("write queued messages");

        let stats = stats.lock();
        assert_eq!(1, stats.flushes);
        assert_eq!(
            stats.bytes,
            vec![0x00, 0x01, b'a', 0x00, 0x01, b'b', 0x00, 0x01, b'c']
        );
    }

    // PATCH(write-burst): a lone message is written at once, before the tasks about to queue
    // more run; once messages come in bursts, the writer lets those tasks queue theirs first,
    // and a burst leaves in one flush. One thread (tokio's test runtime), so the order in which
    // tasks run is decided, not raced.
    #[cfg(feature = "tokio-runtime")]
    #[crate::async_rt::test]
    async fn test_write_message_queue_lets_a_burst_gather_before_one_flush() {
        let (sender, receiver) = mpsc::channel(64);
        let stats = Arc::new(Mutex::new(WriteStats::default()));
        let writer = RecordingWrite {
            stats: Arc::clone(&stats),
        };
        let send_queue = ZmqFramedWrite::new(Box::new(writer), ZmqCodec::new());
        let task = tokio::spawn(write_message_queue(receiver, send_queue));
        let message = |byte: u8| Message::Message(ZmqMessage::from(Bytes::from(vec![byte])));
        let queue_from_tasks = |bytes: std::ops::RangeInclusive<u8>| {
            for byte in bytes {
                let mut sender = sender.clone();
                tokio::spawn(async move { sender.try_send(message(byte)).expect("room") });
            }
        };
        let flushes_reach = |count: usize| {
            let stats = Arc::clone(&stats);
            async move {
                for _ in 0..1000 {
                    if stats.lock().flushes >= count {
                        return;
                    }
                    tokio::task::yield_now().await;
                }
                panic!("fewer than {count} flushes");
            }
        };

        // A lone message, five tasks ready to queue more: it leaves alone, they follow in one
        // flush.
        sender.clone().try_send(message(0)).expect("room");
        queue_from_tasks(1..=5);
        flushes_reach(2).await;
        // In a burst now: one message queued, five tasks ready; the writer lets them queue
        // first, and the six leave in one flush.
        sender.clone().try_send(message(6)).expect("room");
        queue_from_tasks(7..=11);
        flushes_reach(3).await;
        drop(queue_from_tasks);
        drop(sender);
        task.await.expect("writer task").expect("writes");

        let stats = stats.lock();
        assert_eq!(3, stats.flushes);
        let written: Vec<u8> = stats.bytes.chunks(3).map(|frame| frame[2]).collect();
        assert_eq!(written, (0..=11).collect::<Vec<u8>>(), "in queue order");
    }

    #[crate::async_rt::test]
    async fn test_write_message_queue_returns_writer_errors() {
        let (mut sender, receiver) = mpsc::channel(1);
        sender
            .send(Message::Message(ZmqMessage::from(Bytes::from_static(b"a"))))
            .await
            .expect("send message");
        drop(sender);

        let send_queue = ZmqFramedWrite::new(Box::new(FailingWrite), ZmqCodec::new());
        let error = write_message_queue(receiver, send_queue)
            .await
            .expect_err("write error");

        let CodecError::Io(error) = error else {
            panic!("unexpected error type");
        };
        assert_eq!(io::ErrorKind::BrokenPipe, error.kind());
    }
}
