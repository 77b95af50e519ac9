//! Truncation at every length, round trips and garbage, as properties.

use proptest::prelude::*;

use super::*;

/// Every proper prefix of every golden frame: "need more" from the framer,
/// an error (never a panic) from the parser.
#[test]
fn truncated_frames_at_every_length() {
    for g in goldens() {
        let len = g.bytes.len();
        for n in 0..len {
            let cut = &g.bytes[..n];
            let want = if n < 4 { 4 - n } else { len - n };
            assert_eq!(
                check_frame(cut),
                Ok(Framing::NeedMore(want)),
                "{} at {n}",
                g.name
            );
            assert!(Frame::parse(cut).is_err(), "{} at {n}", g.name);
        }
    }
}

/// Every proper prefix of every golden payload, in a frame whose length is
/// right for it: the frame parses, the payload cleanly does not.
#[test]
fn truncated_payloads_at_every_length() {
    let g = goldens();
    for (i, proc_) in [(0, 1), (2, 2), (4, 3), (6, 4)] {
        let full = &g[i].bytes;
        for n in 28..full.len() {
            let cut = [w(n as u32), full[4..n].to_vec()].concat();
            let f = Frame::parse(&cut).unwrap();
            let err = Call::decode(&f).unwrap_err();
            assert!(
                matches!(err, CallError::Payload { .. }),
                "proc {proc_} at {n}: {err}"
            );
            assert!(err.reply().is_some());
        }
    }
    for (i, procedure) in [
        (1, Procedure::OpenLogFile),
        (3, Procedure::GetLogFilePosition),
        (5, Procedure::ReadLogFile),
        (7, Procedure::AppendLogFile),
    ] {
        let full = &g[i].bytes;
        let start = if i == 1 { 32 } else { 28 };
        for n in start..full.len() {
            let cut = [w(n as u32), full[4..n].to_vec()].concat();
            let f = Frame::parse(&cut).unwrap();
            assert!(
                matches!(Reply::decode(&f, procedure), Err(ReplyError::Payload(_))),
                "{procedure:?} at {n}"
            );
        }
    }
    let err = &g[8].bytes;
    for n in 0..err.len() - 28 {
        assert!(
            ErrorReply::decode(&err[28..28 + n]).is_err(),
            "error reply at {n}"
        );
    }
}

// --- properties ------------------------------------------------------------

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

fn domain() -> impl Strategy<Value = Domain> {
    (any::<[u8; 16]>(), bytes(40)).prop_map(|(uuid, name)| Domain { uuid, name })
}

fn position() -> impl Strategy<Value = Position> {
    (any::<u64>(), any::<u64>()).prop_map(|(inode, offset)| Position { inode, offset })
}

fn call() -> impl Strategy<Value = Call> {
    prop_oneof![
        (bytes(12), domain(), bytes(80), any::<u32>()).prop_map(|(driver, dom, path, flags)| {
            Call::OpenLogFile(OpenLogFile {
                driver,
                dom,
                path,
                flags,
            })
        }),
        (bytes(80), any::<u32>())
            .prop_map(|(path, flags)| Call::GetLogFilePosition(GetLogFilePosition { path, flags })),
        (bytes(80), position(), any::<u64>(), any::<u32>()).prop_map(
            |(path, pos, maxlen, flags)| Call::ReadLogFile(ReadLogFile {
                path,
                pos,
                maxlen,
                flags
            })
        ),
        (bytes(12), domain(), bytes(80), bytes(200), any::<u32>()).prop_map(
            |(driver, dom, path, message, flags)| Call::AppendLogFile(AppendLogFile {
                driver,
                dom,
                path,
                message,
                flags,
            })
        ),
    ]
}

fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        position().prop_map(Reply::Opened),
        position().prop_map(Reply::Position),
        bytes(300).prop_map(Reply::Data),
        any::<i32>().prop_map(Reply::Appended),
    ]
}

fn error_reply() -> impl Strategy<Value = ErrorReply> {
    let text = || proptest::option::of(".{0,40}");
    (
        (any::<i32>(), any::<i32>(), text(), any::<i32>()),
        (text(), text(), text(), any::<i32>(), any::<i32>()),
    )
        .prop_map(
            |((code, domain, message, level), (str1, str2, str3, int1, int2))| ErrorReply {
                code,
                domain,
                message,
                level,
                str1,
                str2,
                str3,
                int1,
                int2,
            },
        )
}

/// A frame read back the way a connection task reads it.
fn read_back(bytes: &[u8]) -> Frame<'_> {
    assert_eq!(check_frame(bytes), Ok(Framing::Ready(bytes.len())));
    Frame::parse(bytes).unwrap()
}

proptest! {
    #[test]
    fn calls_round_trip(c in call(), serial in any::<u32>()) {
        let bytes = c.encode(serial).unwrap();
        let f = read_back(&bytes);
        prop_assert_eq!(f.header.serial, serial);
        prop_assert_eq!(f.header.proc_, c.procedure() as i32);
        prop_assert_eq!(Call::decode(&f).unwrap(), c);
    }

    #[test]
    fn replies_round_trip(r in reply(), serial in any::<u32>()) {
        let bytes = r.encode(serial).unwrap();
        let f = read_back(&bytes);
        prop_assert_eq!(f.header.serial, serial);
        prop_assert_eq!(Reply::decode(&f, r.procedure()).unwrap(), r);
    }

    #[test]
    fn error_replies_round_trip(e in error_reply(), serial in any::<u32>(), proc_ in 1..5i32) {
        let call = Header { proc_, serial, ..unknown_procedure_header() };
        let bytes = e.encode(&call);
        let f = read_back(&bytes);
        prop_assert_eq!((f.header.kind, f.header.status), (MessageType::Reply, Status::Error));
        let procedure = Procedure::from_wire(proc_).unwrap();
        prop_assert_eq!(Reply::decode(&f, procedure), Err(ReplyError::Remote(e)));
    }

    #[test]
    fn garbage_never_panics(data in bytes(400)) {
        decode_everything(&data);
    }

    /// Garbage behind a valid header, so the payload decoders see it.
    #[test]
    fn garbage_payload_never_panics(
        kind in prop::sample::select(vec![0u32, 1, 4, 5]),
        proc_ in 0..6i32,
        status in 0..2u32,
        nfds in 0..3u32,
        payload in bytes(300),
    ) {
        let mut body = [w(PROG), w(1), w(proc_ as u32), w(kind), w(0), w(status)].concat();
        if kind >= 4 {
            body.extend(w(nfds));
        }
        body.extend(payload);
        decode_everything(&frame(&[&body]));
    }
}

/// What the fuzz target does, for proptest's inputs.
fn decode_everything(data: &[u8]) {
    let _ = check_frame(data);
    if let Ok(f) = Frame::parse(data) {
        if let Ok(c) = Call::decode(&f) {
            // What decodes re-encodes to something that decodes the same.
            let again = c.encode(f.header.serial).unwrap();
            assert_eq!(Call::decode(&Frame::parse(&again).unwrap()).unwrap(), c);
        } else if let Err(e) = Call::decode(&f) {
            let _ = e.reply().map(|r| r.encode(&f.header));
        }
        for p in Procedure::ALL {
            let _ = Reply::decode(&f, p);
        }
    }
    let _ = OpenLogFile::decode(data);
    let _ = GetLogFilePosition::decode(data);
    let _ = ReadLogFile::decode(data);
    let _ = AppendLogFile::decode(data);
    let _ = Position::decode(data);
    let _ = ErrorReply::decode(data);
}
