//! Checks the client's byte stream, frame by frame, before pgwire decodes it.
//!
//! pgwire 0.41 reads a message's fields straight from its read buffer without holding
//! them to the frame's length. A `Parse` whose body stops short (`P 00 00 00 06 00 00`)
//! or a `Bind` announcing more format codes than it carries makes it read past the frame:
//! into the next message, or past the end of the buffer, which panics. A frame whose
//! length field is below 4 is taken for an empty message; a `Sync` with a body leaves the
//! body to be read as the next message. PostgreSQL answers all of these with SQLSTATE
//! 08P01 (protocol_violation) and closes the connection.
//!
//! [`FrameCheck`] sees every byte read from the client (through `conn::FrameGuard`) and
//! checks each frame as its bytes pass, without copying them: the header (a known message
//! type, a length within pgwire's limits) and the layout of the body (strings terminated
//! inside the frame, as many items as counted, nothing left over). The guard hands pgwire
//! the bytes before the one that shows a frame malformed, so pgwire never holds a
//! malformed frame whole and never decodes one.
//!
//! ```text
//!  socket ─► FrameGuard::poll_read ─► FrameCheck::observe ─► (passed bytes) ─► pgwire codec
//!                                           └─ Violation ─► 08P01, connection closed
//! ```

/// Longest Query, Parse, Bind and CopyData pgwire takes (its `LARGE_PACKET_SIZE_LIMIT`).
const LARGE_LIMIT: u64 = 0x3fff_fffe;
/// Longest of every other message, and of the startup packet (pgwire's and PostgreSQL's).
const SMALL_LIMIT: u64 = 10_000;

/// CancelRequest's code, where a startup packet has its protocol version.
const CANCEL_CODE: i32 = 80_877_102;
/// SSLRequest and GSSENCRequest codes: more untyped messages follow them.
const NEGOTIATION_CODES: [i32; 2] = [80_877_103, 80_877_104];

/// A malformed frame: what is wrong, and where in the client's bytes it showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Violation {
    /// Index, in the bytes last given to [`FrameCheck::observe`], of the byte that showed
    /// the frame malformed. The malformed frame is not whole before it, so the bytes
    /// before it may go on to be decoded.
    pub(crate) at: usize,
    /// What is wrong, in PostgreSQL's words where it has them.
    pub(crate) message: String,
}

/// One step of reading a message body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// A NUL-terminated string.
    Str,
    /// Describe's and Close's target: `S` (statement) or `P` (portal).
    Target,
    /// A 4-byte integer (Execute's row limit).
    Int4,
    /// A 16-bit count of the items of the `Each` step after it.
    Count,
    /// As many items as the count before said.
    Each(Item),
    /// Bind: one parameter format code serves every parameter; more must be one each.
    FormatsMatchParams,
    /// The startup packet's name/value strings, up to an empty name.
    Pairs,
    /// Whatever is left, unread: pgwire takes these bodies by their length.
    Rest,
    /// The body ends here.
    End,
}

/// An item of an [`Step::Each`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Item {
    /// A format code.
    Int2,
    /// A parameter type oid.
    Int4,
    /// A Bind parameter value: a 4-byte length (-1: NULL), then that many bytes.
    Value,
}

const QUERY: &[Step] = &[Step::Str, Step::End];
const PARSE: &[Step] = &[
    Step::Str,
    Step::Str,
    Step::Count,
    Step::Each(Item::Int4),
    Step::End,
];
const BIND: &[Step] = &[
    Step::Str,
    Step::Str,
    Step::Count,
    Step::Each(Item::Int2),
    Step::Count,
    Step::FormatsMatchParams,
    Step::Each(Item::Value),
    Step::Count,
    Step::Each(Item::Int2),
    Step::End,
];
const TARGET: &[Step] = &[Step::Target, Step::Str, Step::End];
const EXECUTE: &[Step] = &[Step::Str, Step::Int4, Step::End];
const EMPTY: &[Step] = &[Step::End];
const OPAQUE: &[Step] = &[Step::Rest];
const STARTUP: &[Step] = &[Step::Pairs, Step::End];

