//! Golden vectors, round trips, truncation and garbage for the codec.
//!
//! The golden frames are built here from the `.x` definitions with helpers
//! that share nothing with the codec, and pinned to hex strings that
//! `tests/virtlogd/test_client_codec.py` checks the independent Python
//! encoder against: a change to either codec that moves a byte fails both.

use super::*;

mod captured;
mod edges;
mod props;

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
const ERROR_REPLY_HEX: &str = "00000080875393190000000100000005000000010000000400000001\
    00000027000000070000000100000014756e6b6e6f776e2070726f6365647572\
    653a203500000002000000000000000100000002257300000000000100000014\
    756e6b6e6f776e2070726f6365647572653a203500000000ffffffffffffffff\
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
                &w(1),                       // str1: present, the format
                &s(b"%s"),
                &w(1), // str2: present, the message again
                &s(b"unknown procedure: 5"),
                &w(0),            // str3: absent
                &w(-1i32 as u32), // int1
                &w(-1i32 as u32), // int2
                &w(0),            // net: absent
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
