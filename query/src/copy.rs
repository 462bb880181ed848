//! COPY: text and CSV, from STDIN (publish) and to STDOUT (export).
//!
//! COPY FROM data arrives in arbitrary chunks. [`CopyInSink::push`] cuts complete lines
//! (CSV: complete records, which may span lines inside quotes), parses them into typed
//! rows and holds at most `copy_batch_rows` of them before the wire layer writes them
//! with [`Core::copy_write`], so a large COPY never sits in memory whole. Rows written
//! before a later bad line stay written (like a producer's earlier acknowledged batches);
//! COPY answers only after everything it reports is durable.

use std::borrow::Cow;
use std::sync::Arc;

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::SchemaRef;
use arrow::util::display::FormatOptions;
use datafusion::sql::sqlparser::ast::{CopyLegacyOption, CopyOption};
use eddy_storage::{ColumnType, ObjectDef, Value};

use crate::error::{Error, Result};
use crate::text_encode::Column;
use crate::types::parse_text;

/// Text or CSV.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFormat {
    /// PostgreSQL's text format: tab-separated, `\N` for NULL, backslash escapes.
    Text,
    /// CSV: comma-separated, quoted fields, empty unquoted field for NULL.
    Csv,
}

/// How COPY data is laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOptions {
    /// Text or CSV.
    pub format: CopyFormat,
    /// Field separator.
    pub delimiter: char,
    /// The spelling of NULL.
    pub null: String,
    /// CSV: the first line is a header.
    pub header: bool,
    /// CSV quote character.
    pub quote: char,
    /// CSV escape character (inside quotes).
    pub escape: char,
}

impl CopyOptions {
    fn new(format: CopyFormat) -> Self {
        match format {
            CopyFormat::Text => Self {
                format,
                delimiter: '\t',
                null: "\\N".into(),
                header: false,
                quote: '"',
                escape: '"',
            },
            CopyFormat::Csv => Self {
                format,
                delimiter: ',',
                null: String::new(),
                header: false,
                quote: '"',
                escape: '"',
            },
        }
    }

    pub(crate) fn from_ast(options: &[CopyOption], legacy: &[CopyLegacyOption]) -> Result<Self> {
        let mut format = CopyFormat::Text;
        for o in options {
            if let CopyOption::Format(f) = o {
                format = match f.value.to_ascii_lowercase().as_str() {
                    "text" => CopyFormat::Text,
                    "csv" => CopyFormat::Csv,
                    "binary" => return Err(Error::NotSupported("COPY binary format".into())),
                    other => {
                        return Err(Error::InvalidParameter(format!(
                            "COPY format \"{other}\" not recognized"
                        )))
                    }
                };
            }
        }
        for o in legacy {
            match o {
                CopyLegacyOption::Csv(_) => format = CopyFormat::Csv,
                CopyLegacyOption::Binary => {
                    return Err(Error::NotSupported("COPY binary format".into()))
                }
                _ => {}
            }
        }
        let mut out = Self::new(format);
        for o in options {
            match o {
                CopyOption::Format(_) => {}
                CopyOption::Delimiter(c) => out.delimiter = *c,
                CopyOption::Null(s) => out.null = s.clone(),
                CopyOption::Header(h) => out.header = *h,
                CopyOption::Quote(c) => out.quote = *c,
                CopyOption::Escape(c) => out.escape = *c,
                CopyOption::Encoding(e)
                    if e.eq_ignore_ascii_case("utf8") || e.eq_ignore_ascii_case("utf-8") => {}
                other => return Err(Error::NotSupported(format!("COPY option {other}"))),
            }
        }
        for o in legacy {
            match o {
                CopyLegacyOption::Csv(csv) => {
                    for c in csv {
                        use datafusion::sql::sqlparser::ast::CopyLegacyCsvOption as L;
                        match c {
                            L::Header => out.header = true,
                            L::Quote(q) => out.quote = *q,
                            L::Escape(e) => out.escape = *e,
                            other => {
                                return Err(Error::NotSupported(format!("COPY option {other}")))
                            }
                        }
                    }
                }
                CopyLegacyOption::Delimiter(c) => out.delimiter = *c,
                CopyLegacyOption::Null(s) => out.null = s.clone(),
                CopyLegacyOption::Header => out.header = true,
                other => return Err(Error::NotSupported(format!("COPY option {other}"))),
            }
        }
        if out.header && out.format == CopyFormat::Text {
            return Err(Error::NotSupported(
                "COPY HEADER in text format (use FORMAT csv)".into(),
            ));
        }
        Ok(out)
    }