/// The layout and longest length of each message type pgwire decodes from a client.
fn layout(kind: u8) -> Option<(&'static [Step], u64)> {
    Some(match kind {
        b'Q' => (QUERY, LARGE_LIMIT),
        b'P' => (PARSE, LARGE_LIMIT),
        b'B' => (BIND, LARGE_LIMIT),
        b'd' => (OPAQUE, LARGE_LIMIT),
        b'C' | b'D' => (TARGET, SMALL_LIMIT),
        b'E' => (EXECUTE, SMALL_LIMIT),
        b'H' | b'S' | b'X' | b'c' => (EMPTY, SMALL_LIMIT),
        b'f' => (QUERY, SMALL_LIMIT),
        // Password, SASL and GSS responses: read by length, and only during authentication.
        b'p' => (OPAQUE, SMALL_LIMIT),
        _ => return None,
    })
}

const SHORT: &str = "insufficient data left in message";
const LONG: &str = "invalid message format";

/// Tracks frame boundaries in the client's byte stream and checks each frame (see the
/// module notes).
#[derive(Debug, Default)]
pub(crate) struct FrameCheck {
    /// After the startup message every frame starts with a type byte.
    typed: bool,
    /// The header read so far: type byte and length, or (startup phase) length and code.
    header: [u8; 8],
    have: usize,
    /// The body of the current frame, once its header is read.
    body: Option<Body>,
}

impl FrameCheck {
    /// Feeds bytes read from the client, in order.
    pub(crate) fn observe(&mut self, data: &[u8]) -> Result<(), Violation> {
        let mut i = 0;
        while i < data.len() {
            if let Some(body) = &mut self.body {
                // Nothing was left (the body is dropped when whole), so n > 0.
                let n = body.left.min((data.len() - i) as u64) as usize;
                let whole = body
                    .feed(&data[i..i + n])
                    .map_err(|(at, message)| Violation {
                        at: i + at,
                        message,
                    })?;
                i += n;
                if whole {
                    self.body = None;
                }
                continue;
            }
            if self.typed && self.have == 0 && layout(data[i]).is_none() {
                return Err(Violation {
                    at: i,
                    message: format!("invalid frontend message type {}", data[i]),
                });
            }
            let need = if self.typed { 5 } else { 8 };
            let take = (need - self.have).min(data.len() - i);
            self.header[self.have..self.have + take].copy_from_slice(&data[i..i + take]);
            self.have += take;
            i += take;
            if self.have < need {
                break;
            }
            self.have = 0;
            let last = i - 1;
            let mut body = self
                .header_done()
                .map_err(|message| Violation { at: last, message })?;
            if body.left == 0 {
                body.finish()
                    .map_err(|message| Violation { at: last, message })?;
            } else {
                self.body = Some(body);
            }
        }
        Ok(())
    }

    /// Checks a whole header; the body it announces.
    fn header_done(&mut self) -> Result<Body, String> {
        let h = self.header;
        if self.typed {
            let kind = h[0];
            let len = i32::from_be_bytes([h[1], h[2], h[3], h[4]]);
            // The type byte was checked when it came.
            let (steps, limit) = layout(kind).ok_or_else(|| LONG.to_owned())?;
            if len < 4 || len as u64 > limit {
                return Err(format!("invalid message length {len}"));
            }
            return Ok(Body::new(steps, len as u64 - 4));
        }
        let len = i32::from_be_bytes([h[0], h[1], h[2], h[3]]);
        if len < 8 || len as u64 > SMALL_LIMIT {
            return Err(format!("invalid length of startup packet {len}"));
        }
        let code = i32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        let steps = if NEGOTIATION_CODES.contains(&code) {
            EMPTY
        } else if code == CANCEL_CODE {
            self.typed = true;
            OPAQUE
        } else if code >> 16 == 3 {
            self.typed = true;
            STARTUP
        } else {
            return Err(format!(
                "unsupported frontend protocol {}.{}: server supports 3.0 to 3.2",
                code >> 16,
                code & 0xffff
            ));
        };
        Ok(Body::new(steps, len as u64 - 8))
    }
}

