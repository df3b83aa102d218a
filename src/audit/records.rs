//! Reading an input record by record, each with its place in the file: JSON lines, or CSV rows
//! (quoted fields may span lines) turned into JSON objects keyed by the header row. A resumed
//! read starts at a checkpoint's decompressed offset and line.

use std::io::BufRead;
use std::path::Path;

use serde_json::{Map, Value};

use super::reader::{parse_json_line, Fields};

/// How an input's records are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated values with a header row.
    Csv,
}

impl Format {
    /// The format a file name implies: `.csv`, `.csv.gz` or `.csv.zst` is CSV, anything else
    /// JSON lines.
    pub fn of(path: &Path) -> Self {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        let name = [".gz", ".zst", ".zstd"]
            .iter()
            .find_map(|ext| name.strip_suffix(ext))
            .unwrap_or(&name);
        if name.ends_with(".csv") {
            Self::Csv
        } else {
            Self::Jsonl
        }
    }
}

/// What a record holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// An empty line (counted, not scored).
    Blank,
    /// A record to read turns from.
    Value(Value),
    /// Why the record cannot be read.
    Unreadable(String),
}

/// One record and where it lies.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The line it starts on (1-based).
    pub line: u64,
    /// Newlines consumed through its end: the line count a resumed read starts from (one
    /// less than `line` when the record ends without a newline).
    pub lines_through: u64,
    /// Decompressed bytes consumed through its end.
    pub offset: u64,
    /// What it holds.
    pub item: Item,
}

/// A record reader over one input.
pub enum Records {
    /// JSON lines.
    Jsonl {
        /// The input.
        reader: Box<dyn BufRead>,
        /// Lines consumed.
        line: u64,
        /// Bytes consumed.
        offset: u64,
    },
    /// CSV rows.
    Csv {
        /// The CSV reader, started `base` into the input.
        reader: Box<csv::Reader<Tail>>,
        /// Column names.
        header: Vec<String>,
        /// (lines, bytes) consumed before the reader started.
        base: (u64, u64),
    },
}

impl Records {
    /// Reads JSON lines from `reader`, which starts after `line` lines and `offset` bytes.
    pub fn jsonl(reader: Box<dyn BufRead>, line: u64, offset: u64) -> Self {
        Self::Jsonl {
            reader,
            line,
            offset,
        }
    }

    /// Reads CSV rows after `line` lines and `offset` bytes (both 0 for a fresh start, where
    /// the header row comes first); `open(offset)` opens the input that many decompressed bytes
    /// in. The header must name the columns `fields` asks for.
    pub fn csv(
        open: impl Fn(u64) -> std::io::Result<Box<dyn BufRead>>,
        line: u64,
        offset: u64,
        fields: &Fields,
    ) -> std::io::Result<Self> {
        let invalid = |msg: String| std::io::Error::new(std::io::ErrorKind::InvalidData, msg);
        let mut head = csv_reader(open(0)?);
        let mut row = csv::ByteRecord::new();
        if !head.read_byte_record(&mut row).map_err(csv_io)? {
            return Err(invalid(
                "the CSV input is empty: expected a header row".into(),
            ));
        }
        let header = row
            .iter()
            .map(|c| String::from_utf8_lossy(c).trim().to_string())
            .collect::<Vec<_>>();
        if fields.text.is_none() {
            return Err(invalid(
                "CSV rows need --text-field COLUMN (and --response-field COLUMN for answers)"
                    .into(),
            ));
        }
        for wanted in [&fields.text, &fields.response].into_iter().flatten() {
            if !header.contains(wanted) {
                return Err(invalid(format!(
                    "the CSV header has no column {wanted:?} (it has {})",
                    header.join(", ")
                )));
            }
        }
        let (reader, base) = if offset == 0 {
            let end = head.position().byte();
            head.get_mut().account(end);
            (head, (0, 0))
        } else {
            (csv_reader(open(offset)?), (line, offset))
        };
        Ok(Self::Csv {
            reader: Box::new(reader),
            header,
            base,
        })
    }

    /// Where reading continues: (newlines, bytes) consumed so far.
    pub fn position(&self) -> (u64, u64) {
        match self {
            Self::Jsonl { line, offset, .. } => (*line, *offset),
            Self::Csv { reader, base, .. } => {
                let tail = reader.get_ref();
                (base.0 + tail.lines, base.1 + tail.start)
            }
        }
    }

    /// The next record, `None` at the end.
    pub fn next_record(&mut self) -> std::io::Result<Option<Record>> {
        match self {
            Self::Jsonl {
                reader,
                line,
                offset,
            } => {
                let mut buf = Vec::new();
                let n = reader.read_until(b'\n', &mut buf)?;
                if n == 0 {
                    return Ok(None);
                }
                let starts = *line + 1;
                *line += u64::from(buf.ends_with(b"\n"));
                *offset += n as u64;
                Ok(Some(Record {
                    line: starts,
                    lines_through: *line,
                    offset: *offset,
                    item: json_item(&buf),
                }))
            }
            Self::Csv {
                reader,
                header,
                base,
            } => {
                let mut row = csv::ByteRecord::new();
                if !reader.read_byte_record(&mut row).map_err(csv_io)? {
                    return Ok(None);
                }
                let item = csv_item(header, &row);
                let end = reader.position().byte();
                let (before, through) = reader.get_mut().account(end);
                Ok(Some(Record {
                    line: base.0 + before + 1,
                    lines_through: base.0 + through,
                    offset: base.1 + end,
                    item,
                }))
            }
        }
    }
}

