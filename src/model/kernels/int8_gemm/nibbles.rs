//! 4-bit matrices (Q4_K and Q4_0) repacked into panels for the int8 tile: the 4-bit values
//! stay 4-bit (two per byte) and enter `vpdpbusd` as the unsigned operand against signed
//! activations, and each format keeps its own scales, so `w = scale·q − min` is computed
//! exactly as in the file: Q4_K's 6-bit sub-block scales and mins times its super-block's `d`
//! and `dmin`, Q4_0's f16 block scale `d` with `min = 8d`.

use candle_core::Result;
use half::f16;

use super::{Line, BLOCK, PANEL};

/// Inputs per Q4_K super-block.
pub(super) const SUPER: usize = 256;
/// Bytes per Q4_K super-block in candle's storage: f16 `d`, f16 `dmin`, 12 bytes of packed
/// 6-bit scales and mins, 128 bytes of 4-bit values.
const Q4_K_BYTES: usize = 2 + 2 + 12 + SUPER / 2;
/// Bytes per Q4_0 block in candle's storage: f16 `d` and 16 bytes of 4-bit values.
pub(super) const Q4_0_BYTES: usize = 2 + BLOCK / 2;
/// Lines of packed weights per 32-wide block of one panel (two values per byte).
pub(super) const LINES_PER_BLOCK: usize = BLOCK * PANEL / 128;

/// A 4-bit matrix's panels of 16 output rows.
#[derive(Debug)]
pub(super) struct NibblePanels {
    blocks: usize,
    /// Per panel, per block: 4 lines; in line `l` each row's 4 bytes hold inputs
    /// `8l..8l+4` in their low nibbles and `8l+4..8l+8` in their high nibbles.
    weights: Vec<Line>,
    scales: Scales,
}

/// The weight scales of a 4-bit matrix, per panel, per block (or super-block), per row.
#[derive(Debug)]
enum Scales {
    /// Q4_K: each super-block's `d` and `dmin`, each block's 6-bit scale and min.
    Q4K {
        d: Vec<f32>,
        dmin: Vec<f32>,
        scales: Vec<u8>,
        mins: Vec<u8>,
    },
    /// Q4_0: each block's `d`.
    Q4_0 { d: Vec<f16> },
}

/// One panel of 16 output rows (see [`NibblePanels`]).
pub(super) struct NibblePanel<'a> {
    pub(super) weights: &'a [Line],
    pub(super) scales: PanelScales<'a>,
}

impl NibblePanel<'_> {
    /// Checks that the panel covers `in_dim` inputs (the tiles read it through raw pointers).
    pub(super) fn check(&self, in_dim: usize) {
        let blocks = in_dim / BLOCK;
        assert!(self.weights.len() >= blocks * LINES_PER_BLOCK);
        match self.scales {
            PanelScales::Q4K {
                d,
                dmin,
                scales,
                mins,
            } => {
                let supers = in_dim / SUPER;
                assert!(in_dim.is_multiple_of(SUPER));
                assert!(d.len() >= supers * PANEL && dmin.len() >= supers * PANEL);
                assert!(scales.len() >= blocks * PANEL && mins.len() >= blocks * PANEL);
            }
            PanelScales::Q4_0 { d } => assert!(d.len() >= blocks * PANEL),
        }
    }
}

/// One panel's share of [`Scales`].
pub(super) enum PanelScales<'a> {
    Q4K {
        d: &'a [f32],
        dmin: &'a [f32],
        scales: &'a [u8],
        mins: &'a [u8],
    },
    Q4_0 {
        d: &'a [f16],
    },
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

/// The 4-bit value `k` (0..256) of a Q4_K super-block's 128 value bytes: 64-wide chunks hold
/// their first 32 values in the low nibbles of 32 bytes and the next 32 in the high ones.
pub(super) fn q4_k_nibble(qs: &[u8], k: usize) -> u8 {
    let byte = qs[k / 64 * 32 + k % 32];
    if k % 64 < 32 {
        byte & 0x0F
    } else {
        byte >> 4
    }
}

/// The 4-bit value `k` (0..32) of a Q4_0 block's 16 value bytes: the first 16 values in the
/// low nibbles, the next 16 in the high ones.
pub(super) fn q4_0_nibble(qs: &[u8], k: usize) -> u8 {
    if k < 16 {
        qs[k] & 0x0F
    } else {
        qs[k - 16] >> 4
    }
}

/// A Q4_K super-block's `d`, `dmin`, packed scales and values.
pub(super) fn q4_k_super_block(bytes: &[u8]) -> (f32, f32, &[u8], &[u8]) {
    let d = f16::from_le_bytes([bytes[0], bytes[1]]).to_f32();
    let dmin = f16::from_le_bytes([bytes[2], bytes[3]]).to_f32();
    (d, dmin, &bytes[4..16], &bytes[16..])
}

/// Checks that `raw` holds `rows` rows of `cols / per` units of `bytes` each.
fn check_len(raw: &[u8], rows: usize, cols: usize, per: usize, bytes: usize) -> Result<()> {
    let want = rows * cols / per * bytes;
    if !cols.is_multiple_of(per) || raw.len() != want {
        candle_core::bail!(
            "4-bit matrix [{rows}, {cols}] holds {} bytes, expected {want}",
            raw.len()
        )
    }
    Ok(())
}

