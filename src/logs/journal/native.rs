//! journald's native protocol: one datagram per entry, each field either
//! `NAME=value\n` or, for a value that may hold a newline or any byte,
//! `NAME\n` + its length as 64-bit little-endian + the value + `\n`.
//!
//! Pure encoding, no I/O. Field names are ours (upper case, digits and
//! `_`, not starting with `_`), so they need no checking at run time.

/// Appends a field whose value may hold any byte.
pub fn binary(buf: &mut Vec<u8>, name: &str, value: &[u8]) {
    buf.extend_from_slice(name.as_bytes());
    buf.push(b'\n');
    buf.extend_from_slice(&(value.len() as u64).to_le_bytes());
    buf.extend_from_slice(value);
    buf.push(b'\n');
}

/// Appends a field whose value is text without a newline (a name we
/// validated, a number); anything else takes the binary form.
pub fn text(buf: &mut Vec<u8>, name: &str, value: &str) {
    if value.contains('\n') {
        return binary(buf, name, value.as_bytes());
    }
    buf.extend_from_slice(name.as_bytes());
    buf.push(b'=');
    buf.extend_from_slice(value.as_bytes());
    buf.push(b'\n');
}

/// Decodes a datagram into its fields, for tests and tools.
pub fn decode(mut d: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    while !d.is_empty() {
        let nl = d.iter().position(|b| *b == b'\n')?;
        let line = &d[..nl];
        match line.iter().position(|b| *b == b'=') {
            Some(eq) => {
                out.push((
                    String::from_utf8(line[..eq].to_vec()).ok()?,
                    line[eq + 1..].to_vec(),
                ));
                d = &d[nl + 1..];
            }
            None => {
                let name = String::from_utf8(line.to_vec()).ok()?;
                let rest = &d[nl + 1..];
                let len = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?) as usize;
                let value = rest.get(8..8 + len)?.to_vec();
                if rest.get(8 + len) != Some(&b'\n') {
                    return None;
                }
                out.push((name, value));
                d = &rest[9 + len..];
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_in_both_forms() {
        let mut buf = Vec::new();
        text(&mut buf, "GUESTLOGD_LOG", "vm1");
        binary(&mut buf, "MESSAGE", b"a\nb\0c");
        text(&mut buf, "X", "two\nlines");
        assert!(buf.starts_with(b"GUESTLOGD_LOG=vm1\nMESSAGE\n\x05\0\0\0\0\0\0\0a\nb\0c\n"));
        let fields = decode(&buf).unwrap();
        assert_eq!(fields[0], ("GUESTLOGD_LOG".into(), b"vm1".to_vec()));
        assert_eq!(fields[1], ("MESSAGE".into(), b"a\nb\0c".to_vec()));
        assert_eq!(fields[2], ("X".into(), b"two\nlines".to_vec()));
    }
}
