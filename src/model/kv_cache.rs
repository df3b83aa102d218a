//! The key/value cache of a batch of sequences, owned by the caller and passed into each
//! forward step, so one prefilled prefix can serve several continuations.

use candle_core::{Result, Tensor};

/// Keys and values of every layer for a batch of rows, plus the absolute position held in each
/// slot (`None` for padding). All layers share the slot layout.
#[derive(Clone)]
pub struct KvCache {
    pub(crate) layers: Vec<(Tensor, Tensor)>,
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

    /// A cache holding `rows` of this one, in that order (a row may repeat).
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
        let layers = self
            .layers
            .iter()
            .map(|(k, v)| Ok((k.index_select(&index, 0)?, v.index_select(&index, 0)?)))
            .collect::<Result<Vec<_>>>()?;
        let positions = rows.iter().map(|&r| self.positions[r].clone()).collect();
        Ok(KvCache { layers, positions })
    }
}