    /// The header line of a CSV export (with trailing newline).
    pub fn encode_header(&self, schema: &SchemaRef) -> Vec<u8> {
        let names: Vec<String> = schema
            .fields()
            .iter()
            .map(|f| self.csv_field(f.name()))
            .collect();
        let mut line = names.join(&self.delimiter.to_string()).into_bytes();
        line.push(b'\n');
        line
    }

    fn csv_field(&self, s: &str) -> String {
        let needs = s.is_empty()
            || s.contains(self.delimiter)
            || s.contains(self.quote)
            || s.contains('\n')
            || s.contains('\r')
            || s == self.null;
        if !needs {
            return s.to_owned();
        }
        let q = self.quote.to_string();
        let escaped = s.replace(&q, &format!("{}{}", self.escape, self.quote));
        format!("{q}{escaped}{q}")
    }

    fn text_field(&self, s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        for ch in s.chars() {
            match ch {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if c == self.delimiter => {
                    out.push('\\');
                    out.push(c);
                }
                c => out.push(c),
            }
        }
        out
    }

    /// Appends `s` as one field, escaped (text) or quoted when needed (CSV).
    fn push_field(&self, out: &mut Vec<u8>, s: &str) {
        match self.format {
            CopyFormat::Text => {
                // Vectorized scans for the bytes text format escapes.
                let b = s.as_bytes();
                let plain = self.delimiter.is_ascii()
                    && memchr::memchr3(b'\\', b'\n', b'\r', b).is_none()
                    && memchr::memchr2(b'\t', self.delimiter as u8, b).is_none();
                if plain {
                    out.extend_from_slice(b);
                } else {
                    out.extend_from_slice(self.text_field(s).as_bytes());
                }
            }
            CopyFormat::Csv => out.extend_from_slice(self.csv_field(s).as_bytes()),
        }
    }

    /// Encodes each row of a batch as one line (with trailing newline). Each column is
    /// read through its concrete array type once; integers, text and timestamps are
    /// written straight into the line (this is the per-row cost of every COPY and
    /// subscription stream), the rest through Arrow's display formatter. Rows appended
    /// together share their `_ts`, so a timestamp is formatted once per run of equal ones.
    /// The lines are slices of one buffer: one allocation per batch, not per row.
    pub fn encode_batch(&self, batch: &RecordBatch) -> Result<Vec<bytes::Bytes>> {
        let fmt = FormatOptions::new()
            .with_timestamp_format(Some("%Y-%m-%d %H:%M:%S%.f"))
            .with_timestamp_tz_format(Some("%Y-%m-%d %H:%M:%S%.f%:z"));
        let mut columns: Vec<Column<'_>> = batch
            .columns()
            .iter()
            .map(|a| Column::new(a.as_ref(), &fmt))
            .collect::<Result<_>>()?;
        let nulls: Vec<Option<&arrow::buffer::NullBuffer>> =
            batch.columns().iter().map(|a| a.nulls()).collect();
        // Digits, signs and timestamps never need escaping in text format unless the
        // delimiter is one of their characters.
        let plain_numbers =
            self.format == CopyFormat::Text && !"0123456789-+:. ".contains(self.delimiter);
        let mut buf = Vec::with_capacity(batch.num_rows() * 64);
        let mut ends = Vec::with_capacity(batch.num_rows());
        let mut scratch = Vec::new();
        let mut delim = [0u8; 4];
        let delim = self.delimiter.encode_utf8(&mut delim).as_bytes();
        for r in 0..batch.num_rows() {
            for (c, col) in columns.iter_mut().enumerate() {
                if c > 0 {
                    buf.extend_from_slice(delim);
                }
                if nulls[c].is_some_and(|n| n.is_null(r)) {
                    buf.extend_from_slice(self.null.as_bytes());
                    continue;
                }
                if let Column::Utf8(a) = col {
                    self.push_field(&mut buf, a.value(r));
                } else if plain_numbers && col.is_numeric() {
                    col.write(r, &mut buf);
                } else {
                    scratch.clear();
                    col.write(r, &mut scratch);
                    self.push_field(&mut buf, &String::from_utf8_lossy(&scratch));
                }
            }
            buf.push(b'\n');
            ends.push(buf.len());
        }
        let all = bytes::Bytes::from(buf);
        let mut start = 0;
        Ok(ends
            .into_iter()
            .map(|end| {
                let line = all.slice(start..end);
                start = end;
                line
            })
            .collect())
    }
}

