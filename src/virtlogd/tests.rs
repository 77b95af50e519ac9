//! Golden vectors, round trips, truncation and garbage for the codec.
//!
//! The golden frames are built here from the `.x` definitions with helpers
//! that share nothing with the codec, and pinned to hex strings that
//! `tests/virtlogd/test_client_codec.py` checks the independent Python
//! encoder against: a change to either codec that moves a byte fails both.

use proptest::prelude::*;

use super::*;

// --- hand-built XDR, independent of xdr.rs -------------------------------

/// One big-endian 32-bit word.
fn w(x: u32) -> Vec<u8> {
    x.to_be_bytes().to_vec()
}

/// An unsigned hyper: two words, high first.
fn h(x: u64) -> Vec<u8> {
    x.to_be_bytes().to_vec()
}

/// `string<>`: length word, bytes, zero bytes up to a multiple of 4.
fn s(bytes: &[u8]) -> Vec<u8> {
    let mut out = w(bytes.len() as u32);
    out.extend_from_slice(bytes);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
    out
}

/// The length word (counting itself) in front of the rest.
fn frame(parts: &[&[u8]]) -> Vec<u8> {
    let body: Vec<u8> = parts.concat();
    [w(body.len() as u32 + 4), body].concat()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const PROG: u32 = 0x8753_9319;
const CALL: u32 = 0;
const REPLY: u32 = 1;
const REPLY_WITH_FDS: u32 = 5;
const OK: u32 = 0;
const ERROR: u32 = 1;

/// libvirt's example UUID c7a5fdbd-edaf-9455-926a-d65c16db1809, as
/// `opaque uuid[16]`: 16 bytes, no length, no padding.
const UUID: [u8; 16] = [
    0xc7, 0xa5, 0xfd, 0xbd, 0xed, 0xaf, 0x94, 0x55, 0x92, 0x6a, 0xd6, 0x5c, 0x16, 0xdb, 0x18, 0x09,
];
/// 29 bytes, so 3 bytes of padding.
const PATH: &[u8] = b"/var/log/libvirt/qemu/vm1.log";
/// 35 bytes, 1 byte of padding.
const SWTPM_PATH: &[u8] = b"/var/log/libvirt/qemu/vm1-swtpm.log";
const POS: Position = Position {
    inode: 0x0000_0000_0012_d687,
    offset: 0x0000_0000_0000_1f40,
};

fn dom() -> Domain {
    Domain {
        uuid: UUID,
        name: b"vm1".to_vec(),
    }
}

/// One golden case: the typed value, the frame built by hand, and the hex
/// the Python test holds too.
struct Golden {
    name: &'static str,
    bytes: Vec<u8>,
    hex: &'static str,
}

fn open_call() -> Call {
    Call::OpenLogFile(OpenLogFile {
        driver: b"qemu".to_vec(),
        dom: dom(),
        path: PATH.to_vec(),
        flags: OPEN_TRUNCATE,
    })
}

fn position_call() -> Call {
    Call::GetLogFilePosition(GetLogFilePosition {
        path: PATH.to_vec(),
        flags: 0,
    })
}

fn read_call() -> Call {
    Call::ReadLogFile(ReadLogFile {
        path: PATH.to_vec(),
        pos: POS,
        maxlen: 131_072,
        flags: 0,
    })
}

fn append_call() -> Call {
    Call::AppendLogFile(AppendLogFile {
        driver: b"qemu".to_vec(),
        dom: dom(),
        path: SWTPM_PATH.to_vec(),
        message: b"swtpm started\n".to_vec(),
        flags: 0,
    })
}

/// OpenLogFile call
const OPEN_CALL_HEX: &str = "00000064875393190000000100000001000000000000000000000000\
    0000000471656d75c7a5fdbdedaf9455926ad65c16db180900000003766d3100\
    0000001d2f7661722f6c6f672f6c6962766972742f71656d752f766d312e6c6f\
    6700000000000001";
/// OpenLogFile reply
const OPEN_REPLY_HEX: &str = "00000030875393190000000100000001000000050000000000000000\
    00000001000000000012d6870000000000001f40";
/// GetLogFilePosition call
const POSITION_CALL_HEX: &str = "00000044875393190000000100000002000000000000000100000000\
    0000001d2f7661722f6c6f672f6c6962766972742f71656d752f766d312e6c6f\
    6700000000000000";
/// GetLogFilePosition reply
const POSITION_REPLY_HEX: &str = "0000002c875393190000000100000002000000010000000100000000\
    000000000012d6870000000000001f40";
/// ReadLogFile call
const READ_CALL_HEX: &str = "0000005c875393190000000100000003000000000000000200000000\
    0000001d2f7661722f6c6f672f6c6962766972742f71656d752f766d312e6c6f\
    67000000000000000012d6870000000000001f40000000000002000000000000";
/// ReadLogFile reply
const READ_REPLY_HEX: &str = "00000028875393190000000100000003000000010000000200000000\
    00000005626f6f740a000000";
/// AppendLogFile call
const APPEND_CALL_HEX: &str = "0000007c875393190000000100000004000000000000000300000000\
    0000000471656d75c7a5fdbdedaf9455926ad65c16db180900000003766d3100\
    000000232f7661722f6c6f672f6c6962766972742f71656d752f766d312d7377\
    74706d2e6c6f67000000000e737774706d20737461727465640a000000000000";
/// AppendLogFile reply
const APPEND_REPLY_HEX: &str = "00000020875393190000000100000004000000010000000300000000\
    00000000";
/// error reply to unknown procedure 5
const ERROR_REPLY_HEX: &str = "00000060875393190000000100000005000000010000000400000001\
    00000027000000070000000100000014756e6b6e6f776e2070726f6365647572\
    653a20350000000200000000000000000000000000000000ffffffffffffffff\
    00000000";

fn goldens() -> Vec<Golden> {
    // Every call's header: prog, vers 1, proc, type CALL, serial, status OK.
    let call = |proc_: u32, serial: u32| -> Vec<u8> {
        [w(PROG), w(1), w(proc_), w(CALL), w(serial), w(OK)].concat()
    };
    let reply = |proc_: u32, kind: u32, serial: u32, status: u32| -> Vec<u8> {
        [w(PROG), w(1), w(proc_), w(kind), w(serial), w(status)].concat()
    };
    vec![
        Golden {
            name: "OpenLogFile call",
            // driver; dom { uuid (16 bytes, bare); name }; path; flags = TRUNCATE
            bytes: frame(&[&call(1, 0), &s(b"qemu"), &UUID, &s(b"vm1"), &s(PATH), &w(1)]),
            hex: OPEN_CALL_HEX,
        },
        Golden {
            name: "OpenLogFile reply",
            // REPLY_WITH_FDS: the nfds word (1) sits between header and
            // payload; payload Position { inode; offset }, two hypers.
            bytes: frame(&[
                &reply(1, REPLY_WITH_FDS, 0, OK),
                &w(1),
                &h(POS.inode),
                &h(POS.offset),
            ]),
            hex: OPEN_REPLY_HEX,
        },
        Golden {
            name: "GetLogFilePosition call",
            bytes: frame(&[&call(2, 1), &s(PATH), &w(0)]),
            hex: POSITION_CALL_HEX,
        },
        Golden {
            name: "GetLogFilePosition reply",
            bytes: frame(&[&reply(2, REPLY, 1, OK), &h(POS.inode), &h(POS.offset)]),
            hex: POSITION_REPLY_HEX,
        },
        Golden {
            name: "ReadLogFile call",
            // path; pos { inode; offset }; maxlen (hyper) 131072; flags
            bytes: frame(&[
                &call(3, 2),
                &s(PATH),
                &h(POS.inode),
                &h(POS.offset),
                &h(131_072),
                &w(0),
            ]),
            hex: READ_CALL_HEX,
        },
        Golden {
            name: "ReadLogFile reply",
            // data: "boot\n", 5 bytes and 3 of padding
            bytes: frame(&[&reply(3, REPLY, 2, OK), &s(b"boot\n")]),
            hex: READ_REPLY_HEX,
        },
        Golden {
            name: "AppendLogFile call",
            bytes: frame(&[
                &call(4, 3),
                &s(b"qemu"),
                &UUID,
                &s(b"vm1"),
                &s(SWTPM_PATH),
                &s(b"swtpm started\n"),
                &w(0),
            ]),
            hex: APPEND_CALL_HEX,
        },
        Golden {
            name: "AppendLogFile reply",
            // int ret = 0
            bytes: frame(&[&reply(4, REPLY, 3, OK), &w(0)]),
            hex: APPEND_REPLY_HEX,
        },
        Golden {
            name: "error reply to unknown procedure 5",
            // REPLY (never WITH_FDS), status ERROR, no nfds word, then
            // virNetMessageError:
            bytes: frame(&[
                &reply(5, REPLY, 4, ERROR),
                &w(39),                      // code VIR_ERR_RPC
                &w(7),                       // domain VIR_FROM_RPC
                &w(1),                       // message: present
                &s(b"unknown procedure: 5"), //   20 bytes, no padding
                &w(2),                       // level VIR_ERR_ERROR
                &w(0),                       // dom: absent
                &w(0),                       // str1: absent
                &w(0),                       // str2: absent
                &w(0),                       // str3: absent
                &w(-1i32 as u32),            // int1
                &w(-1i32 as u32),            // int2
                &w(0),                       // net: absent
            ]),
            hex: ERROR_REPLY_HEX,
        },
    ]
}

fn unknown_procedure_header() -> Header {
    Header {
        prog: PROGRAM,
        vers: VERSION,
        proc_: 5,
        kind: MessageType::Call,
        serial: 4,
        status: Status::Ok,
    }
}

/// What the codec makes of each golden case, in `goldens()` order.
fn encoded() -> Vec<Vec<u8>> {
    vec![
        open_call().encode(0).unwrap(),
        Reply::Opened(POS).encode(0).unwrap(),
        position_call().encode(1).unwrap(),
        Reply::Position(POS).encode(1).unwrap(),
        read_call().encode(2).unwrap(),
        Reply::Data(b"boot\n".to_vec()).encode(2).unwrap(),
        append_call().encode(3).unwrap(),
        Reply::Appended(0).encode(3).unwrap(),
        ErrorReply::unknown_procedure(5).encode(&unknown_procedure_header()),
    ]
}

#[test]
fn hand_built_frames_match_the_pinned_hex() {
    for g in goldens() {
        assert_eq!(hex(&g.bytes), g.hex, "{}", g.name);
    }
}

#[test]
fn encoder_matches_golden_bytes() {
    for (g, bytes) in goldens().iter().zip(encoded()) {
        assert_eq!(hex(&bytes), hex(&g.bytes), "{}", g.name);
    }
}

#[test]
fn golden_calls_decode() {
    let g = goldens();
    for (i, serial, want) in [
        (0, 0, open_call()),
        (2, 1, position_call()),
        (4, 2, read_call()),
        (6, 3, append_call()),
    ] {
        let f = Frame::parse(&g[i].bytes).unwrap();
        assert_eq!(f.header.serial, serial);
        assert_eq!(f.nfds, 0);
        assert_eq!(Call::decode(&f).unwrap(), want, "{}", g[i].name);
    }
}

#[test]
fn golden_replies_decode() {
    let g = goldens();
    for (i, want) in [
        (1, Reply::Opened(POS)),
        (3, Reply::Position(POS)),
        (5, Reply::Data(b"boot\n".to_vec())),
        (7, Reply::Appended(0)),
    ] {
        let f = Frame::parse(&g[i].bytes).unwrap();
        assert_eq!(
            Reply::decode(&f, want.procedure()).unwrap(),
            want,
            "{}",
            g[i].name
        );
    }
    let f = Frame::parse(&g[1].bytes).unwrap();
    assert_eq!((f.header.kind, f.nfds), (MessageType::ReplyWithFds, 1));
}

#[test]
fn golden_error_reply_decodes() {
    let g = goldens();
    let f = Frame::parse(&g[8].bytes).unwrap();
    assert_eq!(
        (f.header.kind, f.header.status),
        (MessageType::Reply, Status::Error)
    );
    assert_eq!((f.header.proc_, f.header.serial, f.nfds), (5, 4, 0));
    let err = ErrorReply::decode(f.payload).unwrap();
    assert_eq!(err, ErrorReply::unknown_procedure(5));
    assert_eq!((err.code, err.domain), (errors::RPC, errors::FROM_RPC));
    assert_eq!(err.message.as_deref(), Some("unknown procedure: 5"));
}

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
