//! Feeds arbitrary bytes to the framer, the frame parser, the call and
//! reply decoders and every payload decoder. Crashes are panics or
//! sanitizer reports; a decoded call must also re-encode to a frame that
//! decodes to the same call.

#![no_main]

use libfuzzer_sys::fuzz_target;

use guestlogd::fronts::virtlogd::{
    AppendLogFile, Call, ErrorReply, Frame, GetLogFilePosition, OpenLogFile, Payload, Position,
    Procedure, ReadLogFile, Reply, check_frame,
};

fuzz_target!(|data: &[u8]| {
    let _ = check_frame(data);
    if let Ok(frame) = Frame::parse(data) {
        match Call::decode(&frame) {
            Ok(call) => {
                let again = call.encode(frame.header.serial).expect("a decoded call re-encodes");
                let frame2 = Frame::parse(&again).expect("its frame parses");
                assert_eq!(Call::decode(&frame2).expect("and decodes"), call);
            }
            Err(e) => {
                if let Some(reply) = e.reply() {
                    let bytes = reply.encode(&frame.header);
                    assert!(Frame::parse(&bytes).is_ok());
                }
            }
        }
        for p in Procedure::ALL {
            if let Ok(reply) = Reply::decode(&frame, p) {
                let again = reply.encode(frame.header.serial).expect("a decoded reply re-encodes");
                let frame2 = Frame::parse(&again).expect("its frame parses");
                assert_eq!(Reply::decode(&frame2, p).expect("and decodes"), reply);
            }
        }
    }
    let _ = OpenLogFile::decode(data);
    let _ = GetLogFilePosition::decode(data);
    let _ = ReadLogFile::decode(data);
    let _ = AppendLogFile::decode(data);
    let _ = Position::decode(data);
    let _ = ErrorReply::decode(data);
});
