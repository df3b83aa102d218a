//! A text's tokens cut into the windows the classifier reads: each at most its limit, framed
//! by `[CLS]` and `[SEP]`, overlapping so that a phrase of up to [`OVERLAP`] tokens cut by one
//! window's end is whole in the next.

/// Tokens each window shares with the one before it.
pub const OVERLAP: usize = 64;

/// The windows of `tokens` (without special tokens) for a model that reads `limit` tokens at
/// most, each `[cls] … [sep]`; one window for a text that fits, and one (`[cls] [sep]`) for an
/// empty text.
pub fn windows(tokens: &[u32], limit: usize, cls: u32, sep: u32) -> Vec<Vec<u32>> {
    let room = limit.saturating_sub(2).max(OVERLAP + 1);
    let step = room - OVERLAP;
    let mut out = Vec::new();
    let mut start = 0;
    loop {
        let end = (start + room).min(tokens.len());
        let mut window = Vec::with_capacity(end - start + 2);
        window.push(cls);
        window.extend_from_slice(&tokens[start..end]);
        window.push(sep);
        out.push(window);
        if end == tokens.len() {
            return out;
        }
        start += step;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_texts_take_one_window_and_long_ones_overlap() {
        assert_eq!(windows(&[], 512, 1, 2), [vec![1, 2]]);
        assert_eq!(windows(&[7, 8], 512, 1, 2), [vec![1, 7, 8, 2]]);
        let tokens: Vec<u32> = (10..10 + 1200).collect();
        let cut = windows(&tokens, 512, 1, 2);
        assert_eq!(cut.len(), 3);
        for w in &cut {
            assert!(w.len() <= 512);
            assert_eq!((w[0], w[w.len() - 1]), (1, 2));
        }
        // Every token is in a window, and neighbours share OVERLAP tokens.
        let first = &cut[0][1..cut[0].len() - 1];
        let second = &cut[1][1..cut[1].len() - 1];
        assert_eq!(first[first.len() - OVERLAP..], second[..OVERLAP]);
        let last = &cut[2][1..cut[2].len() - 1];
        assert_eq!(last.last(), tokens.last());
        assert_eq!(
            windows(&tokens[..510], 512, 1, 2).len(),
            1,
            "510 tokens fit"
        );
        assert_eq!(windows(&tokens[..511], 512, 1, 2).len(), 2);
    }
}