fn csv_reader(input: Box<dyn BufRead>) -> csv::Reader<Tail> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(Tail::new(input))
}

/// The CSV reader's input, keeping the bytes it handed over that no row has accounted for yet,
/// so that each row's lines are counted exactly (a row may end with `\r` alone, or lack its
/// final newline).
pub struct Tail {
    inner: Box<dyn BufRead>,
    /// Handed over, not yet accounted for; starts at `start`.
    pending: Vec<u8>,
    /// Offset (from where this reader began) of `pending[0]`.
    start: u64,
    /// Newlines in the bytes accounted for.
    lines: u64,
}

impl Tail {
    fn new(inner: Box<dyn BufRead>) -> Self {
        Self {
            inner,
            pending: Vec::new(),
            start: 0,
            lines: 0,
        }
    }

    /// Accounts for the bytes up to `end` (a row's end): the newlines before its first byte
    /// that is not a line end (where the row starts), and through `end`.
    fn account(&mut self, end: u64) -> (u64, u64) {
        let take = usize::try_from(end.saturating_sub(self.start))
            .unwrap_or(usize::MAX)
            .min(self.pending.len());
        let bytes = &self.pending[..take];
        let newlines = |b: &[u8]| b.iter().filter(|&&c| c == b'\n').count() as u64;
        let lead = bytes
            .iter()
            .position(|c| !matches!(c, b'\n' | b'\r'))
            .unwrap_or(take);
        let before = self.lines + newlines(&bytes[..lead]);
        self.lines += newlines(bytes);
        self.pending.drain(..take);
        self.start += take as u64;
        (before, self.lines)
    }
}

impl std::io::Read for Tail {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pending.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

fn csv_io(e: csv::Error) -> std::io::Error {
    match e.into_kind() {
        csv::ErrorKind::Io(e) => e,
        other => std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{other:?}")),
    }
}

/// A JSON line's item: blank, a value, or why not (a last line without its newline is called
/// truncated).
fn json_item(raw: &[u8]) -> Item {
    let complete = raw.ends_with(b"\n");
    let text = raw.strip_suffix(b"\n").unwrap_or(raw);
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    if text.iter().all(u8::is_ascii_whitespace) {
        return Item::Blank;
    }
    match parse_json_line(text) {
        Ok(value) => Item::Value(value),
        Err(reason) if !complete => Item::Unreadable(format!(
            "truncated last line (no newline at the end): {reason}"
        )),
        Err(reason) => Item::Unreadable(reason),
    }
}

/// A CSV row as an object keyed by the header (the row's length is checked here rather than by
/// the CSV reader, which on a resumed read has not seen the header).
fn csv_item(header: &[String], row: &csv::ByteRecord) -> Item {
    if row.len() != header.len() {
        return Item::Unreadable(format!(
            "the row has {} fields where the header has {}",
            row.len(),
            header.len()
        ));
    }
    let mut map = Map::new();
    for (name, cell) in header.iter().zip(row.iter()) {
        match std::str::from_utf8(cell) {
            Ok(text) => map.insert(name.clone(), Value::String(text.to_string())),
            Err(e) => {
                return Item::Unreadable(format!(
                    "invalid UTF-8 in column {name:?} at byte {}",
                    e.valid_up_to()
                ))
            }
        };
    }
    Item::Value(Value::Object(map))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn all(records: &mut Records) -> Vec<Record> {
        std::iter::from_fn(|| records.next_record().expect("reads")).collect()
    }

    fn file(path: &Path) -> impl Fn(u64) -> std::io::Result<Box<dyn BufRead>> + '_ {
        move |offset| Ok(crate::audit::source::open(path, offset)?.0)
    }

    fn fields() -> Fields {
        Fields {
            text: Some("prompt".into()),
            response: Some("answer".into()),
        }
    }

    #[test]
    fn formats_follow_the_file_name() {
        assert_eq!(Format::of(Path::new("a/b.CSV")), Format::Csv);
        assert_eq!(Format::of(Path::new("b.csv.gz")), Format::Csv);
        assert_eq!(Format::of(Path::new("b.csv.zst")), Format::Csv);
        assert_eq!(Format::of(Path::new("b.jsonl.gz")), Format::Jsonl);
        assert_eq!(Format::of(Path::new("b")), Format::Jsonl);
    }

