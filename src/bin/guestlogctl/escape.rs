//! `Escaper`: a guest's bytes made safe for an admin's terminal.
//!
//! A log holds whatever the guest printed, and a guest can print escape
//! sequences that move the cursor, rewrite what is on screen, set the
//! window title or (OSC 52) write the terminal's clipboard. When stdout is
//! a terminal, `read` and `tail` pass the bytes through an `Escaper`: every
//! control character but newline and tab is shown as `\xNN`, as
//! `journalctl` shows unprintable bytes, and so is every byte that is not
//! UTF-8. A carriage return right before a newline is a line end (serial
//! consoles write CR LF) and passes; a lone one, which would let a line
//! overwrite what came before it, is escaped. Text stays text: printable
//! UTF-8 passes unchanged.
//!
//! Hand-written: the input arrives in chunks that split UTF-8 sequences
//! and CR LF pairs, which std's `escape_ascii`/`escape_debug` do not
//! carry over, and they escape far more than control characters.

/// Escapes a stream of output chunk by chunk; see the module doc.
#[derive(Debug, Default)]
pub struct Escaper {
    /// The end of the previous chunk that the next one may complete: an
    /// unfinished UTF-8 sequence, or a CR that may be followed by LF.
    pending: Vec<u8>,
}

/// Where `read` and `tail` print: stdout, escaped when it is a terminal
/// (unless `--raw`).
pub struct Output {
    escaper: Option<Escaper>,
    buf: Vec<u8>,
}

impl Output {
    pub fn stdout(raw: bool) -> Self {
        use std::io::IsTerminal;
        let escape = !raw && std::io::stdout().is_terminal();
        Self {
            escaper: escape.then(Escaper::default),
            buf: Vec::new(),
        }
    }

    /// Prints `data` (escaped or not) and flushes.
    pub fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        match &mut self.escaper {
            None => stdout.write_all(data)?,
            Some(e) => {
                self.buf.clear();
                e.push(data, &mut self.buf);
                stdout.write_all(&self.buf)?;
            }
        }
        stdout.flush()
    }

    /// Prints what waits at the end of the stream.
    pub fn finish(&mut self) -> std::io::Result<()> {
        use std::io::Write;
        if let Some(e) = &mut self.escaper {
            self.buf.clear();
            e.finish(&mut self.buf);
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(&self.buf)?;
            stdout.flush()?;
        }
        Ok(())
    }
}

impl Escaper {
    /// Escapes `data`, appending to `out`; a few bytes at its end may wait
    /// for the next chunk.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<u8>) {
        let mut input = std::mem::take(&mut self.pending);
        input.extend_from_slice(data);
        let mut rest = &input[..];
        while !rest.is_empty() {
            match std::str::from_utf8(rest) {
                Ok(text) => {
                    self.text(text, true, out);
                    rest = &[];
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    // from_utf8 vouched for these bytes.
                    let text = std::str::from_utf8(valid).unwrap_or_default();
                    self.text(text, false, out);
                    match e.error_len() {
                        Some(n) => {
                            for b in &after[..n] {
                                hex(*b, out);
                            }
                            rest = &after[n..];
                        }
                        // An unfinished sequence: the next chunk may end it.
                        None => {
                            self.pending = after.to_vec();
                            rest = &[];
                        }
                    }
                }
            }
        }
    }

    /// Ends the stream: what waits is escaped as it is.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        for b in std::mem::take(&mut self.pending) {
            hex(b, out);
        }
    }

    /// Escapes valid text; `at_end` says nothing follows it in this chunk,
    /// so a CR at its end waits for the next one.
    fn text(&mut self, text: &str, at_end: bool, out: &mut Vec<u8>) {
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\n' | '\t' => out.push(c as u8),
                '\r' => match chars.peek() {
                    Some('\n') => out.push(b'\r'),
                    None if at_end => self.pending.push(b'\r'),
                    _ => hex(b'\r', out),
                },
                c if c.is_control() => {
                    let mut buf = [0; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        hex(b, out);
                    }
                }
                c => {
                    let mut buf = [0; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
    }
}

fn hex(b: u8, out: &mut Vec<u8>) {
    out.extend_from_slice(format!("\\x{b:02x}").as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(chunks: &[&[u8]]) -> String {
        let mut e = Escaper::default();
        let mut out = Vec::new();
        for c in chunks {
            e.push(c, &mut out);
        }
        e.finish(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn control_characters_are_shown_not_sent() {
        assert_eq!(
            escaped(&[b"a\x1b]52;c;ZXZpbA==\x07b\x1b[2Jc\x7f\n\td"]),
            "a\\x1b]52;c;ZXZpbA==\\x07b\\x1b[2Jc\\x7f\n\td"
        );
        // C1 controls (here CSI, U+009B) too.
        assert_eq!(escaped(&["x\u{9b}2J".as_bytes()]), "x\\xc2\\x9b2J");
    }

    #[test]
    fn cr_lf_is_a_line_end_and_a_lone_cr_is_escaped() {
        assert_eq!(escaped(&[b"one\r\ntwo\rX\n"]), "one\r\ntwo\\x0dX\n");
        // Split between chunks, either way.
        assert_eq!(escaped(&[b"one\r", b"\ntwo\r", b"X"]), "one\r\ntwo\\x0dX");
        assert_eq!(escaped(&[b"end\r"]), "end\\x0d");
    }

    #[test]
    fn utf8_passes_even_split_and_bad_bytes_are_escaped() {
        let text = "héllo wörld ✓\n".as_bytes();
        for cut in 0..text.len() {
            assert_eq!(
                escaped(&[&text[..cut], &text[cut..]]),
                "héllo wörld ✓\n",
                "cut at {cut}"
            );
        }
        assert_eq!(escaped(&[b"a\xffb\xe2\x9c"]), "a\\xffb\\xe2\\x9c");
    }
}
