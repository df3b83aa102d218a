//! The register tiles of the int8 GEMM with AVX-512 VNNI intrinsics: `ROWS` tokens × 2 panels
//! of 16 outputs, over a run of blocks (the running results start from and return to memory).
//! Per 32-wide block, 8 steps of `vpdpbusd` add 4 products to each of the `ROWS × 2` integer
//! sums; the block's sums then become f32, scaled by weight scale × activation scale, and join
//! the running results. It allows `unsafe` for its intrinsics.
#![allow(unsafe_code)]

use std::ops::Range;

use std::arch::x86_64::{
    __m512, __m512i, _mm256_loadu_si256, _mm512_abs_ps, _mm512_add_epi32, _mm512_and_si512,
    _mm512_cvtepi32_epi8, _mm512_cvtepi32_ps, _mm512_cvtepu8_epi32, _mm512_cvtph_ps,
    _mm512_cvtps_epi32, _mm512_dpbusd_epi32, _mm512_dpwssd_epi32, _mm512_fmadd_ps,
    _mm512_fnmadd_ps, _mm512_load_si512, _mm512_loadu_ps, _mm512_loadu_si512, _mm512_max_ps,
    _mm512_mul_ps, _mm512_mullo_epi32, _mm512_or_si512, _mm512_reduce_add_epi32,
    _mm512_reduce_max_ps, _mm512_set1_epi32, _mm512_set1_epi8, _mm512_set1_ps, _mm512_setzero_ps,
    _mm512_setzero_si512, _mm512_slli_epi32, _mm512_srli_epi16, _mm512_storeu_ps, _mm_loadu_si128,
    _mm_storeu_si128,
};

use super::activations::{Activations, Row};
use super::nibbles::{self, NibblePanel, PanelScales, SUPER};
use super::q8_0::Q8_0Panel;
use super::{Sums, BLOCK, PANEL, ROWS};
use crate::model::kernels::panels::registers::{load, store};

/// Whether this CPU runs the kernel (`is_x86_feature_detected!` caches its answer, so the
/// checks before each tile and each quantized row cost a load).
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
}