/// A frame body being checked.
#[derive(Debug)]
struct Body {
    steps: &'static [Step],
    /// The step the next byte belongs to.
    step: usize,
    /// Body bytes still to come.
    left: u64,
    /// The integer being read, and how many of its bytes came.
    int: u32,
    int_got: u8,
    /// Bytes of the string being read, so far.
    str_len: u64,
    /// Pairs: the next string is a value (not a name).
    value_next: bool,
    /// Items left of the current `Each`.
    items: u32,
    /// The counts read so far, in order (Bind has three).
    counts: [u32; 3],
    ncounts: usize,
    /// A parameter value's bytes still to pass; `None` while its length is read.
    value_left: Option<u64>,
}

impl Body {
    fn new(steps: &'static [Step], left: u64) -> Body {
        Body {
            steps,
            step: 0,
            left,
            int: 0,
            int_got: 0,
            str_len: 0,
            value_next: false,
            items: 0,
            counts: [0; 3],
            ncounts: 0,
            value_left: None,
        }
    }

    /// Passes the next `data.len()` body bytes (no more than are left). True when the
    /// body is whole and well-formed; an error carries the index of the byte that
    /// showed it malformed.
    fn feed(&mut self, data: &[u8]) -> Result<bool, (usize, String)> {
        let mut i = 0;
        while i < data.len() {
            // Each step below takes at least one byte, and the steps that take none are
            // settled by the byte before them (so a violation shows at that byte).
            match self.steps[self.step] {
                Step::Str | Step::Pairs => match data[i..].iter().position(|&b| b == 0) {
                    Some(n) => {
                        self.str_len += n as u64;
                        i += n + 1;
                        self.string_done();
                    }
                    None => {
                        self.str_len += (data.len() - i) as u64;
                        i = data.len();
                    }
                },
                Step::Target => {
                    let b = data[i];
                    if b != b'S' && b != b'P' {
                        return Err((i, format!("invalid DESCRIBE/CLOSE message subtype {b}")));
                    }
                    i += 1;
                    self.step += 1;
                }
                Step::Int4 => {
                    if self.int_read(data, &mut i, 4).is_some() {
                        self.step += 1;
                    }
                }
                Step::Count => {
                    if let Some(n) = self.int_read(data, &mut i, 2) {
                        // Bind has three counts and Parse one (see `layout`).
                        self.counts[self.ncounts.min(2)] = n;
                        self.ncounts += 1;
                        self.items = n;
                        self.step += 1;
                    }
                }
                Step::Each(Item::Int2) => {
                    if self.int_read(data, &mut i, 2).is_some() {
                        self.items -= 1;
                    }
                }
                Step::Each(Item::Int4) => {
                    if self.int_read(data, &mut i, 4).is_some() {
                        self.items -= 1;
                    }
                }
                Step::Each(Item::Value) => match self.value_left {
                    None => {
                        if let Some(n) = self.int_read(data, &mut i, 4) {
                            match n as i32 {
                                -1 => self.items -= 1,
                                0 => self.items -= 1,
                                len if len > 0 => self.value_left = Some(len as u64),
                                len => {
                                    return Err((i - 1, format!("invalid parameter length {len}")))
                                }
                            }
                        }
                    }
                    Some(left) => {
                        let n = left.min((data.len() - i) as u64);
                        i += n as usize;
                        if n == left {
                            self.value_left = None;
                            self.items -= 1;
                        } else {
                            self.value_left = Some(left - n);
                        }
                    }
                },
                // Settled as soon as the count before it was read; here for completeness.
                Step::FormatsMatchParams => {
                    self.settle().map_err(|m| (i, m))?;
                    continue;
                }
                Step::Rest => i = data.len(),
                Step::End => return Err((i, LONG.to_owned())),
            }
            self.settle().map_err(|m| (i - 1, m))?;
        }
        self.left -= data.len() as u64;
        if self.left > 0 {
            return Ok(false);
        }
        self.finish()
            .map_err(|m| (data.len().saturating_sub(1), m))?;
        Ok(true)
    }

