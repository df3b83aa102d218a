//! The register tiles of the int8 GEMM for CPUs with AVX2 but without AVX-512 VNNI (AMD Zen 2/3,
//! older Intel). They read the same panels as the VNNI tile, each 64-byte line as two halves of
//! 8 output rows, and emulate `vpdpbusd`: `vpmaddubsw` multiplies unsigned by signed bytes into
//! sums of pairs (16-bit), `vpmaddwd` by ones adds those pairs into the 4-product sums (32-bit).
//! A 16-bit pair sum saturates above 32767, so Q8_0 takes signed activations and the sign
//! trick (`|w|` times `x` with `w`'s sign, both at most 128 in magnitude), and the 4-bit types,
//! whose pair sums stay below 3810, add a whole block's pairs in 16 bits before widening once.
//! Per block the sums become f32, scaled by weight scale × activation scale (less Q4_0's min
//! term); Q4_K's add as integers over a super-block first, as in the VNNI tile.
#![allow(unsafe_code)]

use std::arch::x86_64::{
    __m256, __m256i, _mm256_abs_epi8, _mm256_add_epi16, _mm256_add_epi32, _mm256_and_si256,
    _mm256_cvtepi32_ps, _mm256_cvtepu8_epi32, _mm256_cvtph_ps, _mm256_fmadd_ps, _mm256_fnmadd_ps,
    _mm256_load_si256, _mm256_loadu_ps, _mm256_madd_epi16, _mm256_maddubs_epi16, _mm256_mul_ps,
    _mm256_or_si256, _mm256_set1_epi16, _mm256_set1_epi32, _mm256_set1_epi8, _mm256_set1_ps,
    _mm256_setzero_ps, _mm256_setzero_si256, _mm256_sign_epi8, _mm256_slli_epi32,
    _mm256_srli_epi16, _mm256_storeu_ps, _mm_loadl_epi64, _mm_loadu_si128,
};

use half::f16;

use super::activations::Activations;
use super::nibbles::{self, NibblePanel, PanelScales, SUPER};
use super::q8_0::Q8_0Panel;
use super::{Sums, BLOCK, PANEL, ROWS};

/// Output rows in one half of a line: one 256-bit register of i32 sums.
const HALF: usize = PANEL / 2;

/// Whether this CPU runs the tiles (AVX2 with FMA, and F16C for Q4_0's f16 scales).
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// A panel the tile reads in halves of 8 rows.
pub(super) trait Halves {
    /// Checks that the panel covers `in_dim` inputs (the tile reads it through raw pointers).
    fn check_inputs(&self, in_dim: usize);

    /// `R` activation rows' sums from `row` against the 8 rows of `half` of the panel.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C, and the panel and the activation rows `row..row + R`
    /// passed their checks.
    unsafe fn half_sums<const R: usize>(
        &self,
        half: usize,
        acts: &Activations,
        row: usize,
    ) -> [__m256; R];
}

impl Halves for Q8_0Panel<'_> {
    fn check_inputs(&self, in_dim: usize) {
        self.check(in_dim / BLOCK);
    }

    unsafe fn half_sums<const R: usize>(
        &self,
        half: usize,
        acts: &Activations,
        row: usize,
    ) -> [__m256; R] {
        half_q8_0::<R>(self, half, acts, row)
    }
}

impl Halves for NibblePanel<'_> {
    fn check_inputs(&self, in_dim: usize) {
        self.check(in_dim);
    }

    unsafe fn half_sums<const R: usize>(
        &self,
        half: usize,
        acts: &Activations,
        row: usize,
    ) -> [__m256; R] {
        match self.scales {
            PanelScales::Q4K { .. } => half_q4_k::<R>(self, half, acts, row),
            PanelScales::Q4_0 { d } => half_q4_0::<R>(self, d, half, acts, row),
        }
    }
}

/// Sums of the activation rows `row..row + live` (signed encoding; `live` at most `ROWS`)
/// against two panels (Q8_0 or 4-bit), in the first `live` rows of `sums`: the padding rows of
/// a last, partial tile are skipped, so a single token costs a sixth of a full tile.
pub(super) fn tile<P: Halves>(
    panels: [&P; 2],
    acts: &Activations,
    row: usize,
    live: usize,
    sums: &mut Sums,
) {
    for panel in panels {
        panel.check_inputs(acts.in_dim);
    }
    assert!(
        (1..=ROWS).contains(&live),
        "a tile holds 1 to {ROWS} rows, not {live}"
    );
    acts.check_rows(row, live);
    assert!(available(), "the AVX2 tile needs AVX2, FMA and F16C");
    for (p, panel) in panels.into_iter().enumerate() {
        for half in 0..2 {
            let first = p * PANEL + half * HALF;
            // SAFETY: the CPU has the features, and the panels and the `live` activation rows
            // that the arm taken reads were checked above; weight loads are aligned (`Line`
            // is 64-byte aligned and a half line starts 0 or 32 bytes into one); `store`
            // writes 8 floats at `first`, inside each row's 32.
            unsafe {
                match live {
                    1 => store(&panel.half_sums::<1>(half, acts, row), sums, first),
                    2 => store(&panel.half_sums::<2>(half, acts, row), sums, first),
                    3 => store(&panel.half_sums::<3>(half, acts, row), sums, first),
                    4 => store(&panel.half_sums::<4>(half, acts, row), sums, first),
                    5 => store(&panel.half_sums::<5>(half, acts, row), sums, first),
                    _ => store(&panel.half_sums::<ROWS>(half, acts, row), sums, first),
                }
            }
        }
    }
}