/// Adds the sums of the `ROWS` activation rows from `row` against two Q8_0 panels over the
/// blocks `range` to `sums` (the same arithmetic, split at any block, as over all at once).
pub(super) fn tile_q8_0(
    left: &Q8_0Panel,
    right: &Q8_0Panel,
    acts: &Activations,
    row: usize,
    range: Range<usize>,
    sums: &mut Sums,
) {
    let blocks = acts.in_dim / BLOCK;
    left.check(blocks);
    right.check(blocks);
    acts.check_rows(row, ROWS);
    assert!(range.end <= blocks, "blocks {range:?} of {blocks}");
    assert!(available(), "the VNNI kernel needs AVX-512 F, BW and VNNI");
    // SAFETY: the CPU has the features (checked above; `PackedInt8` is only built where it
    // does), every pointer the kernel forms stays inside the slices whose lengths were
    // checked above, and the weight loads are aligned: `Line` is 64-byte aligned and the
    // kernel reads whole lines.
    unsafe { tile_q8_0_vnni(left, right, acts, row, blocks, range, sums) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_q8_0_vnni(
    left: &Q8_0Panel,
    right: &Q8_0Panel,
    acts: &Activations,
    row: usize,
    blocks: usize,
    range: Range<usize>,
    sums: &mut Sums,
) {
    let weights = [
        left.weights.as_ptr().cast::<u8>(),
        right.weights.as_ptr().cast::<u8>(),
    ];
    let scales = [left.scales.as_ptr(), right.scales.as_ptr()];
    let offsets = [left.offsets.as_ptr(), right.offsets.as_ptr()];
    let x = acts.bytes.as_ptr().add(row * acts.in_dim);
    let x_scales = acts.scales.as_ptr().add(row * blocks);
    let mut results: [[__m512; 2]; ROWS] = load(sums);
    for b in range {
        let meta = b * PANEL;
        // The integer sums start from the offsets that undo the activations' shift.
        let offset = [
            _mm512_loadu_si512(offsets[0].add(meta).cast()),
            _mm512_loadu_si512(offsets[1].add(meta).cast()),
        ];
        let mut dots: [[__m512i; 2]; ROWS] = [offset; ROWS];
        for step in 0..BLOCK / 4 {
            let at = (b * BLOCK / 4 + step) * PANEL * 4;
            let w = [
                _mm512_load_si512(weights[0].add(at).cast()),
                _mm512_load_si512(weights[1].add(at).cast()),
            ];
            for (r, dot) in dots.iter_mut().enumerate() {
                let four = x
                    .add(r * acts.in_dim + b * BLOCK + step * 4)
                    .cast::<i32>()
                    .read_unaligned();
                let a = _mm512_set1_epi32(four);
                dot[0] = _mm512_dpbusd_epi32(dot[0], a, w[0]);
                dot[1] = _mm512_dpbusd_epi32(dot[1], a, w[1]);
            }
        }
        let scale = [
            _mm512_loadu_ps(scales[0].add(meta)),
            _mm512_loadu_ps(scales[1].add(meta)),
        ];
        for (r, (result, dot)) in results.iter_mut().zip(&dots).enumerate() {
            let x_scale = _mm512_set1_ps(*x_scales.add(r * blocks + b));
            for p in 0..2 {
                let exact = _mm512_cvtepi32_ps(dot[p]);
                result[p] = _mm512_fmadd_ps(exact, _mm512_mul_ps(scale[p], x_scale), result[p]);
            }
        }
    }
    store(&results, sums);
}

/// Adds the sums of the `ROWS` activation rows from `row` against two 4-bit panels over the
/// blocks `range` to `sums`.
pub(super) fn tile_nibbles(
    left: &NibblePanel,
    right: &NibblePanel,
    acts: &Activations,
    row: usize,
    range: Range<usize>,
    sums: &mut Sums,
) {
    let blocks = acts.in_dim / BLOCK;
    left.check(acts.in_dim);
    right.check(acts.in_dim);
    acts.check_rows(row, ROWS);
    assert!(range.end <= blocks, "blocks {range:?} of {blocks}");
    assert!(available(), "the VNNI kernel needs AVX-512 F, BW and VNNI");
    match (&left.scales, &right.scales) {
        (PanelScales::Q4K { .. }, PanelScales::Q4K { .. }) => {
            let per = SUPER / BLOCK;
            assert!(range.start.is_multiple_of(per) && range.end.is_multiple_of(per));
            // SAFETY: as for `tile_q8_0`: features and every slice length checked above
            // (`check` covers the super-block scales, `check_rows` the block totals), whole
            // aligned lines read, and the range holds whole super-blocks.
            unsafe { tile_q4_k_vnni([left, right], acts, row, blocks, range, sums) }
        }
        // SAFETY: as above.
        _ => unsafe { tile_nibbles_vnni(left, right, acts, row, blocks, range, sums) },
    }
}

/// The integer sums of block `b` of `ROWS` activation rows from `x` (`in_dim` apart) against
/// two 4-bit panels: per line, the low nibbles times 4 inputs and the high nibbles times the
/// next 4.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn nibble_dots(
    panels: [&NibblePanel; 2],
    x: *const u8,
    in_dim: usize,
    b: usize,
) -> [[__m512i; 2]; ROWS] {
    let low_nibbles = _mm512_set1_epi8(0x0F);
    let mut dots = [[_mm512_setzero_si512(); 2]; ROWS];
    for line in 0..nibbles::LINES_PER_BLOCK {
        let at = b * nibbles::LINES_PER_BLOCK + line;
        let packed = panels.map(|p| _mm512_load_si512(p.weights.as_ptr().add(at).cast()));
        let low = packed.map(|w| _mm512_and_si512(w, low_nibbles));
        let high = packed.map(|w| _mm512_and_si512(_mm512_srli_epi16(w, 4), low_nibbles));
        for (r, dot) in dots.iter_mut().enumerate() {
            let four = x.add(r * in_dim + b * BLOCK + line * 8).cast::<i32>();
            let a = _mm512_set1_epi32(four.read_unaligned());
            dot[0] = _mm512_dpbusd_epi32(dot[0], low[0], a);
            dot[1] = _mm512_dpbusd_epi32(dot[1], low[1], a);
            let a = _mm512_set1_epi32(four.add(1).read_unaligned());
            dot[0] = _mm512_dpbusd_epi32(dot[0], high[0], a);
            dot[1] = _mm512_dpbusd_epi32(dot[1], high[1], a);
        }
    }
    dots
}

/// The Q4_K tile: per super-block, each sub-block's integer sums times its 6-bit scale are
/// added as integers (`vpmulld`), and its 6-bit mins times the activations' block totals
/// (`vpdpwssd`, two sub-blocks per instruction); both become f32 once per super-block, scaled
/// by `d` and `dmin` × the activations' scale, which the super-block's 8 blocks share
/// ([`Encoding::SignedPer256`](super::activations::Encoding)). The running results stay in
/// `sums`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_q4_k_vnni(
    panels: [&NibblePanel; 2],
    acts: &Activations,
    row: usize,
    blocks: usize,
    range: Range<usize>,
    sums: &mut Sums,
) {
    let scales = panels.map(|p| match p.scales {
        PanelScales::Q4K {
            d,
            dmin,
            scales,
            mins,
        } => (d.as_ptr(), dmin.as_ptr(), scales.as_ptr(), mins.as_ptr()),
        PanelScales::Q4_0 { .. } => unreachable!("Q4_K panels"),
    });
    let widen = |bytes: *const u8| _mm512_cvtepu8_epi32(_mm_loadu_si128(bytes.cast()));
    let x = acts.bytes.as_ptr().add(row * acts.in_dim);
    let x_scales = acts.scales.as_ptr().add(row * blocks);
    let x_totals = acts.totals.as_ptr().add(row * blocks);
    let per = SUPER / BLOCK;
    for first in range.step_by(per) {
        // |Σ over 8 blocks of scale × dot| ≤ 8 · 63 · (32 · 15 · 127) < 2³¹.
        let mut dots: [[__m512i; 2]; ROWS] = [[_mm512_setzero_si512(); 2]; ROWS];
        for b in first..first + per {
            let block = nibble_dots(panels, x, acts.in_dim, b);
            let scale = scales.map(|(_, _, s, _)| widen(s.add(b * PANEL)));
            for (sum, dot) in dots.iter_mut().zip(&block) {
                for p in 0..2 {
                    sum[p] = _mm512_add_epi32(sum[p], _mm512_mullo_epi32(dot[p], scale[p]));
                }
            }
        }
        // Two blocks' mins per 32-bit lane (low and high half) against two block totals.
        let mut mins: [[__m512i; 2]; ROWS] = [[_mm512_setzero_si512(); 2]; ROWS];
        for b in (first..first + per).step_by(2) {
            let pair = scales.map(|(_, _, _, m)| {
                let next = _mm512_slli_epi32(widen(m.add((b + 1) * PANEL)), 16);
                _mm512_or_si512(widen(m.add(b * PANEL)), next)
            });
            for (r, min) in mins.iter_mut().enumerate() {
                let totals = x_totals.add(r * blocks + b).cast::<i32>().read_unaligned();
                let totals = _mm512_set1_epi32(totals);
                min[0] = _mm512_dpwssd_epi32(min[0], pair[0], totals);
                min[1] = _mm512_dpwssd_epi32(min[1], pair[1], totals);
            }
        }
        let s = first / per * PANEL;
        let d = scales.map(|(d, _, _, _)| _mm512_loadu_ps(d.add(s)));
        let dmin = scales.map(|(_, m, _, _)| _mm512_loadu_ps(m.add(s)));
        for (r, (dot, min)) in dots.iter().zip(&mins).enumerate() {
            let x_scale = _mm512_set1_ps(*x_scales.add(r * blocks + first));
            for p in 0..2 {
                let out = sums[r].as_mut_ptr().add(p * PANEL);
                let exact = _mm512_cvtepi32_ps(dot[p]);
                let mut result =
                    _mm512_fmadd_ps(exact, _mm512_mul_ps(d[p], x_scale), _mm512_loadu_ps(out));
                let min_term = _mm512_cvtepi32_ps(min[p]);
                result = _mm512_fnmadd_ps(min_term, _mm512_mul_ps(dmin[p], x_scale), result);
                _mm512_storeu_ps(out, result);
            }
        }
    }
}