/// An in-progress COPY FROM STDIN.
#[derive(Debug)]
pub struct CopyInSink {
    target: Arc<ObjectDef>,
    options: CopyOptions,
    /// Writable columns of the target (topics: `_key` first).
    all: Vec<(String, ColumnType)>,
    /// Which of `all` each input field fills.
    targets: Vec<usize>,
    /// Bytes of an incomplete line.
    partial: Vec<u8>,
    /// Parsed rows not yet written.
    rows: Vec<Vec<Value>>,
    line: u64,
    header_pending: bool,
    /// Saw the `\.` end marker.
    ended: bool,
}

impl CopyInSink {
    /// A sink for COPY FROM into `target`: input fields fill `targets` (indices into
    /// `all`, the target's writable columns), in `options`' format.
    pub(crate) fn new(
        target: Arc<ObjectDef>,
        options: CopyOptions,
        all: Vec<(String, ColumnType)>,
        targets: Vec<usize>,
    ) -> Self {
        CopyInSink {
            target,
            header_pending: options.header,
            options,
            all,
            targets,
            partial: Vec::new(),
            rows: Vec::new(),
            line: 0,
            ended: false,
        }
    }

    /// The topic or table written.
    pub(crate) fn target(&self) -> &ObjectDef {
        &self.target
    }

    /// Number of fields each line has.
    pub fn columns(&self) -> usize {
        self.targets.len()
    }

    /// Rows parsed and waiting to be written.
    pub fn pending(&self) -> usize {
        self.rows.len()
    }

    /// Takes the parsed rows for writing.
    pub fn take_rows(&mut self) -> Vec<Vec<Value>> {
        std::mem::take(&mut self.rows)
    }

    /// Parses a chunk of COPY data.
    pub fn push(&mut self, data: &[u8]) -> Result<()> {
        if self.options.format == CopyFormat::Csv {
            return self.push_csv(data);
        }
        // Text format: every newline ends a line (newlines in values are escaped).
        let mut rest = data;
        if !self.partial.is_empty() {
            let Some(i) = memchr::memchr(b'\n', rest) else {
                self.partial.extend_from_slice(rest);
                return Ok(());
            };
            let mut line = std::mem::take(&mut self.partial);
            line.extend_from_slice(&rest[..i]);
            let done = self.line(strip_cr(&line));
            line.clear();
            self.partial = line;
            done?;
            rest = &rest[i + 1..];
        }
        while let Some(i) = memchr::memchr(b'\n', rest) {
            self.line(strip_cr(&rest[..i]))?;
            rest = &rest[i + 1..];
        }
        self.partial.extend_from_slice(rest);
        Ok(())
    }