    /// Checks a body that has had all its bytes.
    fn finish(&mut self) -> Result<(), String> {
        self.settle()?;
        match self.steps[self.step] {
            Step::End | Step::Rest => Ok(()),
            Step::Pairs => {
                Err("invalid startup packet layout: expected terminator as last byte".into())
            }
            _ => Err(SHORT.into()),
        }
    }

    /// Moves past the steps that need no more bytes: an `Each` with no items left, the
    /// format check.
    fn settle(&mut self) -> Result<(), String> {
        loop {
            match self.steps[self.step] {
                Step::Each(_) if self.items == 0 => self.step += 1,
                Step::FormatsMatchParams => {
                    let (formats, params) = (self.counts[0], self.counts[1]);
                    if formats > 1 && formats != params {
                        return Err(format!(
                            "bind message has {formats} parameter formats but {params} parameters"
                        ));
                    }
                    self.step += 1;
                }
                _ => return Ok(()),
            }
        }
    }

    /// A string's terminator came.
    fn string_done(&mut self) {
        if self.steps[self.step] == Step::Pairs {
            if !self.value_next && self.str_len == 0 {
                self.step += 1;
            } else {
                self.value_next = !self.value_next;
            }
        } else {
            self.step += 1;
        }
        self.str_len = 0;
    }

    /// Reads a big-endian integer of `size` bytes from `data` at `*i`; its value once
    /// every byte has come.
    fn int_read(&mut self, data: &[u8], i: &mut usize, size: u8) -> Option<u32> {
        while *i < data.len() && self.int_got < size {
            self.int = (self.int << 8) | u32::from(data[*i]);
            self.int_got += 1;
            *i += 1;
        }
        if self.int_got < size {
            return None;
        }
        let v = self.int;
        self.int = 0;
        self.int_got = 0;
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup_packet() -> Vec<u8> {
        let body = b"\x00\x03\x00\x00user\x00eddy\x00\x00";
        let mut p = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        p.extend_from_slice(body);
        p
    }

    fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut f = vec![kind];
        f.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        f.extend_from_slice(body);
        f
    }

    /// A check past the startup packet.
    fn started() -> FrameCheck {
        let mut c = FrameCheck::default();
        c.observe(&startup_packet()).expect("a good startup packet");
        c
    }

    /// The violation `bytes` give after startup, fed whole and byte by byte: the same.
    fn violation(bytes: &[u8]) -> Option<Violation> {
        let whole = started().observe(bytes).err();
        let mut c = started();
        let mut one_by_one = None;
        for (i, b) in bytes.iter().enumerate() {
            if let Err(v) = c.observe(std::slice::from_ref(b)) {
                one_by_one = Some(Violation {
                    at: i + v.at,
                    message: v.message,
                });
                break;
            }
        }
        assert_eq!(whole, one_by_one, "chunking changed the verdict");
        whole
    }