/// Block `b`'s weight scales and mins of a panel's 16 rows.
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn block_scales(scales: &PanelScales, b: usize) -> (__m512, __m512) {
    let widen =
        |bytes: *const u8| _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(bytes.cast())));
    match *scales {
        PanelScales::Q4K {
            d,
            dmin,
            scales,
            mins,
        } => {
            let s = b * BLOCK / SUPER * PANEL;
            (
                _mm512_mul_ps(
                    _mm512_loadu_ps(d.as_ptr().add(s)),
                    widen(scales.as_ptr().add(b * PANEL)),
                ),
                _mm512_mul_ps(
                    _mm512_loadu_ps(dmin.as_ptr().add(s)),
                    widen(mins.as_ptr().add(b * PANEL)),
                ),
            )
        }
        PanelScales::Q4_0 { d } => {
            let scale = _mm512_cvtph_ps(_mm256_loadu_si256(d.as_ptr().add(b * PANEL).cast()));
            (scale, _mm512_mul_ps(scale, _mm512_set1_ps(8.0)))
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_nibbles_vnni(
    left: &NibblePanel,
    right: &NibblePanel,
    acts: &Activations,
    row: usize,
    blocks: usize,
    range: Range<usize>,
    sums: &mut Sums,
) {
    let panels = [left, right];
    let x = acts.bytes.as_ptr().add(row * acts.in_dim);
    let x_scales = acts.scales.as_ptr().add(row * blocks);
    let x_totals = acts.totals.as_ptr().add(row * blocks);
    let mut results: [[__m512; 2]; ROWS] = load(sums);
    for b in range {
        let dots = nibble_dots(panels, x, acts.in_dim, b);
        let (left_scale, left_min) = block_scales(&left.scales, b);
        let (right_scale, right_min) = block_scales(&right.scales, b);
        let (scale, min) = ([left_scale, right_scale], [left_min, right_min]);
        for (r, (result, dot)) in results.iter_mut().zip(&dots).enumerate() {
            let x_scale = _mm512_set1_ps(*x_scales.add(r * blocks + b));
            // d × Σ q, the min term's activation sum.
            let at = r * blocks + b;
            let x_sum = _mm512_set1_ps(*x_scales.add(at) * f32::from(*x_totals.add(at)));
            for p in 0..2 {
                let exact = _mm512_cvtepi32_ps(dot[p]);
                result[p] = _mm512_fmadd_ps(exact, _mm512_mul_ps(scale[p], x_scale), result[p]);
                result[p] = _mm512_fnmadd_ps(min[p], x_sum, result[p]);
            }
        }
    }
    store(&results, sums);
}

/// [`super::activations`]' quantizer for one row, `group` values per scale: `max |x|` by
/// vector max, `round(x × 127 / max)` by `vcvtps2dq` (ties to even), bytes by `vpmovdb`.
pub(super) fn quantize_row(x: &[f32], row: Row, shift: i32, group: usize) {
    let blocks = x.len() / BLOCK;
    assert!(group.is_multiple_of(BLOCK) && x.len().is_multiple_of(group));
    assert!(row.bytes.len() >= blocks * BLOCK);
    assert!(row.scales.len() >= blocks && row.totals.len() >= blocks);
    assert!(available(), "the VNNI kernel needs AVX-512 F, BW and VNNI");
    // SAFETY: the CPU has AVX-512 F and BW (asserted), and the loops stay inside the
    // lengths asserted above.
    unsafe { quantize_row_avx512(x, row, shift, group) }
}

#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_row_avx512(x: &[f32], row: Row, shift: i32, group: usize) {
    let shift = _mm512_set1_epi32(shift);
    let per = group / BLOCK;
    for g in 0..x.len() / group {
        let first = x.as_ptr().add(g * group);
        let mut max = _mm512_setzero_ps();
        for v in 0..group / PANEL {
            max = _mm512_max_ps(max, _mm512_abs_ps(_mm512_loadu_ps(first.add(v * PANEL))));
        }
        let max = _mm512_reduce_max_ps(max);
        let inv = _mm512_set1_ps(if max > 0.0 { 127.0 / max } else { 0.0 });
        let d = max / 127.0;
        for b in g * per..(g + 1) * per {
            let mut total = _mm512_setzero_si512();
            for h in 0..BLOCK / PANEL {
                let half = _mm512_loadu_ps(x.as_ptr().add(b * BLOCK + h * PANEL));
                let q = _mm512_cvtps_epi32(_mm512_mul_ps(half, inv));
                total = _mm512_add_epi32(total, q);
                let out = row.bytes.as_mut_ptr().add(b * BLOCK + h * PANEL);
                _mm_storeu_si128(out.cast(), _mm512_cvtepi32_epi8(_mm512_add_epi32(q, shift)));
            }
            let total = _mm512_reduce_add_epi32(total);
            *row.scales.get_unchecked_mut(b) = d;
            // |total| ≤ 32 × 127.
            *row.totals.get_unchecked_mut(b) = total as i16;
        }
    }
}
