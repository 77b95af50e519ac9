//! Error replies, framing limits, libvirt's leniency and mismatches.

use super::*;

#[test]
fn unknown_procedure_gets_libvirts_error_reply() {
    let call = frame(&[&[w(PROG), w(1), w(5), w(CALL), w(4), w(OK)].concat()]);
    let f = Frame::parse(&call).unwrap();
    let err = Call::decode(&f).unwrap_err();
    assert_eq!(err, CallError::UnknownProcedure(5));
    let reply = err.reply().unwrap().encode(&f.header);
    assert_eq!(hex(&reply), ERROR_REPLY_HEX);
}

#[test]
fn unknown_program_and_version() {
    for (prog, vers) in [(PROG, 2), (0x1234, 1)] {
        let call = frame(&[&[w(prog), w(vers), w(1), w(CALL), w(9), w(OK)].concat()]);
        let f = Frame::parse(&call).unwrap();
        let err = Call::decode(&f).unwrap_err();
        assert_eq!(err, CallError::UnknownProgram { prog, vers });
        let reply = err.reply().unwrap();
        assert_eq!((reply.code, reply.domain), (errors::RPC, errors::FROM_RPC));
        // The reply echoes the call's header, as libvirt's does.
        let f2_bytes = reply.encode(&f.header);
        let f2 = Frame::parse(&f2_bytes).unwrap();
        assert_eq!((f2.header.prog, f2.header.vers), (prog, vers));
        assert_eq!((f2.header.kind, f2.header.serial), (MessageType::Reply, 9));
    }
    // `%d`, as libvirt prints it: 0x87539319 as a signed int.
    assert_eq!(
        ErrorReply::unknown_program(PROG, 2).message.as_deref(),
        Some("Cannot find program -2024565991 version 2")
    );
}

#[test]
fn undecodable_payload_gets_an_error_reply() {
    // GetLogFilePosition whose path claims 100 bytes but has 4.
    let call = frame(&[
        &[w(PROG), w(1), w(2), w(CALL), w(1), w(OK)].concat(),
        &w(100),
        b"abcd",
    ]);
    let f = Frame::parse(&call).unwrap();
    let err = Call::decode(&f).unwrap_err();
    assert!(matches!(
        err,
        CallError::Payload {
            procedure: Procedure::GetLogFilePosition,
            source: XdrError::Truncated { field: "path", .. }
        }
    ));
    let reply = err.reply().unwrap();
    assert_eq!(
        reply.message.as_deref(),
        Some("Unable to decode message payload")
    );
}

#[test]
fn other_error_replies() {
    let status = frame(&[&[w(PROG), w(1), w(2), w(CALL), w(1), w(ERROR)].concat()]);
    let err = Call::decode(&Frame::parse(&status).unwrap()).unwrap_err();
    assert_eq!(err, CallError::BadStatus(Status::Error));
    assert_eq!(
        err.reply().unwrap().message.as_deref(),
        Some("Unexpected message status 1")
    );
    let not_a_call = frame(&[&[w(PROG), w(1), w(2), w(REPLY), w(1), w(OK)].concat()]);
    let err = Call::decode(&Frame::parse(&not_a_call).unwrap()).unwrap_err();
    assert_eq!(err, CallError::NotACall(MessageType::Reply));
    assert_eq!(err.reply(), None);

    let busy = ErrorReply::new(
        errors::SYSTEM_ERROR,
        errors::FROM_LOGGING,
        "Cannot open log file: '/x': Device or resource busy",
    );
    let bytes = busy.encode(&unknown_procedure_header());
    let f = Frame::parse(&bytes).unwrap();
    assert_eq!(ErrorReply::decode(f.payload).unwrap(), busy);
}

#[test]
fn call_with_fds_is_a_call_and_reports_its_fds() {
    let g = goldens();
    // Turn the GetLogFilePosition call into CALL_WITH_FDS with 2 FDs.
    let body = &g[2].bytes[4..];
    let mut with_fds = [
        &body[..12],
        &w(4)[..],
        &body[16..24],
        &w(2)[..],
        &body[24..],
    ]
    .concat();
    with_fds = [w(with_fds.len() as u32 + 4), with_fds].concat();
    let f = Frame::parse(&with_fds).unwrap();
    assert_eq!((f.header.kind, f.nfds), (MessageType::CallWithFds, 2));
    assert_eq!(Call::decode(&f).unwrap(), position_call());
}

#[test]
fn framing_limits() {
    let at = |len: u32, have: usize| {
        let mut buf = w(len);
        buf.resize(have.max(4), 0);
        check_frame(&buf)
    };
    assert_eq!(check_frame(&[]), Ok(Framing::NeedMore(4)));
    assert_eq!(check_frame(&[0, 0]), Ok(Framing::NeedMore(2)));
    assert_eq!(at(27, 4), Err(FrameError::TooShort(27)));
    assert_eq!(at(3, 4), Err(FrameError::TooShort(3)));
    assert_eq!(at(28, 4), Ok(Framing::NeedMore(24)));
    assert_eq!(at(28, 28), Ok(Framing::Ready(28)));
    // Bytes after the frame (the next one) are not its business.
    assert_eq!(at(28, 100), Ok(Framing::Ready(28)));
    assert_eq!(at(33_554_436, 4), Ok(Framing::NeedMore(33_554_432)));
    assert_eq!(at(33_554_437, 4), Err(FrameError::TooLong(33_554_437)));
    assert_eq!(at(u32::MAX, 4), Err(FrameError::TooLong(u32::MAX)));
}