/// `R` rows' sums against the 8 rows of `half` of a Q8_0 panel.
#[target_feature(enable = "avx2,fma")]
unsafe fn half_q8_0<const R: usize>(
    panel: &Q8_0Panel,
    half: usize,
    acts: &Activations,
    row: usize,
) -> [__m256; R] {
    let blocks = acts.in_dim / BLOCK;
    let ones = _mm256_set1_epi16(1);
    let weights = panel.weights.as_ptr().cast::<u8>();
    let x = acts.bytes.as_ptr().add(row * acts.in_dim);
    let x_scales = acts.scales.as_ptr().add(row * blocks);
    let mut results = [_mm256_setzero_ps(); R];
    for b in 0..blocks {
        let mut dots = [_mm256_setzero_si256(); R];
        for step in 0..BLOCK / 4 {
            let at = (b * BLOCK / 4 + step) * PANEL * 4 + half * HALF * 4;
            let w = _mm256_load_si256(weights.add(at).cast());
            let magnitude = _mm256_abs_epi8(w);
            for (r, dot) in dots.iter_mut().enumerate() {
                let four = x
                    .add(r * acts.in_dim + b * BLOCK + step * 4)
                    .cast::<i32>()
                    .read_unaligned();
                let signed = _mm256_sign_epi8(_mm256_set1_epi32(four), w);
                let pairs = _mm256_maddubs_epi16(magnitude, signed);
                *dot = _mm256_add_epi32(*dot, _mm256_madd_epi16(pairs, ones));
            }
        }
        let scale = _mm256_loadu_ps(panel.scales.as_ptr().add(b * PANEL + half * HALF));
        for (r, (result, dot)) in results.iter_mut().zip(&dots).enumerate() {
            let x_scale = _mm256_set1_ps(*x_scales.add(r * blocks + b));
            *result = _mm256_fmadd_ps(
                _mm256_cvtepi32_ps(*dot),
                _mm256_mul_ps(scale, x_scale),
                *result,
            );
        }
    }
    results
}

/// `R` rows' sums against the 8 rows of `half` of a Q4_0 panel: per block, its f16 scale `d`
/// and min `8d`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn half_q4_0<const R: usize>(
    panel: &NibblePanel,
    d: &[f16],
    half: usize,
    acts: &Activations,
    row: usize,
) -> [__m256; R] {
    let blocks = acts.in_dim / BLOCK;
    let ones = _mm256_set1_epi16(1);
    let x = acts.bytes.as_ptr().add(row * acts.in_dim);
    let x_scales = acts.scales.as_ptr().add(row * blocks);
    let x_totals = acts.totals.as_ptr().add(row * blocks);
    let mut results = [_mm256_setzero_ps(); R];
    for b in 0..blocks {
        let pairs = nibble_pairs::<R>(panel, x, acts.in_dim, b, half);
        let at = b * PANEL + half * HALF;
        let scale = _mm256_cvtph_ps(_mm_loadu_si128(d.as_ptr().add(at).cast()));
        let min = _mm256_mul_ps(scale, _mm256_set1_ps(8.0));
        for (r, (result, sum)) in results.iter_mut().zip(&pairs).enumerate() {
            let x_scale = _mm256_set1_ps(*x_scales.add(r * blocks + b));
            // d × Σ q, the min term's activation sum.
            let at = r * blocks + b;
            let x_sum = _mm256_set1_ps(*x_scales.add(at) * f32::from(*x_totals.add(at)));
            let exact = _mm256_cvtepi32_ps(_mm256_madd_epi16(*sum, ones));
            *result = _mm256_fmadd_ps(exact, _mm256_mul_ps(scale, x_scale), *result);
            *result = _mm256_fnmadd_ps(min, x_sum, *result);
        }
    }
    results
}

