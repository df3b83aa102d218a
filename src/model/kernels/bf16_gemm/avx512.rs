//! The bf16 tile with AVX-512 BF16 intrinsics: `ROWS` tokens × 2 panels of 16 outputs over a
//! run of input pairs (the running results start from and return to memory); per pair, one
//! broadcast per token and one `vdpbf16ps` per token and panel.
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

/// Adds the products of `ROWS` token rows (`x`: each row's input pairs, `ROWS × pairs` words)
/// with two panels (`pairs` lines each) over the input pairs `range` to `sums`.
pub(super) fn tile(panels: [&[Pairs]; 2], x: &[u32], range: Range<usize>, sums: &mut Sums) {
    let pairs = panels[0].len();
    assert!(panels[1].len() == pairs && x.len() == ROWS * pairs);
    assert!(range.end <= pairs, "pairs {range:?} of {pairs}");
    assert!(available(), "the bf16 tile needs AVX-512 F and BF16");
    // SAFETY: the CPU has the features (checked above); every index the kernel forms is below
    // `range.end <= pairs`, inside each panel and each row of `x` (lengths checked above); the
    // weight loads are aligned: `Pairs` is 64-byte aligned.
    unsafe { tile_dpbf16(panels, x, pairs, range, sums) }
}

#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile_dpbf16(
    panels: [&[Pairs]; 2],
    x: &[u32],
    pairs: usize,
    range: Range<usize>,
    sums: &mut Sums,
) {
    let weights = [panels[0].as_ptr(), panels[1].as_ptr()];
    let x = x.as_ptr();
    let mut results = load(sums);
    for j in range {
        let w: [__m512bh; 2] = [
            bh(_mm512_load_si512(weights[0].add(j).cast())),
            bh(_mm512_load_si512(weights[1].add(j).cast())),
        ];
        for (r, result) in results.iter_mut().enumerate() {
            let a = bh(_mm512_set1_epi32(*x.add(r * pairs + j) as i32));
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