#[test]
fn bad_headers_close_the_connection() {
    let g = goldens();
    let with = |offset: usize, v: u32| {
        let mut b = g[2].bytes.clone();
        b[offset..offset + 4].copy_from_slice(&v.to_be_bytes());
        Frame::parse(&b).map(|_| ())
    };
    assert_eq!(with(16, 3), Err(FrameError::UnknownType(3)));
    assert_eq!(with(16, 6), Err(FrameError::UnknownType(6)));
    assert_eq!(with(24, 3), Err(FrameError::UnknownStatus(3)));
    assert!(matches!(
        with(0, 0x41),
        Err(FrameError::LengthMismatch { .. })
    ));
    // REPLY_WITH_FDS with no room for its nfds word, and with too many.
    let bare = frame(&[&[w(PROG), w(1), w(1), w(REPLY_WITH_FDS), w(0), w(OK)].concat()]);
    assert!(matches!(Frame::parse(&bare), Err(FrameError::Truncated(_))));
    let many = frame(&[&[w(PROG), w(1), w(1), w(REPLY_WITH_FDS), w(0), w(OK), w(33)].concat()]);
    assert_eq!(Frame::parse(&many), Err(FrameError::TooManyFds(33)));
}

#[test]
fn lenient_where_libvirt_is() {
    // Non-zero padding after the path, and trailing bytes after flags.
    let mut b = goldens()[2].bytes.clone();
    let pad = 4 + 24 + 4 + PATH.len();
    b[pad..pad + 3].copy_from_slice(b"xyz");
    b.extend_from_slice(b"trailing");
    let len = b.len() as u32;
    b[..4].copy_from_slice(&len.to_be_bytes());
    assert_eq!(
        Call::decode(&Frame::parse(&b).unwrap()).unwrap(),
        position_call()
    );
}

#[test]
fn error_reply_with_dom_and_net_present_decodes() {
    let payload = [
        w(38),
        w(63),
        w(1),
        s(b"boom"),
        w(2),
        w(7), // dom present (any non-zero)
        s(b"vm1"),
        UUID.to_vec(),
        w(3),
        w(1),
        s(b"%s"),
        w(0),
        w(0),
        w(5),
        w(6),
        w(1), // net present
        s(b"default"),
        UUID.to_vec(),
    ]
    .concat();
    let err = ErrorReply::decode(&payload).unwrap();
    assert_eq!(err.message.as_deref(), Some("boom"));
    assert_eq!(err.str1.as_deref(), Some("%s"));
    assert_eq!((err.int1, err.int2), (5, 6));
    // Invalid UTF-8 becomes '?' without growing.
    let bad = [
        w(1),
        w(7),
        w(1),
        s(b"a\xffb"),
        w(2),
        w(0),
        w(0),
        w(0),
        w(0),
        w(0),
        w(0),
        w(0),
    ]
    .concat();
    assert_eq!(
        ErrorReply::decode(&bad).unwrap().message.as_deref(),
        Some("a?b")
    );
}

#[test]
fn reply_mismatches_are_errors() {
    let g = goldens();
    let pos_reply = Frame::parse(&g[3].bytes).unwrap();
    assert!(matches!(
        Reply::decode(&pos_reply, Procedure::ReadLogFile),
        Err(ReplyError::Mismatch { proc_: 2, .. })
    ));
    // OpenLogFile's reply must carry exactly one FD.
    let plain = frame(&[
        &[w(PROG), w(1), w(1), w(REPLY), w(0), w(OK)].concat(),
        &h(1),
        &h(2),
    ]);
    assert!(matches!(
        Reply::decode(&Frame::parse(&plain).unwrap(), Procedure::OpenLogFile),
        Err(ReplyError::Fds {
            nfds: 0,
            expected: 1,
            ..
        })
    ));
    let call = Frame::parse(&g[0].bytes).unwrap();
    assert!(matches!(
        Reply::decode(&call, Procedure::OpenLogFile),
        Err(ReplyError::NotAReply(MessageType::Call))
    ));
    // An error reply to a call we made.
    let err = ErrorReply::new(errors::INVALID_ARG, errors::FROM_LOGGING, "flags");
    let hdr = Header {
        proc_: 3,
        ..unknown_procedure_header()
    };
    let bytes = err.encode(&hdr);
    assert_eq!(
        Reply::decode(&Frame::parse(&bytes).unwrap(), Procedure::ReadLogFile),
        Err(ReplyError::Remote(err))
    );
}

#[test]
fn encoder_refuses_oversized_data() {
    let data = vec![0; STRING_MAX + 1];
    assert!(matches!(
        Reply::Data(data).encode(0),
        Err(EncodeError::StringTooLong { field: "data", .. })
    ));
    let at_max = Reply::Data(vec![b'x'; STRING_MAX]).encode(0).unwrap();
    assert_eq!(at_max.len(), 4 + 24 + 4 + STRING_MAX);
    // An error message over the limit is cut, not refused.
    let long = ErrorReply::rpc("é".repeat(STRING_MAX));
    let f_bytes = long.encode(&unknown_procedure_header());
    let f = Frame::parse(&f_bytes).unwrap();
    let back = ErrorReply::decode(f.payload).unwrap();
    assert_eq!(back.message.unwrap().len(), STRING_MAX);
}
