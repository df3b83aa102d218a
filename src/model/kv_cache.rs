//! The key/value cache of a batch of sequences, owned by the caller and passed into each
//! forward step, so one prefilled prefix can serve several continuations.

use candle_core::{Result, Tensor};

/// Keys and values of every layer for a batch of rows, plus the absolute position held in each
/// slot (`None` for padding). All layers share the slot layout.
#[derive(Clone)]
pub struct KvCache {
    pub(crate) layers: Vec<(Tensor, Tensor)>,
    /// The stored row each row reads, when rows were selected: the copy is made one layer at a
    /// time as a step reaches it, so one prefix serving four policies is held once, not four
    /// times. `None`: row `b` is stored row `b`.
    pub(crate) selected: Option<Tensor>,
    pub(crate) positions: Vec<Vec<Option<u32>>>,
}

impl KvCache {
    /// Number of rows (sequences).
    pub fn rows(&self) -> usize {
        self.positions.len()
    }

    /// The position the next token of `row` takes.
    pub(crate) fn next_position(&self, row: usize) -> u32 {
        self.positions[row]
            .iter()
            .flatten()
            .max()
            .map_or(0, |p| p + 1)
    }

    /// A cache holding `rows` of this one, in that order (a row may repeat). No keys or values
    /// are copied here; see [`KvCache::layer`].
    pub fn select_rows(&self, rows: &[usize]) -> Result<KvCache> {
        if let Some(bad) = rows.iter().find(|&&r| r >= self.rows()) {
            candle_core::bail!("cache row {bad} out of range ({} rows)", self.rows())
        }
        let first = self.layers.first().map(|(k, _)| k.device().clone());
        let Some(device) = first else {
            candle_core::bail!("empty cache")
        };
        let index = Tensor::from_vec(
            rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
            rows.len(),
            &device,
        )?;
        let selected = match &self.selected {
            Some(earlier) => earlier.index_select(&index, 0)?,
            None => index,
        };
        let positions = rows.iter().map(|&r| self.positions[r].clone()).collect();
        Ok(KvCache {
            layers: self.layers.clone(),
            selected: Some(selected),
            positions,
        })
    }

    /// Layer `i`'s keys and values, one row per row of this cache.
    pub(crate) fn layer(&self, i: usize) -> Result<(Tensor, Tensor)> {
        let Some((k, v)) = self.layers.get(i) else {
            candle_core::bail!("the cache has no layer {i}")
        };
        match &self.selected {
            Some(index) => Ok((k.index_select(index, 0)?, v.index_select(index, 0)?)),
            None => Ok((k.clone(), v.clone())),
        }
    }
}