    /// [`CopyInSink::push`] for CSV, where a quoted value may hold newlines.
    fn push_csv(&mut self, data: &[u8]) -> Result<()> {
        self.partial.extend_from_slice(data);
        let mut start = 0;
        let mut in_quotes = false;
        let buf = std::mem::take(&mut self.partial);
        let quote = self.options.quote as u8;
        for (i, &b) in buf.iter().enumerate() {
            if b == quote {
                in_quotes = !in_quotes;
            }
            if b == b'\n' && !in_quotes {
                self.line(strip_cr(&buf[start..i]))?;
                start = i + 1;
            }
        }
        self.partial = buf[start..].to_vec();
        Ok(())
    }

    /// Ends the input (a last line without newline counts).
    pub fn finish_input(&mut self) -> Result<()> {
        let rest = std::mem::take(&mut self.partial);
        if !rest.is_empty() {
            self.line(&rest)?;
        }
        Ok(())
    }

    fn line(&mut self, line: &[u8]) -> Result<()> {
        self.line += 1;
        if self.ended {
            return Ok(());
        }
        if line == b"\\." {
            self.ended = true;
            return Ok(());
        }
        if self.header_pending {
            self.header_pending = false;
            return Ok(());
        }
        let text = std::str::from_utf8(line)
            .map_err(|_| Error::BadCopyData(format!("line {}: invalid UTF-8", self.line)))?;
        let fields = match self.options.format {
            CopyFormat::Text => split_text(text, self.options.delimiter, &self.options.null),
            CopyFormat::Csv => split_csv(text, &self.options)
                .map(|f| f.into_iter().map(|v| v.map(Cow::Owned)).collect()),
        }
        .map_err(|e| Error::BadCopyData(format!("line {}: {e}", self.line)))?;
        if fields.len() != self.targets.len() {
            return Err(Error::BadCopyData(format!(
                "line {}: expected {} columns, found {}",
                self.line,
                self.targets.len(),
                fields.len()
            )));
        }
        let mut row = vec![Value::Null; self.all.len()];
        for (f, &t) in fields.into_iter().zip(&self.targets) {
            if let Some(text) = f {
                row[t] = parse_text(self.all[t].1, &text).map_err(|e| Error::CopyValue {
                    line: self.line,
                    source: Box::new(e),
                })?;
            }
        }
        self.rows.push(row);
        Ok(())
    }
}

/// A line without its trailing carriage return.
fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Splits a text-format line into fields (`None` = NULL) and undoes backslash escapes.
/// Fields without a backslash are borrowed from the line.
fn split_text<'a>(
    line: &'a str,
    delim: char,
    null: &str,
) -> std::result::Result<Vec<Option<Cow<'a, str>>>, String> {
    let mut fields = Vec::new();
    let mut rest = line;
    loop {
        // The field ends at the first delimiter, unless a backslash comes first.
        let plain_end = rest.find(['\\', delim]);
        let (raw, value, more) = match plain_end {
            Some(i) if rest[i..].starts_with(delim) => {
                (&rest[..i], Cow::Borrowed(&rest[..i]), true)
            }
            None => (rest, Cow::Borrowed(rest), false),
            Some(_) => {
                let (value, raw_len, more) = unescape_field(rest, delim)?;
                (&rest[..raw_len], Cow::Owned(value), more)
            }
        };
        fields.push((raw != null).then_some(value));
        if !more {
            return Ok(fields);
        }
        rest = &rest[raw.len() + delim.len_utf8()..];
    }
}