    #[test]
    fn accepts_well_formed_streams_in_any_chunking() {
        let mut bytes = Vec::new();
        // SSLRequest, then startup, then Query("SELECT 1"), then Sync.
        bytes.extend_from_slice(&8i32.to_be_bytes());
        bytes.extend_from_slice(&80_877_103i32.to_be_bytes());
        bytes.extend_from_slice(&startup_packet());
        bytes.extend_from_slice(&frame(b'Q', b"SELECT 1\0"));
        bytes.extend_from_slice(&frame(
            b'P',
            b"s1\0SELECT $1, $2\0\0\x02\0\0\0\x17\0\0\0\x19",
        ));
        // Bind: one format code for both parameters, a NULL and "ab"; two result formats.
        bytes.extend_from_slice(&frame(
            b'B',
            b"\0s1\0\0\x01\0\x01\0\x02\xff\xff\xff\xff\0\0\0\x02ab\0\x02\0\0\0\x01",
        ));
        bytes.extend_from_slice(&frame(b'D', b"P\0"));
        bytes.extend_from_slice(&frame(b'E', b"\0\0\0\0\0"));
        bytes.extend_from_slice(&frame(b'C', b"Ss1\0"));
        bytes.extend_from_slice(&frame(b'd', b"1,2\n"));
        bytes.extend_from_slice(&frame(b'c', b""));
        bytes.extend_from_slice(&frame(b'f', b"oops\0"));
        bytes.extend_from_slice(&frame(b'H', b""));
        bytes.extend_from_slice(&[b'S', 0, 0, 0, 4]);
        bytes.extend_from_slice(&[b'X', 0, 0, 0, 4]);
        for chunk in 1..bytes.len() {
            let mut c = FrameCheck::default();
            for piece in bytes.chunks(chunk) {
                c.observe(piece).expect("well-formed");
            }
            assert!(
                c.typed && c.body.is_none() && c.have == 0,
                "chunk size {chunk}"
            );
        }
    }

    #[test]
    fn rejects_impossible_lengths() {
        let v = violation(&[b'Q', 0, 0, 0, 1]).expect("length below 4");
        assert_eq!(v.at, 4, "shown by the length's last byte");
        assert!(
            violation(&[b'Q', 0xff, 0xff, 0xff, 0xff]).is_some(),
            "negative"
        );
        assert!(
            violation(&[b'S', 0, 0, 0x27, 0x11]).is_some(),
            "over 10000 for Sync"
        );
        let v = FrameCheck::default()
            .observe(&[0, 0, 0, 2, 0, 3, 0, 0])
            .expect_err("startup shorter than its header");
        assert_eq!(v.at, 7);
        assert!(
            FrameCheck::default()
                .observe(b"GET / HTTP/1.1\r\n")
                .is_err(),
            "not postgres"
        );
    }

    #[test]
    fn rejects_unknown_message_types_at_their_first_byte() {
        let mut bytes = frame(b'Q', b"SELECT 1\0");
        bytes.extend_from_slice(&[b'!', 0, 0, 0, 4]);
        let v = violation(&bytes).expect("unknown type");
        assert_eq!(v.at, 14);
        assert_eq!(v.message, "invalid frontend message type 33");
    }

    #[test]
    fn rejects_a_parse_shorter_than_its_fields() {
        // The 7-byte Parse that made pgwire panic: no room for the oid count.
        let v = violation(&[b'P', 0, 0, 0, 6, 0, 0]).expect("short parse");
        assert_eq!(v.at, 6, "shown by the frame's last byte");
        assert_eq!(v.message, SHORT);
        // An oid count past the frame's end, and a query string not terminated in it.
        assert!(violation(&frame(b'P', b"\0SELECT 1\0\0\x02\0\0\0\x17")).is_some());
        assert!(violation(&frame(b'P', b"\0SELECT 1")).is_some());
        // An empty body (caught with the header) and a body with bytes left over.
        assert_eq!(violation(&frame(b'P', b"")).map(|v| v.at), Some(4));
        assert_eq!(
            violation(&frame(b'P', b"\0SELECT 1\0\0\0junk")).map(|v| v.message),
            Some(LONG.to_owned())
        );
    }

    #[test]
    fn rejects_a_bind_announcing_more_than_it_carries() {
        // Five parameter format codes announced, one there.
        let v = violation(&frame(b'B', b"\0\0\0\x05\0\x01")).expect("short bind");
        assert_eq!(v.message, SHORT);
        // A parameter value longer than the frame, and a negative length other than -1.
        assert!(violation(&frame(b'B', b"\0\0\0\0\0\x01\0\0\0\x09ab\0\0")).is_some());
        assert!(violation(&frame(b'B', b"\0\0\0\0\0\x01\xff\xff\xff\xfe\0\0")).is_some());
        // Two format codes for three parameters, as PostgreSQL words it.
        let v = violation(&frame(
            b'B',
            b"\0\0\0\x02\0\0\0\0\0\x03\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\0\0",
        ))
        .expect("format count mismatch");
        assert_eq!(
            v.message,
            "bind message has 2 parameter formats but 3 parameters"
        );
    }

