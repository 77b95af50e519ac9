//! Frames captured from a real virtlogd, which the encoder must reproduce
//! byte for byte.
//!
//! virtlogd was libvirt-daemon-log 11.3.0-2~bpo12+1 (Debian
//! bookworm-backports), unpacked with `apt-get download` + `dpkg -x` and
//! started as root with `-f CONF -p PIDFILE`, its two sockets pre-bound and
//! passed by socket activation (LISTEN_FDS=2,
//! LISTEN_FDNAMES=virtlogd.socket:virtlogd-admin.socket).
//! tests/virtlogd/client.py sent the calls and hex-dumped the replies.

use super::*;

/// Reply to a call of procedure 5, serial 0, empty payload.
const VIRTLOGD_UNKNOWN_PROC: &str = "\
    00000080875393190000000100000005000000010000000000000001\
    00000027000000070000000100000014756e6b6e6f776e2070726f6365647572\
    653a203500000002000000000000000100000002257300000000000100000014\
    756e6b6e6f776e2070726f6365647572653a203500000000ffffffffffffffff\
    00000000";
/// Reply to GetLogFilePosition, serial 2, whose path length says 100 with
/// 4 bytes following.
const VIRTLOGD_UNDECODABLE: &str = "\
    00000098875393190000000100000002000000010000000200000001\
    00000027000000070000000100000020556e61626c6520746f206465636f6465\
    206d657373616765207061796c6f616400000002000000000000000100000002\
    257300000000000100000020556e61626c6520746f206465636f6465206d6573\
    73616765207061796c6f616400000000ffffffffffffffff00000000";
/// Reply to GetLogFilePosition, serial 4, sent with status ERROR.
const VIRTLOGD_BAD_STATUS: &str = "\
    00000090875393190000000100000002000000010000000400000001\
    0000002700000007000000010000001b556e6578706563746564206d65737361\
    6765207374617475732031000000000200000000000000010000000225730000\
    000000010000001b556e6578706563746564206d657373616765207374617475\
    7320310000000000ffffffffffffffff00000000";
/// Reply to a second OpenLogFile (serial 1) of /tmp/vlog/logs/vm2.log while
/// the pipe from the first was open.
const VIRTLOGD_BUSY: &str = "\
    000000e8875393190000000100000001000000010000000100000001\
    000000260000003f000000010000004743616e6e6f74206f70656e206c6f6720\
    66696c653a20272f746d702f766c6f672f6c6f67732f766d322e6c6f67273a20\
    446576696365206f72207265736f757263652062757379000000000200000000\
    000000010000000225730000000000010000004743616e6e6f74206f70656e20\
    6c6f672066696c653a20272f746d702f766c6f672f6c6f67732f766d322e6c6f\
    67273a20446576696365206f72207265736f7572636520627573790000000000\
    00000010ffffffff00000000";

#[test]
fn error_replies_match_a_real_virtlogd() {
    let call = |proc_, serial| Header {
        proc_,
        serial,
        ..unknown_procedure_header()
    };
    let busy = ErrorReply::system_error(
        16, // EBUSY
        "Cannot open log file: '/tmp/vlog/logs/vm2.log': Device or resource busy",
    );
    let status = CallError::BadStatus(Status::Error).reply().unwrap();
    for (name, ours, theirs) in [
        (
            "unknown procedure",
            ErrorReply::unknown_procedure(5).encode(&call(5, 0)),
            VIRTLOGD_UNKNOWN_PROC,
        ),
        (
            "undecodable",
            ErrorReply::undecodable_payload().encode(&call(2, 2)),
            VIRTLOGD_UNDECODABLE,
        ),
        (
            "bad status",
            status.encode(&call(2, 4)),
            VIRTLOGD_BAD_STATUS,
        ),
        ("busy", busy.encode(&call(1, 1)), VIRTLOGD_BUSY),
    ] {
        assert_eq!(hex(&ours), theirs, "{name}");
    }
}

/// Reply to OpenLogFile of /tmp/vlog/logs/vm2.log, serial 0: REPLY_WITH_FDS,
/// nfds 1, then Position (the new file's inode, offset 0). One FD followed
/// in its own 1-byte message, as client.py's receive path requires.
const VIRTLOGD_OPENED: &str = "\
    00000030875393190000000100000001000000050000000000000000\
    0000000100000000009920fd0000000000000000";
/// Reply to GetLogFilePosition, serial 3, of that file, sent with non-zero
/// padding after the path and 8 bytes after the flags: virtlogd accepts both,
/// which is why the codec does.
const VIRTLOGD_POSITION: &str = "\
    0000002c875393190000000100000002000000010000000300000000\
    00000000009920fd0000000000000000";

#[test]
fn replies_match_a_real_virtlogd() {
    let pos = Position {
        inode: 0x99_20fd,
        offset: 0,
    };
    assert_eq!(hex(&Reply::Opened(pos).encode(0).unwrap()), VIRTLOGD_OPENED);
    assert_eq!(
        hex(&Reply::Position(pos).encode(3).unwrap()),
        VIRTLOGD_POSITION
    );
}
