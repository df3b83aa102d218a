//! The bf16 tile with AVX-512 BF16 intrinsics: `ROWS` tokens × 2 panels of 16 outputs over a
//! run of input pairs (the running results start from and return to memory); per pair, one
//! broadcast per token and one `vdpbf16ps` per token and panel. A last tile of fewer tokens
//! computes only those.
#![allow(unsafe_code)]

use std::arch::x86_64::{
    __m256bh, __m256i, __m512bh, __m512i, _mm256_storeu_si256, _mm512_cvtneps_pbh,
    _mm512_dpbf16_ps, _mm512_load_si512, _mm512_loadu_ps, _mm512_set1_epi32,
};
use std::ops::Range;

use half::bf16;

use super::Pairs;
use crate::model::kernels::panels::registers::{load, store};
use crate::model::kernels::panels::{Sums, PANEL, ROWS};

/// Whether this CPU runs the tile.
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
}

/// Adds the products of the token rows `x` (1 to `ROWS` rows of `2 × pairs` bf16 values, read
/// in place as input pairs) with two panels (`pairs` lines each) over the input pairs `range`
/// to the first rows of `sums`.
pub(super) fn tile(panels: [&[Pairs]; 2], x: &[bf16], range: Range<usize>, sums: &mut Sums) {
    let pairs = panels[0].len();
    let width = 2 * pairs;
    assert!(panels[1].len() == pairs && width > 0 && x.len().is_multiple_of(width));
    assert!(range.end <= pairs, "pairs {range:?} of {pairs}");
    assert!(available(), "the bf16 tile needs AVX-512 F and BF16");
    // SAFETY: the CPU has the features (checked above); every index the kernel forms is below
    // `range.end <= pairs`, inside each panel and each of the `R` rows of `x` (lengths checked
    // above and by the match); the weight loads are aligned: `Pairs` is 64-byte aligned.
    unsafe {
        match x.len() / width {
            1 => tile_dpbf16::<1>(panels, x, pairs, range, sums),
            2 => tile_dpbf16::<2>(panels, x, pairs, range, sums),
            3 => tile_dpbf16::<3>(panels, x, pairs, range, sums),
            4 => tile_dpbf16::<4>(panels, x, pairs, range, sums),
            5 => tile_dpbf16::<5>(panels, x, pairs, range, sums),
            6 => tile_dpbf16::<6>(panels, x, pairs, range, sums),
            rows => panic!("a bf16 tile takes 1 to {ROWS} rows, not {rows}"),
        }
    }
}

#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile_dpbf16<const R: usize>(
    panels: [&[Pairs]; 2],
    x: &[bf16],
    pairs: usize,
    range: Range<usize>,
    sums: &mut Sums,
) {
    let weights = [panels[0].as_ptr(), panels[1].as_ptr()];
    // Each input pair, two bf16 values side by side, is one 32-bit word, the first value in
    // the low half: the operand layout of `vdpbf16ps`.
    let x = x.as_ptr().cast::<u32>();
    let mut results = load::<R>(sums);
    for j in range {
        let w: [__m512bh; 2] = [
            bh(_mm512_load_si512(weights[0].add(j).cast())),
            bh(_mm512_load_si512(weights[1].add(j).cast())),
        ];
        for (r, result) in results.iter_mut().enumerate() {
            let a = bh(_mm512_set1_epi32(
                x.add(r * pairs + j).read_unaligned() as i32
            ));
            result[0] = _mm512_dpbf16_ps(result[0], a, w[0]);
            result[1] = _mm512_dpbf16_ps(result[1], a, w[1]);
        }
    }
    store(&results, sums);
}

/// The same 512 bits as 32 bf16 values.
#[target_feature(enable = "avx512f")]
fn bh(v: __m512i) -> __m512bh {
    // SAFETY: both are 64-byte vectors of plain bits.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
}

/// Rounds `src` to bf16 into `dst` (to nearest, ties to even), 16 at a time.
pub(super) fn narrow(src: &[f32], dst: &mut [bf16]) {
    assert!(src.len() == dst.len() && src.len().is_multiple_of(PANEL));
    assert!(available(), "the bf16 tile needs AVX-512 F and BF16");
    // SAFETY: features checked above; both slices hold `src.len()` values, a multiple of 16.
    unsafe { narrow_cvtneps(src, dst) }
}

#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn narrow_cvtneps(src: &[f32], dst: &mut [bf16]) {
    for (s, d) in src.chunks_exact(PANEL).zip(dst.chunks_exact_mut(PANEL)) {
        let v = _mm512_cvtneps_pbh(_mm512_loadu_ps(s.as_ptr()));
        _mm256_storeu_si256(
            d.as_mut_ptr().cast(),
            std::mem::transmute::<__m256bh, __m256i>(v),
        );
    }
}
