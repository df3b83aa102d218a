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

    /// The first `len` positions of a one-row cache that holds positions `0..` in order (the
    /// cache of one prefilled sequence): the cache of that sequence's first `len` tokens.
    pub fn prefix(&self, len: usize) -> Result<KvCache> {
        let in_order = self.rows() == 1
            && self.selected.is_none()
            && self.positions[0].len() >= len
            && (0..len).all(|i| self.positions[0][i] == Some(i as u32));
        if !in_order {
            candle_core::bail!("only a one-row cache of positions 0.. in order can be cut")
        }
        let layers = self
            .layers
            .iter()
            .map(|(k, v)| Ok((k.narrow(2, 0, len)?, v.narrow(2, 0, len)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(KvCache {
            layers,
            selected: None,
            positions: vec![self.positions[0][..len].to_vec()],
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn cache(rows: usize) -> KvCache {
        let layer = |offset: f32| {
            let values: Vec<f32> = (0..rows * 2 * 3).map(|i| i as f32 + offset).collect();
            Tensor::from_vec(values, (rows, 1, 2, 3), &Device::Cpu).expect("tensor")
        };
        KvCache {
            layers: vec![(layer(0.0), layer(100.0)), (layer(200.0), layer(300.0))],
            selected: None,
            positions: (0..rows).map(|r| vec![Some(r as u32), None]).collect(),
        }
    }

    fn rows_of(t: &Tensor) -> Vec<Vec<f32>> {
        t.flatten_from(1).and_then(|t| t.to_vec2()).expect("rows")
    }

    #[test]
    fn selected_rows_read_the_stored_rows_layer_by_layer() {
        let base = cache(3);
        let picked = base.select_rows(&[2, 0, 2]).expect("select");
        // The selection holds the stored tensors, not copies.
        assert_eq!(picked.layers.len(), 2);
        assert_eq!(picked.layers[0].0.dims(), &[3, 1, 2, 3]);
        assert_eq!(picked.rows(), 3);
        assert_eq!(picked.positions[0], base.positions[2]);
        for i in 0..2 {
            let (k, v) = picked.layer(i).expect("layer");
            let (bk, bv) = base.layer(i).expect("layer");
            let (bk, bv) = (rows_of(&bk), rows_of(&bv));
            assert_eq!(
                rows_of(&k),
                vec![bk[2].clone(), bk[0].clone(), bk[2].clone()]
            );
            assert_eq!(
                rows_of(&v),
                vec![bv[2].clone(), bv[0].clone(), bv[2].clone()]
            );
        }
        // A selection of a selection composes the row maps.
        let again = picked.select_rows(&[1, 0]).expect("select");
        let (k, _) = again.layer(1).expect("layer");
        let bk = rows_of(&base.layer(1).expect("layer").0);
        assert_eq!(rows_of(&k), vec![bk[0].clone(), bk[2].clone()]);
        assert!(again.layer(2).is_err());
        assert!(base.select_rows(&[3]).is_err());
    }

    #[test]
    fn a_sequence_cache_cuts_to_its_first_positions() {
        let layer = |offset: f32| {
            let values: Vec<f32> = (0..4 * 2).map(|i| i as f32 + offset).collect();
            Tensor::from_vec(values, (1, 1, 4, 2), &Device::Cpu).expect("tensor")
        };
        let sequence = KvCache {
            layers: vec![(layer(0.0), layer(100.0))],
            selected: None,
            positions: vec![(0..4).map(Some).collect()],
        };
        let cut = sequence.prefix(3).expect("cut");
        assert_eq!(cut.positions, vec![vec![Some(0), Some(1), Some(2)]]);
        assert_eq!(cut.next_position(0), 3);
        let (k, v) = cut.layer(0).expect("layer");
        assert_eq!(rows_of(&k), vec![vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]]);
        assert_eq!(rows_of(&v)[0][5], 105.0);
        assert!(sequence.prefix(5).is_err(), "longer than the cache");
        assert!(cache(2).prefix(1).is_err(), "two rows");
        let padded = KvCache {
            positions: vec![vec![None, Some(0), Some(1), Some(2)]],
            ..sequence
        };
        assert!(padded.prefix(2).is_err(), "padding first");
    }
}
