//! Token-budget batching: the requests of one engine batch are run in groups whose padded size
//! (rows × the group's longest prefix plus longest suffix, which is what the forward passes
//! compute and the key-value cache holds) stays within a budget. Requests are grouped in order
//! of length, so that the rows of a group pad little; a request larger than the budget runs
//! alone.

/// The size of one request's prompts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Tokens shared by every policy's prompt.
    pub prefix: usize,
    /// The longest policy suffix.
    pub suffix: usize,
    /// One row per policy.
    pub rows: usize,
}

impl Shape {
    /// Tokens this request's rows run, padded to its longest prompt.
    pub fn padded(&self) -> usize {
        self.rows * (self.prefix + self.suffix)
    }
}

/// Splits requests into groups of indices, each within `budget` padded tokens (or a single
/// request); every index appears exactly once.
pub fn token_groups(shapes: &[Shape], budget: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..shapes.len()).collect();
    order.sort_by_key(|&i| (shapes[i].prefix + shapes[i].suffix, i));
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let (mut prefix, mut suffix, mut rows) = (0, 0, 0);
    for i in order {
        let s = shapes[i];
        let padded = (rows + s.rows) * (prefix.max(s.prefix) + suffix.max(s.suffix));
        if !current.is_empty() && padded > budget {
            groups.push(std::mem::take(&mut current));
            (prefix, suffix, rows) = (0, 0, 0);
        }
        current.push(i);
        prefix = prefix.max(s.prefix);
        suffix = suffix.max(s.suffix);
        rows += s.rows;
    }
    if !current.is_empty() {
        groups.push(current);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(prefix: usize, suffix: usize) -> Shape {
        Shape {
            prefix,
            suffix,
            rows: 4,
        }
    }

    fn padded(shapes: &[Shape], group: &[usize]) -> usize {
        let rows: usize = group.iter().map(|&i| shapes[i].rows).sum();
        let prefix = group.iter().map(|&i| shapes[i].prefix).max().unwrap_or(0);
        let suffix = group.iter().map(|&i| shapes[i].suffix).max().unwrap_or(0);
        rows * (prefix + suffix)
    }

    #[test]
    fn groups_stay_within_the_budget_and_cover_every_request_once() {
        let shapes: Vec<Shape> = (0..23)
            .map(|i| shape(40 + (i * 37) % 500, 90 + (i * 11) % 40))
            .collect();
        let groups = token_groups(&shapes, 4096);
        let mut seen: Vec<usize> = groups.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..23).collect::<Vec<_>>());
        for g in &groups {
            assert!(padded(&shapes, g) <= 4096, "{g:?}");
        }
        assert!(groups.len() > 1 && groups.len() < 23, "{}", groups.len());
    }

    #[test]
    fn similar_lengths_share_a_group() {
        // Short, long, short, long: the two short requests go together, not with a long one.
        let shapes = [
            shape(50, 100),
            shape(500, 100),
            shape(52, 100),
            shape(510, 100),
        ];
        let groups = token_groups(&shapes, 4 * 2 * 160);
        assert_eq!(groups, vec![vec![0, 2], vec![1], vec![3]]);
    }

    #[test]
    fn a_request_over_the_budget_runs_alone() {
        let shapes = [shape(50, 100), shape(5000, 100), shape(50, 100)];
        assert_eq!(
            token_groups(&shapes, 2000),
            vec![vec![0, 2], vec![1]],
            "the large one is not dropped and does not take the small ones with it"
        );
        assert_eq!(token_groups(&[], 2000), Vec::<Vec<usize>>::new());
        assert_eq!(
            token_groups(&shapes, 0).len(),
            3,
            "budget 0: one request a group"
        );
    }
}