    #[test]
    fn rejects_bodies_where_none_belong_and_bad_targets() {
        assert!(
            violation(&frame(b'S', b"\0\0\0\0")).is_some(),
            "Sync with a body"
        );
        assert!(
            violation(&frame(b'D', b"X\0")).is_some(),
            "Describe of neither S nor P"
        );
        assert!(
            violation(&frame(b'E', b"\0\0\0")).is_some(),
            "Execute cut short"
        );
    }

    #[test]
    fn checks_the_startup_packet_layout() {
        let bad = |body: &[u8]| {
            let mut p = ((body.len() + 4) as i32).to_be_bytes().to_vec();
            p.extend_from_slice(body);
            FrameCheck::default().observe(&p).err()
        };
        assert!(
            bad(b"\x00\x03\x00\x00user\x00eddy\x00").is_some(),
            "no terminator"
        );
        assert!(
            bad(b"\x00\x03\x00\x00user\x00").is_some(),
            "a name without value"
        );
        assert!(
            bad(b"\x00\x03\x00\x00user\x00eddy\x00\x00x").is_some(),
            "bytes after"
        );
        assert!(
            bad(b"\x00\x02\x00\x00user\x00eddy\x00\x00").is_some(),
            "protocol 2"
        );
        assert!(
            bad(b"\x00\x03\x00\x00\x00").is_none(),
            "no parameters at all"
        );
        // A CancelRequest is pgwire's to check; an SSLRequest must be 8 bytes.
        assert!(bad(b"\x04\xd2\x16\x2e\0\0\0\x01\0\0\0\x02").is_none());
        assert!(bad(b"\x04\xd2\x16\x2f\0").is_some());
    }

