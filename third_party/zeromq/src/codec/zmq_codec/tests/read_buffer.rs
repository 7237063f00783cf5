use super::*;

const MAX_READ_CHUNK_SIZE: usize = 64 * 1024;

/// PATCH(message-limit): feeds a frame's body the way `ZmqFramedRead` does, at most `step`
/// bytes a read with a decode after each, until the frame is decoded.
fn feed_body(codec: &mut ZmqCodec, input: &mut BytesMut, step: usize) -> Message {
    loop {
        if let Some(message) = codec.decode(input).unwrap() {
            return message;
        }
        let need = codec.bytes_needed(input.len()).min(step);
        input.resize(input.len() + need, 7);
    }
}

#[test]
fn read_buffer_recovery_keeps_a_full_chunk_after_splitting_a_large_frame() {
    for frame_len in [2 * MAX_READ_CHUNK_SIZE + 1, 338_729] {
        let mut codec = ZmqCodec::new();
        codec.state = DecoderState::FrameHeader;
        codec.waiting_for = 1;
        let mut input = BytesMut::from(&[2][..]);
        input.extend_from_slice(&(frame_len as u64).to_be_bytes());
        let retained = feed_body(&mut codec, &mut input, MAX_READ_CHUNK_SIZE);
        assert!(input.capacity() >= MAX_READ_CHUNK_SIZE);
        let ptr = input.as_ptr();
        input.resize(MAX_READ_CHUNK_SIZE, 0);
        assert_eq!(input.as_ptr(), ptr);
        drop(retained);
    }
}

#[test]
fn read_buffer_recovery_does_not_reserve_headroom_at_the_threshold() {
    let mut codec = ZmqCodec::new();
    codec.state = DecoderState::FrameHeader;
    codec.waiting_for = 1;
    let mut input = BytesMut::from(&[2][..]);
    input.extend_from_slice(&((2 * MAX_READ_CHUNK_SIZE) as u64).to_be_bytes());
    assert!(codec.decode(&mut input).unwrap().is_none());
    // PATCH(message-limit): nothing of the frame arrived yet: at most one read chunk.
    assert!(input.capacity() <= MAX_READ_CHUNK_SIZE, "{}", input.capacity());
    input.resize(MAX_READ_CHUNK_SIZE, 7);
    assert!(codec.decode(&mut input).unwrap().is_none());
    // The frame, and no headroom (the 9 header bytes stay in front of it).
    assert!(input.capacity() <= 2 * MAX_READ_CHUNK_SIZE + 9, "{}", input.capacity());
}

#[test]
fn message_limit_closes_before_allocating() {
    // PATCH(message-limit): a header announcing more than the limit fails at once, whatever it
    // claims (2^62 here), and nothing is reserved for it.
    for (announced, long) in [(1u64 << 62, true), (1025, true), (200, false)] {
        let mut options = SocketOptions::default();
        options.max_message_size(if long { 1024 } else { 100 });
        let mut codec = ZmqCodec::with_options(&options);
        codec.state = DecoderState::FrameHeader;
        codec.waiting_for = 1;
        let mut input = BytesMut::new();
        if long {
            input.extend_from_slice(&[2]);
            input.extend_from_slice(&announced.to_be_bytes());
        } else {
            input.extend_from_slice(&[0, announced as u8]);
        }
        let before = input.capacity();
        match codec.decode(&mut input) {
            Err(CodecError::MessageTooLarge { announced: a, .. }) => assert_eq!(a, announced),
            other => panic!("expected MessageTooLarge, got {other:?}"),
        }
        assert!(input.capacity() <= before);
        // The stream is done: nothing after it is decoded.
        input.extend_from_slice(&[0, 1, b'x']);
        assert!(codec.decode(&mut input).is_err());
    }
}

#[test]
fn message_limit_counts_the_parts_of_a_message() {
    // PATCH(message-limit): two parts of 600 bytes each pass alone, not together under 1024;
    // a command frame counts alone; exactly the limit passes.
    let mut options = SocketOptions::default();
    options.max_message_size(1024);
    let mut codec = ZmqCodec::with_options(&options);
    codec.state = DecoderState::FrameHeader;
    codec.waiting_for = 1;
    let mut input = BytesMut::new();
    input.extend_from_slice(&[2]);
    input.extend_from_slice(&1024u64.to_be_bytes());
    input.resize(input.len() + 1024, 7);
    assert!(matches!(codec.decode(&mut input), Ok(Some(Message::Message(_)))));
    input.extend_from_slice(&[3]); // more
    input.extend_from_slice(&600u64.to_be_bytes());
    input.resize(input.len() + 600, 7);
    input.extend_from_slice(&[2]);
    input.extend_from_slice(&600u64.to_be_bytes());
    assert!(matches!(
        codec.decode(&mut input),
        Err(CodecError::MessageTooLarge { announced: 1200, max: 1024 })
    ));
}