/// Block `b`'s 16-bit pair sums of `R` activation rows from `x` (`in_dim` apart) against the
/// 8 rows of `half` of a 4-bit panel. A block's 16 products per row and pair lane stay below
/// 16 · 15 · 127 < 32768.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn nibble_pairs<const R: usize>(
    panel: &NibblePanel,
    x: *const u8,
    in_dim: usize,
    b: usize,
    half: usize,
) -> [__m256i; R] {
    let low_nibbles = _mm256_set1_epi8(0x0F);
    let weights = panel.weights.as_ptr().cast::<u8>();
    let mut pairs = [_mm256_setzero_si256(); R];
    for line in 0..nibbles::LINES_PER_BLOCK {
        let at = (b * nibbles::LINES_PER_BLOCK + line) * PANEL * 4 + half * HALF * 4;
        let packed = _mm256_load_si256(weights.add(at).cast());
        let low = _mm256_and_si256(packed, low_nibbles);
        let high = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low_nibbles);
        for (r, sum) in pairs.iter_mut().enumerate() {
            let first = x.add(r * in_dim + b * BLOCK + line * 8).cast::<i32>();
            let a = _mm256_set1_epi32(first.read_unaligned());
            *sum = _mm256_add_epi16(*sum, _mm256_maddubs_epi16(low, a));
            let a = _mm256_set1_epi32(first.add(1).read_unaligned());
            *sum = _mm256_add_epi16(*sum, _mm256_maddubs_epi16(high, a));
        }
    }
    pairs
}

/// `R` rows' sums against the 8 rows of `half` of a Q4_K panel, as the VNNI Q4_K tile computes
/// them: per super-block, each sub-block's pair sums times its 6-bit scale (`vpmaddwd`, which
/// also widens them) and the mins times the activations' block totals add as integers, and
/// become f32 once per super-block.
#[target_feature(enable = "avx2,fma")]
unsafe fn half_q4_k<const R: usize>(
    panel: &NibblePanel,
    half: usize,
    acts: &Activations,
    row: usize,
) -> [__m256; R] {
    let PanelScales::Q4K {
        d,
        dmin,
        scales,
        mins,
    } = panel.scales
    else {
        unreachable!("a Q4_K panel")
    };
    let blocks = acts.in_dim / BLOCK;
    let first_row = half * HALF;
    let widen =
        |bytes: *const u8| _mm256_cvtepu8_epi32(_mm_loadl_epi64(bytes.add(first_row).cast()));
    // Each 32-bit lane holds one output's value twice, as two 16-bit halves.
    let twice = |bytes: *const u8| {
        let wide = widen(bytes);
        _mm256_or_si256(wide, _mm256_slli_epi32(wide, 16))
    };
    let x = acts.bytes.as_ptr().add(row * acts.in_dim);
    let x_scales = acts.scales.as_ptr().add(row * blocks);
    let x_totals = acts.totals.as_ptr().add(row * blocks);
    let per = SUPER / BLOCK;
    let mut results = [_mm256_setzero_ps(); R];
    for first in (0..blocks).step_by(per) {
        // |Σ over 8 blocks of scale × dot| ≤ 8 · 63 · (32 · 15 · 127) < 2³¹.
        let mut dots = [_mm256_setzero_si256(); R];
        for b in first..first + per {
            let pairs = nibble_pairs::<R>(panel, x, acts.in_dim, b, half);
            let scale = twice(scales.as_ptr().add(b * PANEL));
            for (dot, pair) in dots.iter_mut().zip(&pairs) {
                *dot = _mm256_add_epi32(*dot, _mm256_madd_epi16(*pair, scale));
            }
        }
        // Two blocks' mins per 32-bit lane (low and high half) against two block totals.
        let mut min_sums = [_mm256_setzero_si256(); R];
        for b in (first..first + per).step_by(2) {
            let next = _mm256_slli_epi32(widen(mins.as_ptr().add((b + 1) * PANEL)), 16);
            let pair = _mm256_or_si256(widen(mins.as_ptr().add(b * PANEL)), next);
            for (r, sum) in min_sums.iter_mut().enumerate() {
                let totals = x_totals.add(r * blocks + b).cast::<i32>().read_unaligned();
                *sum = _mm256_add_epi32(*sum, _mm256_madd_epi16(pair, _mm256_set1_epi32(totals)));
            }
        }
        let s = first / per * PANEL + first_row;
        let d = _mm256_loadu_ps(d.as_ptr().add(s));
        let dmin = _mm256_loadu_ps(dmin.as_ptr().add(s));
        for (r, result) in results.iter_mut().enumerate() {
            let x_scale = _mm256_set1_ps(*x_scales.add(r * blocks + first));
            let exact = _mm256_cvtepi32_ps(dots[r]);
            *result = _mm256_fmadd_ps(exact, _mm256_mul_ps(d, x_scale), *result);
            let min_term = _mm256_cvtepi32_ps(min_sums[r]);
            *result = _mm256_fnmadd_ps(min_term, _mm256_mul_ps(dmin, x_scale), *result);
        }
    }
    results
}

/// Writes each row's 8 sums at `first` of its row of `sums`.
#[target_feature(enable = "avx")]
unsafe fn store<const R: usize>(results: &[__m256; R], sums: &mut Sums, first: usize) {
    for (sum, result) in sums.iter_mut().zip(results) {
        _mm256_storeu_ps(sum[first..first + HALF].as_mut_ptr(), *result);
    }
}