    #[test]
    fn csv_rows_become_objects_with_their_lines_and_resume_anywhere() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log.csv");
        let text = b"id,prompt,answer\n1,hello,hi\n2,\"two\nlines, \"\"quoted\"\"\",ok\n\n3,bad\xff,x\n4,short\n5,last,one";
        std::fs::write(&path, text).expect("written");
        let mut records = Records::csv(file(&path), 0, 0, &fields()).expect("opens");
        assert_eq!(records.position(), (1, 17));
        let got = all(&mut records);
        let lines: Vec<(u64, u64)> = got.iter().map(|r| (r.line, r.lines_through)).collect();
        assert_eq!(lines, [(2, 2), (3, 4), (6, 6), (7, 7), (8, 7)]);
        assert_eq!(
            got[1].item,
            Item::Value(json!({"id": "2", "prompt": "two\nlines, \"quoted\"", "answer": "ok"}))
        );
        assert!(
            matches!(&got[2].item, Item::Unreadable(r) if r.contains("invalid UTF-8 in column \"prompt\"")),
            "{:?}",
            got[2].item
        );
        assert!(
            matches!(&got[3].item, Item::Unreadable(r) if r.contains("2 fields where the header has 3")),
            "{:?}",
            got[3].item
        );
        assert_eq!(got[4].offset, text.len() as u64);
        // Resuming after the quoted row gives the same records from there on.
        let (line, offset) = (got[1].lines_through, got[1].offset);
        let mut resumed = Records::csv(file(&path), line, offset, &fields()).expect("opens");
        assert_eq!(all(&mut resumed), got[2..]);
    }

    #[test]
    fn csv_headers_must_name_the_fields() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log.csv");
        std::fs::write(&path, "id,text\n1,x\n").expect("written");
        let err = Records::csv(file(&path), 0, 0, &fields())
            .err()
            .expect("refused");
        assert!(err.to_string().contains("no column \"prompt\""), "{err}");
        let err = Records::csv(file(&path), 0, 0, &Fields::default())
            .err()
            .expect("refused");
        assert!(err.to_string().contains("--text-field"), "{err}");
        std::fs::write(&path, "").expect("written");
        assert!(Records::csv(file(&path), 0, 0, &fields()).is_err());
    }

    #[test]
    fn json_lines_are_counted_and_a_cut_last_line_is_called_truncated() {
        let input = b"{\"a\": 1}\n\n{\"b\"".to_vec();
        let mut records = Records::jsonl(Box::new(std::io::Cursor::new(input)), 0, 0);
        let got = all(&mut records);
        assert_eq!(got[0].item, Item::Value(json!({"a": 1})));
        assert_eq!(got[1].item, Item::Blank);
        assert!(matches!(&got[2].item, Item::Unreadable(r) if r.starts_with("truncated")));
        assert_eq!(records.position(), (2, 14));
    }

    /// Logs written by Windows tools start with a UTF-8 byte-order mark: it is not part of the
    /// first record (JSONL, as audit and tune read it) nor of the first column's name (CSV).
    #[test]
    fn a_byte_order_mark_at_the_start_is_not_read_as_data() {
        let input = b"\xef\xbb\xbf{\"a\": 1}\n{\"b\": 2}\n".to_vec();
        let got = all(&mut Records::jsonl(
            Box::new(std::io::Cursor::new(input)),
            0,
            0,
        ));
        assert_eq!(got[0].item, Item::Value(json!({"a": 1})));
        assert_eq!(got[1].item, Item::Value(json!({"b": 2})));
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log.csv");
        std::fs::write(&path, b"\xef\xbb\xbfprompt,answer\nhello,hi\n").expect("written");
        let got = all(&mut Records::csv(file(&path), 0, 0, &fields()).expect("names prompt"));
        assert_eq!(got.len(), 1);
        assert!(
            matches!(&got[0].item, Item::Value(v) if v["prompt"] == "hello"),
            "{got:?}"
        );
    }

    /// Found by the `audit_records` fuzz target: a short row right after a resume point was
    /// read as valid (the resumed CSV reader had not seen the header's length).
    #[test]
    fn a_short_row_after_a_resume_point_is_still_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log.csv");
        std::fs::write(&path, "id,prompt,answer\n1,a,b\n2,short\n").expect("written");
        let whole = all(&mut Records::csv(file(&path), 0, 0, &fields()).expect("opens"));
        let (line, offset) = (whole[0].lines_through, whole[0].offset);
        let resumed =
            all(&mut Records::csv(file(&path), line, offset, &fields()).expect("resumes"));
        assert_eq!(resumed, whole[1..]);
        assert!(matches!(&resumed[0].item, Item::Unreadable(r) if r.contains("2 fields")));
    }

    #[test]
    fn rows_ending_with_a_lone_carriage_return_keep_their_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log.csv");
        std::fs::write(&path, b"prompt\nfirst\nsecond\rthird\n\r\nfourth").expect("written");
        let text = Fields {
            text: Some("prompt".into()),
            response: None,
        };
        let mut records = Records::csv(file(&path), 0, 0, &text).expect("opens");
        let got = all(&mut records);
        let lines: Vec<(u64, u64)> = got.iter().map(|r| (r.line, r.lines_through)).collect();
        assert_eq!(lines, [(2, 2), (3, 2), (3, 3), (5, 4)]);
        let (line, offset) = (got[1].lines_through, got[1].offset);
        let mut resumed = Records::csv(file(&path), line, offset, &text).expect("resumes");
        assert_eq!(all(&mut resumed), got[2..]);
    }
}
