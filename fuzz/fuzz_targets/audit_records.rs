//! The audit readers on any input: JSON lines and CSV rows are read to the end without a
//! panic, line numbers only grow, and a read resumed after any record (as a checkpoint does)
//! yields exactly the records an uninterrupted read gives from there.
#![no_main]

use std::io::{BufRead, Cursor};

use libfuzzer_sys::fuzz_target;
use shieldgate::audit::reader::{read_record, Fields};
use shieldgate::audit::records::{Item, Record, Records};

fn all(mut records: Records) -> Vec<Record> {
    let mut out = Vec::new();
    while let Ok(Some(record)) = records.next_record() {
        out.push(record);
    }
    out
}

fn check(records: &[Record], resume: impl Fn(u64, u64) -> Option<Records>) {
    let mut previous = 0;
    for record in records {
        assert!(
            record.line > previous,
            "a record starts before the last one ended"
        );
        assert!(
            record.lines_through + 1 >= record.line,
            "a record ends before it starts"
        );
        previous = record.lines_through;
        if let Item::Value(value) = &record.item {
            let fields = Fields {
                text: Some("text".into()),
                response: Some("response".into()),
            };
            let _ = read_record(value, "fuzz", &fields);
            let _ = read_record(value, "fuzz", &Fields::default());
        }
    }
    for (i, record) in records.iter().enumerate() {
        if let Some(resumed) = resume(record.lines_through, record.offset) {
            assert_eq!(all(resumed), records[i + 1..], "resumed after record {i}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let open = |offset: u64| -> std::io::Result<Box<dyn BufRead>> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(data.len());
        Ok(Box::new(Cursor::new(data[start..].to_vec())))
    };
    let jsonl = |line, offset| open(offset).ok().map(|r| Records::jsonl(r, line, offset));
    if let Some(records) = jsonl(0, 0) {
        check(&all(records), jsonl);
    }
    let fields = Fields {
        text: Some("text".into()),
        response: None,
    };
    let csv = |line, offset| Records::csv(open, line, offset, &fields).ok();
    if let Some(records) = csv(0, 0) {
        check(&all(records), csv);
    }
});
