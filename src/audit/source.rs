//! Opening an audit input: plain, gzip or zstd (recognised by their magic bytes, whatever the
//! file is called), positioned at a resume offset counted in decompressed bytes.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

/// How a file is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Not compressed.
    Plain,
    /// gzip (one or more members).
    Gzip,
    /// zstd.
    Zstd,
}

/// Recognises the compression by the first bytes.
pub fn detect(head: &[u8]) -> Compression {
    match head {
        [0x1f, 0x8b, ..] => Compression::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
        _ => Compression::Plain,
    }
}

/// Opens a file for line reading, `offset` decompressed bytes in.
pub fn open(path: &Path, offset: u64) -> std::io::Result<(Box<dyn BufRead>, Compression)> {
    let mut file = File::open(path)?;
    let mut head = [0u8; 4];
    let n = read_up_to(&mut file, &mut head)?;
    file.seek(SeekFrom::Start(0))?;
    let compression = detect(&head[..n]);
    let mut reader: Box<dyn Read> = match compression {
        Compression::Plain => {
            file.seek(SeekFrom::Start(offset))?;
            return Ok((Box::new(BufReader::new(file)), compression));
        }
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(file))),
        Compression::Zstd => Box::new(
            ruzstd::decoding::StreamingDecoder::new(BufReader::new(file))
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?,
        ),
    };
    let skipped = std::io::copy(&mut reader.by_ref().take(offset), &mut std::io::sink())?;
    if skipped != offset {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the file is shorter than the checkpoint says; pass --restart",
        ));
    }
    Ok((Box::new(BufReader::new(reader)), compression))
}

/// The size of an uncompressed file (progress is measured in decompressed bytes, which a
/// compressed file's size does not tell).
pub fn plain_size(path: &Path) -> Option<u64> {
    let mut file = File::open(path).ok()?;
    let mut head = [0u8; 4];
    let n = read_up_to(&mut file, &mut head).ok()?;
    (detect(&head[..n]) == Compression::Plain)
        .then(|| file.metadata().ok().map(|m| m.len()))
        .flatten()
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn lines(path: &Path, offset: u64) -> Vec<String> {
        let (reader, _) = open(path, offset).expect("opens");
        reader.lines().map(|l| l.expect("line")).collect()
    }

    #[test]
    fn gzip_and_zstd_read_like_plain_text_from_any_offset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = b"first\nsecond\nthird\n";
        let plain = dir.path().join("a.jsonl");
        std::fs::write(&plain, text).expect("plain");
        let gz = dir.path().join("b.data");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(text).expect("gz");
        std::fs::write(&gz, enc.finish().expect("gz")).expect("gz written");
        let zst = dir.path().join("c.zst");
        let compressed = ruzstd::encoding::compress_to_vec(
            &text[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        std::fs::write(&zst, compressed).expect("zst written");
        for (path, kind) in [
            (&plain, Compression::Plain),
            (&gz, Compression::Gzip),
            (&zst, Compression::Zstd),
        ] {
            assert_eq!(open(path, 0).expect("opens").1, kind);
            assert_eq!(lines(path, 0), ["first", "second", "third"]);
            assert_eq!(lines(path, 6), ["second", "third"], "{kind:?}");
        }
        assert!(open(&gz, 100).is_err(), "an offset past the end is refused");
    }
}