#[test]
fn a_half_sent_frame_reserves_what_arrived_not_what_it_claims() {
    // PATCH(message-limit): under the limit, a frame announcing 1 GiB and sending 10 KiB costs
    // about 2 read chunks, not 1 GiB.
    let mut options = SocketOptions::default();
    options.max_message_size(1 << 31);
    let mut codec = ZmqCodec::with_options(&options);
    codec.state = DecoderState::FrameHeader;
    codec.waiting_for = 1;
    let mut input = BytesMut::from(&[2][..]);
    input.extend_from_slice(&(1u64 << 30).to_be_bytes());
    assert!(codec.decode(&mut input).unwrap().is_none());
    for _ in 0..10 {
        input.resize(input.len() + 1024, 7);
        assert!(codec.decode(&mut input).unwrap().is_none());
    }
    assert!(
        input.capacity() <= 2 * MAX_READ_CHUNK_SIZE + 10 * 1024,
        "{}",
        input.capacity()
    );
    // And it still decodes once everything arrives.
    let Message::Message(message) = feed_body(&mut codec, &mut input, MAX_READ_CHUNK_SIZE) else {
        panic!("expected a message");
    };
    assert_eq!(message.get(0).map(|f| f.len()), Some(1 << 30));
}

#[test]
fn read_buffer_recovery_rejects_lengths_exceeding_configured_capacity() {
    for max_size in [3000, MAX_READ_CHUNK_SIZE] {
        for frame_len in [u64::MAX, isize::MAX as u64 - max_size as u64 + 1] {
            let mut options = SocketOptions::default();
            options.read_buffer(128, max_size, 2);
            let mut codec = ZmqCodec::with_options(&options);
            codec.state = DecoderState::FrameHeader;
            codec.waiting_for = 1;
            let mut input = BytesMut::from(&[2][..]);
            input.extend_from_slice(&frame_len.to_be_bytes());
            assert!(matches!(
                codec.decode(&mut input),
                Err(CodecError::Decode(
                    "Frame length exceeds read buffer capacity"
                ))
            ));
        }
    }
}

#[test]
fn read_buffer_recovery_does_not_share_chunk_sized_frame_storage_with_the_next_read() {
    for frame_len in [
        MAX_READ_CHUNK_SIZE,
        MAX_READ_CHUNK_SIZE + 1,
        2 * MAX_READ_CHUNK_SIZE,
    ] {
        let mut codec = ZmqCodec::new();
        codec.state = DecoderState::FrameHeader;
        codec.waiting_for = 1;
        let mut input = BytesMut::with_capacity(frame_len + 9);
        input.extend_from_slice(&[2]);
        input.extend_from_slice(&(frame_len as u64).to_be_bytes());
        assert!(codec.decode(&mut input).unwrap().is_none());
        input.resize(frame_len, 7);
        let Message::Message(retained) = codec.decode(&mut input).unwrap().unwrap() else {
            panic!("expected message");
        };
        // Sharing an entire spare chunk makes the following nearly complete
        // frame copy its body when reserve detaches from this retained frame.
        input.resize(MAX_READ_CHUNK_SIZE, 0);
        assert!(retained.get(0).unwrap().is_unique());
    }
}

#[test]
fn read_buffer_headroom_tracks_the_configured_maximum() {
    let mut options = SocketOptions::default();
    options.read_buffer(300, 3000, 3);
    for frame_len in [6000, 6001] {
        let mut codec = ZmqCodec::with_options(&options);
        codec.state = DecoderState::FrameHeader;
        codec.waiting_for = 1;
        let mut input = BytesMut::from(&[2][..]);
        input.extend_from_slice(&(frame_len as u64).to_be_bytes());
        // PATCH(message-limit): the body arrives in reads of at most the maximum chunk.
        let retained = feed_body(&mut codec, &mut input, 3000);
        if frame_len == 6000 {
            assert!(input.capacity() < 3000, "{}", input.capacity());
        } else {
            assert!(input.capacity() >= 3000);
        }
        drop(retained);
    }
}
