//! The work plan both GEMM kernels share: the weights are packed in panels of `PANEL` output
//! rows, a register tile holds `ROWS` tokens × a pair of panels, and the panel pairs are split
//! into runs, one task each over all tokens, so that a pair's weights stay in cache while every
//! row tile passes over them. Each task writes its columns of the output rows directly.

use std::marker::PhantomData;
use std::ops::Range;

use candle_core::{Layout, Result};
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
pub(crate) mod registers;

/// Output rows per packed panel: one 512-bit register of 32-bit sums.
pub(crate) const PANEL: usize = 16;
/// Tokens per register tile; a tile holds `ROWS` × 2 panels of sums.
pub(crate) const ROWS: usize = 6;

/// One row tile's running results: `ROWS` tokens × the 32 outputs of a panel pair.
pub(crate) type Sums = [[f32; 2 * PANEL]; ROWS];

/// The shape of one GEMM: `rows` tokens, `pairs` panel pairs (`out_dim = pairs × 32`), and
/// `steps` units of the input dimension (blocks or input pairs) taken `chunk` at a time.
pub(crate) struct Plan {
    pub(crate) rows: usize,
    pub(crate) pairs: usize,
    pub(crate) steps: usize,
    pub(crate) chunk: usize,
}

impl Plan {
    /// Row tiles, the last one padded.
    pub(crate) fn tiles(&self) -> usize {
        self.rows.div_ceil(ROWS)
    }

    /// Runs `tile(pair, row tile, steps, sums)`, which adds the tile's products over `steps`
    /// to `sums`, for every panel pair, run of steps and row tile, and returns the
    /// `rows × out_dim` results, each row written by `emit(results, destination)`.
    #[allow(unsafe_code)]
    pub(crate) fn run<T: Copy + Default + Send>(
        &self,
        tile: impl Fn(usize, usize, Range<usize>, &mut Sums) + Sync,
        emit: impl Fn(&[f32], &mut [T]) + Sync,
    ) -> Vec<T> {
        let tiles = self.tiles();
        let chunk = self.chunk.max(1);
        let per_task = self.pairs.div_ceil(4 * rayon::current_num_threads()).max(1);
        let out_dim = self.pairs * 2 * PANEL;
        let mut y = vec![T::default(); self.rows * out_dim];
        let shared = SharedOutput::new(&mut y);
        (0..self.pairs)
            .step_by(per_task)
            .collect::<Vec<_>>()
            .into_par_iter()
            .for_each(|first| {
                let mut sums = vec![[[0f32; 2 * PANEL]; ROWS]; tiles];
                for pair in first..(first + per_task).min(self.pairs) {
                    sums.iter_mut().for_each(|s| *s = [[0f32; 2 * PANEL]; ROWS]);
                    for start in (0..self.steps).step_by(chunk) {
                        let range = start..(start + chunk).min(self.steps);
                        for (t, sums) in sums.iter_mut().enumerate() {
                            tile(pair, t, range.clone(), sums);
                        }
                    }
                    let rows = sums.iter().flatten().take(self.rows);
                    for (row, sum) in rows.enumerate() {
                        let at = row * out_dim + pair * 2 * PANEL;
                        // SAFETY: this task alone writes the columns of its panel pairs.
                        emit(sum, unsafe { shared.segment(at, 2 * PANEL) });
                    }
                }
            });
        y
    }
}

/// The output matrix, written by every task at once, each task in the columns of its own
/// panel pairs, so that results go straight to their rows without a gathering pass.
struct SharedOutput<'a, T> {
    start: *mut T,
    len: usize,
    _borrow: PhantomData<&'a mut [T]>,
}

// SAFETY: tasks write disjoint elements (see `segment`); `T: Send` lets them cross threads.
#[allow(unsafe_code)]
unsafe impl<T: Send> Sync for SharedOutput<'_, T> {}

impl<'a, T> SharedOutput<'a, T> {
    fn new(out: &'a mut [T]) -> Self {
        Self {
            start: out.as_mut_ptr(),
            len: out.len(),
            _borrow: PhantomData,
        }
    }

    /// Elements `at..at + len`.
    ///
    /// # Safety
    /// No other live slice from this output may overlap them.
    #[allow(unsafe_code, clippy::mut_from_ref)]
    unsafe fn segment(&self, at: usize, len: usize) -> &mut [T] {
        assert!(at + len <= self.len, "segment out of the output");
        // SAFETY: in bounds (asserted); exclusive by the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.start.add(at), len) }
    }
}

/// The rows and element range of a packed matmul's activations: they must be contiguous and
/// `in_dim` wide (`op` names the operation in errors).
pub(crate) fn activation_rows(
    op: &str,
    layout: &Layout,
    in_dim: usize,
) -> Result<(usize, Range<usize>)> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{op} takes contiguous activations")
    };
    let (rows, columns) = layout.shape().dims2()?;
    if columns != in_dim {
        candle_core::bail!("{op}: activations have {columns} columns, the matrix {in_dim}")
    }
    Ok((rows, start..end))
}

/// Deterministic values in [-1, 1) with a few large outliers, like real activations: the
/// kernels' test inputs.
#[cfg(test)]
pub(crate) fn test_values(n: usize, seed: u64) -> Vec<f32> {
    let mut z = seed;
    (0..n)
        .map(|i| {
            z = z
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let v = ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
            if i % 97 == 0 {
                v * 8.0
            } else {
                v
            }
        })
        .collect()
}

/// [`test_values`] as a CPU tensor of `shape`.
#[cfg(test)]
pub(crate) fn test_tensor(shape: impl Into<candle_core::Shape>, seed: u64) -> candle_core::Tensor {
    let shape = shape.into();
    let values = test_values(shape.elem_count(), seed);
    candle_core::Tensor::from_vec(values, shape, &candle_core::Device::Cpu).expect("test tensor")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_output_is_its_tiles_sum_over_all_steps_in_its_place() {
        // A fake tile: output (row, column) gains `step + 1` for each step, plus a mark of
        // where it is, so a misplaced or missing run shows.
        let plan = Plan {
            rows: 13,
            pairs: 5,
            steps: 7,
            chunk: 3,
        };
        let y = plan.run(
            |pair, tile, steps, sums| {
                for (r, row) in sums.iter_mut().enumerate() {
                    for (c, v) in row.iter_mut().enumerate() {
                        for s in steps.clone() {
                            *v += (s + 1) as f32;
                        }
                        if steps.start == 0 {
                            *v += ((tile * ROWS + r) * 1000 + pair * 2 * PANEL + c) as f32;
                        }
                    }
                }
            },
            |src: &[f32], dst: &mut [f64]| {
                for (d, s) in dst.iter_mut().zip(src) {
                    *d = f64::from(*s);
                }
            },
        );
        let out_dim = 5 * 2 * PANEL;
        assert_eq!(y.len(), 13 * out_dim);
        for row in 0..13 {
            for col in 0..out_dim {
                let want = (1..=7).sum::<usize>() + row * 1000 + col;
                assert_eq!(
                    y[row * out_dim + col],
                    want as f64,
                    "row {row}, column {col}"
                );
            }
        }
    }
}
