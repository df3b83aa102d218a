//! Q8_0 matrices repacked into panels for the int8 tile: signed weights, activations shifted.

use candle_core::Result;
use half::f16;

use super::{Line, BLOCK, PANEL};

/// Bytes per Q8_0 block in candle's storage: an f16 scale and 32 signed bytes.
pub(super) const Q8_0_BYTES: usize = 2 + BLOCK;
/// Lines of packed weights per block of one panel.
pub(super) const LINES_PER_BLOCK: usize = BLOCK * PANEL / 64;

/// A Q8_0 matrix's panels of 16 output rows.
#[derive(Debug)]
pub(super) struct Q8_0Panels {
    blocks: usize,
    /// Per panel, per block: 8 groups of 4 inputs, each `[16 rows × 4 bytes]` (one line).
    weights: Vec<Line>,
    /// Per panel, per block: each row's Q8_0 scale.
    scales: Vec<f32>,
    /// Per panel, per block: −128 × the sum of each row's 32 weights. Activations enter
    /// `vpdpbusd` as unsigned bytes (`q + 128`); the integer sums start from this, which undoes
    /// the shift.
    offsets: Vec<i32>,
}

/// One panel of 16 output rows: its packed weights, scales and offsets for every block.
pub(super) struct Q8_0Panel<'a> {
    pub(super) weights: &'a [Line],
    pub(super) scales: &'a [f32],
    pub(super) offsets: &'a [i32],
}

impl Q8_0Panel<'_> {
    /// Checks that the panel holds `blocks` blocks (the tiles read it through raw pointers).
    pub(super) fn check(&self, blocks: usize) {
        assert!(self.weights.len() >= blocks * LINES_PER_BLOCK);
        assert!(self.scales.len() >= blocks * PANEL && self.offsets.len() >= blocks * PANEL);
    }
}

impl Q8_0Panels {
    /// Repacks candle's row-major Q8_0 blocks (`out_dim` rows of `in_dim / 32` blocks).
    pub(super) fn pack(raw: &[u8], out_dim: usize, in_dim: usize) -> Result<Self> {
        let blocks = in_dim / BLOCK;
        let want = out_dim * blocks * Q8_0_BYTES;
        if !in_dim.is_multiple_of(BLOCK) || raw.len() != want {
            candle_core::bail!(
                "Q8_0 matrix [{out_dim}, {in_dim}] holds {} bytes, expected {want}",
                raw.len()
            )
        }
        let mut weights = vec![Line([0; 64]); out_dim * in_dim / 64];
        let mut scales = vec![0f32; out_dim * blocks];
        let mut offsets = vec![0i32; out_dim * blocks];
        for (row, row_blocks) in raw.chunks_exact(blocks * Q8_0_BYTES).enumerate() {
            let (panel, lane) = (row / PANEL, row % PANEL);
            for (b, block) in row_blocks.chunks_exact(Q8_0_BYTES).enumerate() {
                let meta = (panel * blocks + b) * PANEL + lane;
                let (scale, qs) = q8_0_block(block);
                scales[meta] = scale;
                offsets[meta] = -128 * qs.clone().map(i32::from).sum::<i32>();
                let base = (panel * blocks + b) * BLOCK * PANEL + lane * 4;
                for (k, v) in qs.enumerate() {
                    let at = base + (k / 4) * PANEL * 4 + k % 4;
                    weights[at / 64].0[at % 64] = v as u8;
                }
            }
        }
        Ok(Self {
            blocks,
            weights,
            scales,
            offsets,
        })
    }

    /// The panel `p`.
    pub(super) fn panel(&self, p: usize) -> Q8_0Panel<'_> {
        let blocks = self.blocks;
        Q8_0Panel {
            weights: &self.weights[p * blocks * LINES_PER_BLOCK..][..blocks * LINES_PER_BLOCK],
            scales: &self.scales[p * blocks * PANEL..][..blocks * PANEL],
            offsets: &self.offsets[p * blocks * PANEL..][..blocks * PANEL],
        }
    }
}

/// A Q8_0 block's scale and its 32 signed values.
pub(super) fn q8_0_block(block: &[u8]) -> (f32, impl Iterator<Item = i8> + Clone + '_) {
    let scale = f16::from_le_bytes([block[0], block[1]]).to_f32();
    (scale, block[2..].iter().map(|&v| v as i8))
}