    /// xorshift64*: a fixed sequence, so a failure repeats.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn bytes(&mut self, max: u64) -> Vec<u8> {
            let n = self.below(max + 1);
            (0..n).map(|_| self.below(256) as u8).collect()
        }
        fn text(&mut self, max: u64) -> Vec<u8> {
            let n = self.below(max + 1);
            (0..n).map(|_| b'a' + self.below(26) as u8).collect()
        }
    }

    /// A well-formed message of a random type, with random contents.
    fn message(r: &mut Rng) -> Vec<u8> {
        let cstr = |r: &mut Rng| {
            let mut s = r.text(6);
            s.push(0);
            s
        };
        let kinds = b"QPBCDEHSXcfd";
        let kind = kinds[r.below(kinds.len() as u64) as usize];
        let mut body = Vec::new();
        match kind {
            b'Q' | b'f' => body.extend(cstr(r)),
            b'P' => {
                body.extend(cstr(r));
                body.extend(cstr(r));
                let n = r.below(4) as u16;
                body.extend_from_slice(&n.to_be_bytes());
                for _ in 0..n {
                    body.extend_from_slice(&(r.below(5000) as u32).to_be_bytes());
                }
            }
            b'B' => {
                body.extend(cstr(r));
                body.extend(cstr(r));
                let params = r.below(4) as u16;
                let formats = [0, 1, params][r.below(3) as usize];
                body.extend_from_slice(&formats.to_be_bytes());
                for _ in 0..formats {
                    body.extend_from_slice(&(r.below(2) as i16).to_be_bytes());
                }
                body.extend_from_slice(&params.to_be_bytes());
                for _ in 0..params {
                    if r.below(4) == 0 {
                        body.extend_from_slice(&(-1i32).to_be_bytes());
                    } else {
                        let v = r.bytes(8);
                        body.extend_from_slice(&(v.len() as i32).to_be_bytes());
                        body.extend(v);
                    }
                }
                let results = r.below(3) as u16;
                body.extend_from_slice(&results.to_be_bytes());
                for _ in 0..results {
                    body.extend_from_slice(&(r.below(2) as i16).to_be_bytes());
                }
            }
            b'C' | b'D' => {
                body.push([b'S', b'P'][r.below(2) as usize]);
                body.extend(cstr(r));
            }
            b'E' => {
                body.extend(cstr(r));
                body.extend_from_slice(&(r.below(100) as i32).to_be_bytes());
            }
            b'd' => body.extend(r.bytes(12)),
            _ => {}
        }
        frame(kind, &body)
    }

    /// Damages a message the way a broken or hostile client might.
    fn damage(r: &mut Rng, mut m: Vec<u8>) -> Vec<u8> {
        match r.below(5) {
            // Cut the body short, keeping the length it announced: truncating the
            // stream here would only leave the frame unfinished.
            0 if m.len() > 5 => {
                let keep = 5 + r.below(m.len() as u64 - 5) as usize;
                m.truncate(keep);
                let len = (keep - 1) as i32;
                m[1..5].copy_from_slice(&len.to_be_bytes());
            }
            // A length off by a little.
            1 => {
                let len = i32::from_be_bytes([m[1], m[2], m[3], m[4]]);
                let len = len + r.below(7) as i32 - 3;
                m[1..5].copy_from_slice(&len.to_be_bytes());
            }
            // A random byte of the body changed (a count, a length, a terminator).
            2 if m.len() > 5 => {
                let at = 5 + r.below(m.len() as u64 - 5) as usize;
                m[at] = r.below(256) as u8;
            }
            // Bytes appended to the body, counted in its length.
            3 => {
                m.extend(r.bytes(4));
                let len = (m.len() - 1) as i32;
                m[1..5].copy_from_slice(&len.to_be_bytes());
            }
            _ => {}
        }
        m
    }

    /// Whatever the client sends, pgwire only gets frames it decodes in one piece: no
    /// panic, no error, each message taking exactly its frame's bytes.
    #[test]
    fn pgwire_decodes_every_frame_the_check_passes() {
        use bytes::BytesMut;
        use pgwire::messages::{DecodeContext, PgWireFrontendMessage, ProtocolVersion};

        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        let mut malformed = 0;
        for case in 0..4000 {
            let mut stream = Vec::new();
            for _ in 0..1 + r.below(6) {
                let m = message(&mut r);
                stream.extend(if r.below(3) == 0 {
                    damage(&mut r, m)
                } else {
                    m
                });
            }
            // What the guard hands pgwire: everything, or what came before the violation.
            let mut check = started();
            let mut passed = Vec::new();
            let mut rest = &stream[..];
            while !rest.is_empty() {
                let n = (1 + r.below(16) as usize).min(rest.len());
                match check.observe(&rest[..n]) {
                    Ok(()) => passed.extend_from_slice(&rest[..n]),
                    Err(v) => {
                        passed.extend_from_slice(&rest[..v.at]);
                        malformed += 1;
                        break;
                    }
                }
                rest = &rest[n..];
            }
            let mut ctx = DecodeContext::new(ProtocolVersion::PROTOCOL3_0);
            ctx.awaiting_frontend_ssl = false;
            ctx.awaiting_frontend_startup = false;
            let mut buf = BytesMut::from(&passed[..]);
            while buf.len() >= 5 {
                let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
                let before = buf.len();
                let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    PgWireFrontendMessage::decode(&mut buf, &ctx)
                }));
                match decoded {
                    Err(_) => panic!("case {case}: pgwire panicked on {passed:?}"),
                    Ok(Err(e)) => panic!("case {case}: pgwire refused a passed frame: {e}"),
                    Ok(Ok(None)) => break,
                    Ok(Ok(Some(_))) => {
                        assert_eq!(before - buf.len(), 1 + len, "case {case}: {passed:?}")
                    }
                }
            }
        }
        // The damage is not all harmless: the check had work to do.
        assert!(malformed > 500, "only {malformed} malformed streams");
    }
}