/// Zeroed lines for a matrix `[out_dim, in_dim]` at two values per byte.
fn lines(out_dim: usize, in_dim: usize) -> Vec<Line> {
    vec![Line([0; 64]); out_dim * in_dim / 128]
}

/// Writes the 32 values `value(k)` of block `b` of `row` into their panel's lines.
fn put(weights: &mut [Line], blocks: usize, row: usize, b: usize, value: impl Fn(usize) -> u8) {
    let (panel, lane) = (row / PANEL, row % PANEL);
    let first = (panel * blocks + b) * LINES_PER_BLOCK;
    for (l, line) in weights[first..first + LINES_PER_BLOCK]
        .iter_mut()
        .enumerate()
    {
        for i in 0..4 {
            line.0[lane * 4 + i] = value(8 * l + i) | (value(8 * l + 4 + i) << 4);
        }
    }
}

impl NibblePanels {
    /// Repacks candle's row-major Q4_K super-blocks (`out_dim` rows of `in_dim / 256`).
    pub(super) fn from_q4_k(raw: &[u8], out_dim: usize, in_dim: usize) -> Result<Self> {
        check_len(raw, out_dim, in_dim, SUPER, Q4_K_BYTES)?;
        let (supers, blocks) = (in_dim / SUPER, in_dim / BLOCK);
        let mut weights = lines(out_dim, in_dim);
        let mut d = vec![0f32; out_dim * supers];
        let mut dmin = vec![0f32; out_dim * supers];
        let mut scales = vec![0u8; out_dim * blocks];
        let mut mins = vec![0u8; out_dim * blocks];
        for (row, row_supers) in raw.chunks_exact(supers * Q4_K_BYTES).enumerate() {
            let (panel, lane) = (row / PANEL, row % PANEL);
            for (s, bytes) in row_supers.chunks_exact(Q4_K_BYTES).enumerate() {
                let (sd, smin, scale_bytes, qs) = q4_k_super_block(bytes);
                d[(panel * supers + s) * PANEL + lane] = sd;
                dmin[(panel * supers + s) * PANEL + lane] = smin;
                for j in 0..SUPER / BLOCK {
                    let b = s * SUPER / BLOCK + j;
                    let meta = (panel * blocks + b) * PANEL + lane;
                    (scales[meta], mins[meta]) = scale_and_min(j, scale_bytes);
                    put(&mut weights, blocks, row, b, |k| {
                        q4_k_nibble(qs, j * BLOCK + k)
                    });
                }
            }
        }
        Ok(Self {
            blocks,
            weights,
            scales: Scales::Q4K {
                d,
                dmin,
                scales,
                mins,
            },
        })
    }

    /// Repacks candle's row-major Q4_0 blocks (`out_dim` rows of `in_dim / 32`).
    pub(super) fn from_q4_0(raw: &[u8], out_dim: usize, in_dim: usize) -> Result<Self> {
        check_len(raw, out_dim, in_dim, BLOCK, Q4_0_BYTES)?;
        let blocks = in_dim / BLOCK;
        let mut weights = lines(out_dim, in_dim);
        let mut d = vec![f16::ZERO; out_dim * blocks];
        for (row, row_blocks) in raw.chunks_exact(blocks * Q4_0_BYTES).enumerate() {
            let (panel, lane) = (row / PANEL, row % PANEL);
            for (b, bytes) in row_blocks.chunks_exact(Q4_0_BYTES).enumerate() {
                d[(panel * blocks + b) * PANEL + lane] = f16::from_le_bytes([bytes[0], bytes[1]]);
                put(&mut weights, blocks, row, b, |k| {
                    q4_0_nibble(&bytes[2..], k)
                });
            }
        }
        Ok(Self {
            blocks,
            weights,
            scales: Scales::Q4_0 { d },
        })
    }

    /// Whether these are Q4_K panels, whose tiles take one activation scale per super-block.
    pub(super) fn is_q4_k(&self) -> bool {
        matches!(self.scales, Scales::Q4K { .. })
    }

    /// The panel `p`.
    pub(super) fn panel(&self, p: usize) -> NibblePanel<'_> {
        let blocks = self.blocks;
        let per_panel = |n: usize| p * n * PANEL..(p + 1) * n * PANEL;
        let scales = match &self.scales {
            Scales::Q4K {
                d,
                dmin,
                scales,
                mins,
            } => {
                let supers = blocks * BLOCK / SUPER;
                PanelScales::Q4K {
                    d: &d[per_panel(supers)],
                    dmin: &dmin[per_panel(supers)],
                    scales: &scales[per_panel(blocks)],
                    mins: &mins[per_panel(blocks)],
                }
            }
            Scales::Q4_0 { d } => PanelScales::Q4_0 {
                d: &d[per_panel(blocks)],
            },
        };
        NibblePanel {
            weights: &self.weights[p * blocks * LINES_PER_BLOCK..][..blocks * LINES_PER_BLOCK],
            scales,
        }
    }
}
