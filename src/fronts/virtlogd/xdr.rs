//! The XDR primitives this protocol uses, over a byte slice and a `Vec`.
//!
//! Only what `virnetprotocol.x` and `log_protocol.x` need: 32- and 64-bit
//! integers, bounded strings, fixed opaque data and optionals.
//!
//! Decoding follows the XDR of libtirpc/glibc that libvirt links, so that we
//! accept exactly what virtlogd accepts:
//! - padding after a string or opaque is skipped, not checked (`xdr_opaque`
//!   reads it into a scratch buffer), so non-zero padding is accepted;
//! - an optional's discriminant is `xdr_bool`: 0 is absent, any other value
//!   is present.
//!
//! Encoding is canonical: zero padding, discriminants 0 and 1.
//!
//! Invariant: a length read from the wire is checked against the maximum and
//! against the bytes that remain before anything is allocated, so a decode
//! allocates at most the size of its input.

/// `VIR_LOG_MANAGER_PROTOCOL_STRING_MAX`, also `VIR_NET_MESSAGE_STRING_MAX`.
pub const STRING_MAX: usize = 4_194_304;

/// An XDR payload: a procedure's arguments, its return value, or the error
/// reply. `decode` ignores bytes after the last field, as libvirt does.
pub trait Payload: Sized {
    fn decode(payload: &[u8]) -> Result<Self, XdrError> {
        Self::read(&mut Reader::new(payload))
    }

    #[doc(hidden)]
    fn read(r: &mut Reader<'_>) -> Result<Self, XdrError>;
    #[doc(hidden)]
    fn write(&self, w: &mut Writer<'_>) -> Result<(), EncodeError>;
}

/// A payload that does not decode. `field` names the XDR field, as in the
/// `.x` files, so a log line says where the message went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XdrError {
    #[error("{field}: needs {need} more bytes, {left} left")]
    Truncated {
        field: &'static str,
        need: usize,
        left: usize,
    },
    #[error("{field}: string of {len} bytes, the most is {max}")]
    StringTooLong {
        field: &'static str,
        len: u64,
        max: usize,
    },
}

/// A message that cannot be encoded because a value is too large for the
/// protocol; libvirt's own encoder refuses the same.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("{field}: string of {len} bytes, the most is {max}")]
    StringTooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("message of {len} bytes, the most is {max}")]
    FrameTooLarge { len: usize, max: usize },
}

/// The padding that brings `len` to a multiple of 4.
pub(crate) fn padding(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// A cursor over one payload (`pub` only so that `Payload` can name it; the
/// module is private). Bytes after the last field are ignored, as
/// libvirt's `virNetMessageDecodePayload` ignores them.
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    fn take(&mut self, field: &'static str, n: usize) -> Result<&'a [u8], XdrError> {
        match self.buf.split_at_checked(n) {
            Some((head, rest)) => {
                self.buf = rest;
                Ok(head)
            }
            None => Err(XdrError::Truncated {
                field,
                need: n,
                left: self.buf.len(),
            }),
        }
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], XdrError> {
        let bytes = self.take(field, N)?;
        // `take` returned exactly N bytes.
        let mut out = [0; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, XdrError> {
        self.array(field).map(u32::from_be_bytes)
    }

    pub(crate) fn i32(&mut self, field: &'static str) -> Result<i32, XdrError> {
        self.array(field).map(i32::from_be_bytes)
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, XdrError> {
        self.array(field).map(u64::from_be_bytes)
    }

    /// `opaque name[N]`: N bytes, no length word, padded to 4.
    pub(crate) fn opaque<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<[u8; N], XdrError> {
        let out = self.array(field)?;
        self.take(field, padding(N))?;
        Ok(out)
    }

    /// `string name<max>`: a length word, the bytes, padding to 4. The bytes
    /// are returned as sent (C strings, so libvirt's code would stop at a
    /// NUL inside; judging one is the caller's business).
    pub(crate) fn string(&mut self, field: &'static str, max: usize) -> Result<Vec<u8>, XdrError> {
        let len = self.u32(field)?;
        let len_usize = usize::try_from(len).ok().filter(|&n| n <= max);
        let Some(len) = len_usize else {
            return Err(XdrError::StringTooLong {
                field,
                len: u64::from(len),
                max,
            });
        };
        // Length and padding both checked against what remains before the
        // copy, so a lying length word costs nothing.
        let total = len + padding(len);
        if total > self.buf.len() {
            return Err(XdrError::Truncated {
                field,
                need: total,
                left: self.buf.len(),
            });
        }
        let bytes = self.take(field, len)?.to_vec();
        self.take(field, padding(len))?;
        Ok(bytes)
    }

    /// `T *name`: a discriminant, then the value when it is not 0.
    pub(crate) fn optional<T>(
        &mut self,
        field: &'static str,
        read: impl FnOnce(&mut Self) -> Result<T, XdrError>,
    ) -> Result<Option<T>, XdrError> {
        match self.u32(field)? {
            0 => Ok(None),
            _ => read(self).map(Some),
        }
    }
}

/// Appends XDR to a buffer.
pub struct Writer<'a> {
    pub(crate) out: &'a mut Vec<u8>,
}

impl Writer<'_> {
    pub(crate) fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_be_bytes());
    }

    pub(crate) fn i32(&mut self, v: i32) {
        self.out.extend_from_slice(&v.to_be_bytes());
    }

    pub(crate) fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_be_bytes());
    }

    pub(crate) fn opaque(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
        self.out.resize(self.out.len() + padding(bytes.len()), 0);
    }

    pub(crate) fn string(
        &mut self,
        field: &'static str,
        bytes: &[u8],
        max: usize,
    ) -> Result<(), EncodeError> {
        let len = u32::try_from(bytes.len())
            .ok()
            .filter(|_| bytes.len() <= max)
            .ok_or(EncodeError::StringTooLong {
                field,
                len: bytes.len(),
                max,
            })?;
        self.u32(len);
        self.opaque(bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_padding_is_skipped_not_checked() {
        // "ab" + two padding bytes that are not zero: libtirpc accepts it.
        let buf = [0, 0, 0, 2, b'a', b'b', 0xff, 0xee, 0, 0, 0, 7];
        let mut r = Reader::new(&buf);
        assert_eq!(r.string("s", 16).unwrap(), b"ab");
        assert_eq!(r.u32("n").unwrap(), 7);
    }

    #[test]
    fn lying_string_length_fails_before_allocating() {
        let buf = [0xff, 0xff, 0xff, 0xf0, b'a'];
        let err = Reader::new(&buf).string("s", usize::MAX).unwrap_err();
        assert!(matches!(err, XdrError::Truncated { left: 1, .. }), "{err}");
        let err = Reader::new(&buf).string("s", 4).unwrap_err();
        assert!(matches!(err, XdrError::StringTooLong { .. }), "{err}");
    }

    #[test]
    fn missing_padding_is_truncation() {
        let buf = [0, 0, 0, 1, b'a', 0];
        assert!(Reader::new(&buf).string("s", 16).is_err());
    }

    #[test]
    fn any_non_zero_discriminant_is_present() {
        let buf = [0, 0, 0, 2, 0, 0, 0, 9];
        let v = Reader::new(&buf).optional("o", |r| r.u32("v")).unwrap();
        assert_eq!(v, Some(9));
    }

    #[test]
    fn encoder_refuses_long_strings() {
        let mut out = Vec::new();
        let err = Writer { out: &mut out }
            .string("s", b"abcde", 4)
            .unwrap_err();
        assert!(matches!(err, EncodeError::StringTooLong { len: 5, .. }));
    }
}
