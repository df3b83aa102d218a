//! Q4_K matrices repacked into panels for the int8 tile: the 4-bit values stay 4-bit (two
//! per byte) and enter `vpdpbusd` as the unsigned operand against signed activations; each
//! 32-wide sub-block's 6-bit scale and min and each 256-wide super-block's `d` and `dmin`
//! are kept as they are, so `w = d·sc·q − dmin·m` is computed exactly as in the file.

use candle_core::Result;
use half::f16;

use super::{Line, BLOCK, PANEL};

/// Inputs per Q4_K super-block.
pub(super) const SUPER: usize = 256;
/// Bytes per Q4_K super-block in candle's storage: f16 `d`, f16 `dmin`, 12 bytes of packed
/// 6-bit scales and mins, 128 bytes of 4-bit values.
const Q4_K_BYTES: usize = 2 + 2 + 12 + SUPER / 2;
/// Lines of packed weights per 32-wide block of one panel (two values per byte).
pub(super) const LINES_PER_BLOCK: usize = BLOCK * PANEL / 128;

/// A Q4_K matrix's panels of 16 output rows.
#[derive(Debug)]
pub(super) struct Q4KPanels {
    blocks: usize,
    /// Per panel, per block: 4 lines; in line `l` each row's 4 bytes hold inputs
    /// `8l..8l+4` in their low nibbles and `8l+4..8l+8` in their high nibbles.
    weights: Vec<Line>,
    /// Per panel, per super-block: each row's `d` and `dmin`.
    d: Vec<f32>,
    dmin: Vec<f32>,
    /// Per panel, per block: each row's 6-bit scale and min.
    scales: Vec<u8>,
    mins: Vec<u8>,
}

/// One panel of 16 output rows (see [`Q4KPanels`]).
pub(super) struct Q4KPanel<'a> {
    pub(super) weights: &'a [Line],
    pub(super) d: &'a [f32],
    pub(super) dmin: &'a [f32],
    pub(super) scales: &'a [u8],
    pub(super) mins: &'a [u8],
}

/// ggml's packing of the 8 six-bit scales and mins of a Q4_K super-block into 12 bytes.
pub(super) fn scale_and_min(j: usize, packed: &[u8]) -> (u8, u8) {
    if j < 4 {
        (packed[j] & 63, packed[j + 4] & 63)
    } else {
        (
            (packed[j + 4] & 0x0F) | ((packed[j - 4] >> 6) << 4),
            (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4),
        )
    }
}

/// The 4-bit value `k` (0..256) of a super-block's 128 value bytes: 64-wide chunks hold
/// their first 32 values in the low nibbles of 32 bytes and the next 32 in the high ones.
pub(super) fn nibble(qs: &[u8], k: usize) -> u8 {
    let byte = qs[k / 64 * 32 + k % 32];
    if k % 64 < 32 {
        byte & 0x0F
    } else {
        byte >> 4
    }
}

/// A super-block's `d`, `dmin`, packed scales and values.
pub(super) fn super_block(bytes: &[u8]) -> (f32, f32, &[u8], &[u8]) {
    let d = f16::from_le_bytes([bytes[0], bytes[1]]).to_f32();
    let dmin = f16::from_le_bytes([bytes[2], bytes[3]]).to_f32();
    (d, dmin, &bytes[4..16], &bytes[16..])
}

impl Q4KPanels {
    /// Repacks candle's row-major Q4_K super-blocks (`out_dim` rows of `in_dim / 256`).
    pub(super) fn pack(raw: &[u8], out_dim: usize, in_dim: usize) -> Result<Self> {
        let supers = in_dim / SUPER;
        let blocks = in_dim / BLOCK;
        let want = out_dim * supers * Q4_K_BYTES;
        if !in_dim.is_multiple_of(SUPER) || raw.len() != want {
            candle_core::bail!(
                "Q4_K matrix [{out_dim}, {in_dim}] holds {} bytes, expected {want}",
                raw.len()
            )
        }
        let mut weights = vec![Line([0; 64]); out_dim * in_dim / 128];
        let mut d = vec![0f32; out_dim * supers];
        let mut dmin = vec![0f32; out_dim * supers];
        let mut scales = vec![0u8; out_dim * blocks];
        let mut mins = vec![0u8; out_dim * blocks];
        for (row, row_supers) in raw.chunks_exact(supers * Q4_K_BYTES).enumerate() {
            let (panel, lane) = (row / PANEL, row % PANEL);
            for (s, bytes) in row_supers.chunks_exact(Q4_K_BYTES).enumerate() {
                let (sd, smin, packed, qs) = super_block(bytes);
                d[(panel * supers + s) * PANEL + lane] = sd;
                dmin[(panel * supers + s) * PANEL + lane] = smin;
                for j in 0..SUPER / BLOCK {
                    let b = s * SUPER / BLOCK + j;
                    let meta = (panel * blocks + b) * PANEL + lane;
                    (scales[meta], mins[meta]) = scale_and_min(j, packed);
                    let first = (panel * blocks + b) * LINES_PER_BLOCK;
                    for (l, line) in weights[first..first + LINES_PER_BLOCK]
                        .iter_mut()
                        .enumerate()
                    {
                        for i in 0..4 {
                            let low = nibble(qs, j * BLOCK + 8 * l + i);
                            let high = nibble(qs, j * BLOCK + 8 * l + 4 + i);
                            line.0[lane * 4 + i] = low | (high << 4);
                        }
                    }
                }
            }
        }
        Ok(Self {
            blocks,
            weights,
            d,
            dmin,
            scales,
            mins,
        })
    }

    /// The panel `p`.
    pub(super) fn panel(&self, p: usize) -> Q4KPanel<'_> {
        let (blocks, supers) = (self.blocks, self.blocks * BLOCK / SUPER);
        Q4KPanel {
            weights: &self.weights[p * blocks * LINES_PER_BLOCK..][..blocks * LINES_PER_BLOCK],
            d: &self.d[p * supers * PANEL..][..supers * PANEL],
            dmin: &self.dmin[p * supers * PANEL..][..supers * PANEL],
            scales: &self.scales[p * blocks * PANEL..][..blocks * PANEL],
            mins: &self.mins[p * blocks * PANEL..][..blocks * PANEL],
        }
    }
}