/// Decodes one field that holds backslash escapes: its value, its length in the line, and
/// whether a delimiter follows it.
fn unescape_field(field: &str, delim: char) -> std::result::Result<(String, usize, bool), String> {
    let mut cur = String::with_capacity(field.len());
    let mut chars = field.char_indices().peekable();
    let digit = |chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>, radix: u32| {
        let d = chars.peek().and_then(|(_, c)| c.to_digit(radix))?;
        chars.next();
        Some(d)
    };
    while let Some((at, c)) = chars.next() {
        if c == delim {
            return Ok((cur, at, true));
        }
        if c != '\\' {
            cur.push(c);
            continue;
        }
        let Some((_, n)) = chars.next() else {
            return Err("line ends with a backslash".into());
        };
        match n {
            'b' => cur.push('\u{8}'),
            'f' => cur.push('\u{c}'),
            'n' => cur.push('\n'),
            'r' => cur.push('\r'),
            't' => cur.push('\t'),
            'v' => cur.push('\u{b}'),
            'x' => {
                let mut v = 0u32;
                for _ in 0..2 {
                    match digit(&mut chars, 16) {
                        Some(d) => v = v * 16 + d,
                        None => break,
                    }
                }
                cur.push(char::from_u32(v).ok_or("bad \\x escape")?);
            }
            '0'..='7' => {
                let mut v = n.to_digit(8).unwrap_or(0);
                for _ in 0..2 {
                    match digit(&mut chars, 8) {
                        Some(d) => v = v * 8 + d,
                        None => break,
                    }
                }
                cur.push(char::from_u32(v).ok_or("bad octal escape")?);
            }
            other => cur.push(other),
        }
    }
    Ok((cur, field.len(), false))
}

/// Splits a CSV record into fields (`None` = NULL: an unquoted field equal to the NULL string).
fn split_csv(line: &str, o: &CopyOptions) -> std::result::Result<Vec<Option<String>>, String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut in_quotes = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if in_quotes {
            if c == o.escape && chars.peek() == Some(&o.quote) {
                if o.escape == o.quote {
                    // "" inside quotes is a literal quote; a lone " closes.
                    chars.next();
                    cur.push(o.quote);
                } else {
                    chars.next();
                    cur.push(o.quote);
                }
            } else if c == o.quote {
                in_quotes = false;
            } else {
                cur.push(c);
            }
        } else if c == o.quote {
            in_quotes = true;
            quoted = true;
        } else if c == o.delimiter {
            fields.push(if !quoted && cur == o.null {
                None
            } else {
                Some(std::mem::take(&mut cur))
            });
            cur.clear();
            quoted = false;
        } else {
            cur.push(c);
        }
    }
    if in_quotes {
        return Err("unterminated CSV quoted field".into());
    }
    fields.push(if !quoted && cur == o.null {
        None
    } else {
        Some(cur)
    });
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_fields() {
        let f = split_text("a\\tb\t\\N\t\\\\x\t", '\t', "\\N").unwrap();
        assert_eq!(
            f,
            vec![
                Some("a\tb".into()),
                None,
                Some("\\x".into()),
                Some("".into())
            ]
        );
        assert_eq!(
            split_text("\\101", '\t', "\\N").unwrap(),
            vec![Some("A".into())]
        );
        assert!(split_text("oops\\", '\t', "\\N").is_err());
        let f = split_text("a\t\t\\N\tb\\\tc\t\\\\N", '\t', "\\N").unwrap();
        assert_eq!(
            f,
            vec![
                Some("a".into()),
                Some("".into()),
                None,
                Some("b\tc".into()),
                Some("\\N".into())
            ],
            "an escaped delimiter is data; an escaped backslash before N is not NULL"
        );
        assert!(
            matches!(f[0], Some(Cow::Borrowed(_))),
            "plain fields are borrowed"
        );
    }

    #[test]
    fn csv_fields() {
        let o = CopyOptions::new(CopyFormat::Csv);
        let f = split_csv("1,\"a,b\",,\"\",\"say \"\"hi\"\"\"", &o).unwrap();
        assert_eq!(
            f,
            vec![
                Some("1".into()),
                Some("a,b".into()),
                None,
                Some(String::new()),
                Some("say \"hi\"".into())
            ]
        );
        assert!(split_csv("\"open", &o).is_err());
        assert_eq!(o.csv_field("a,b"), "\"a,b\"");
        assert_eq!(o.csv_field("plain"), "plain");
    }
}
