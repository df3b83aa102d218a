//! The dense tiles with AVX-512 intrinsics: `R ≤ ROWS` tokens × 2 panels of 16 outputs over a
//! run of steps (the running results start from and return to memory); per step, one
//! broadcast per token and one multiply-add per token and panel: `vdpbf16ps` for bf16 (a step
//! is an input pair), `vfmadd231ps` for f32 (a step is one input).
#![allow(unsafe_code)]

use std::arch::x86_64::{
    __m256bh, __m256i, __m512, __m512bh, __m512i, _mm256_storeu_si256, _mm512_castsi512_ps,
    _mm512_cvtneps_pbh, _mm512_dpbf16_ps, _mm512_fmadd_ps, _mm512_load_si512, _mm512_loadu_ps,
    _mm512_set1_epi32,
};
use std::ops::Range;

use half::bf16;

use super::{Line, Precision};
use crate::model::kernels::panels::registers::{load, store};
use crate::model::kernels::panels::{Sums, PANEL, ROWS};

/// Whether this CPU runs the tile of `precision`.
pub(super) fn available(precision: Precision) -> bool {
    is_x86_feature_detected!("avx512f")
        && match precision {
            Precision::Bf16 => is_x86_feature_detected!("avx512bf16"),
            Precision::F32 => true,
        }
}

/// One tile's kernel: two panels, the rows' 32-bit steps (`steps` apart), a run of steps, sums.
type Kernel = unsafe fn([&[Line]; 2], *const u32, usize, Range<usize>, &mut Sums);

/// Adds the products of the token rows `x` (1 to `ROWS` rows of `steps` 32-bit steps each: a
/// bf16 input pair or one f32 input, read in place) with two panels (`steps` lines each) over
/// the steps `range` to the first rows of `sums`.
pub(super) fn tile<T: Copy>(
    precision: Precision,
    panels: [&[Line]; 2],
    x: &[T],
    range: Range<usize>,
    sums: &mut Sums,
) {
    let steps = panels[0].len();
    let width = steps * 4 / size_of::<T>();
    assert!(
        size_of::<T>() * precision.per_step() == 4,
        "{precision:?} steps of this type"
    );
    assert!(panels[1].len() == steps && width > 0 && x.len().is_multiple_of(width));
    assert!(range.end <= steps, "steps {range:?} of {steps}");
    assert!(
        available(precision),
        "the {precision:?} tile needs its AVX-512 features"
    );
    let kernel = match x.len() / width {
        1 => kernel::<1>(precision),
        2 => kernel::<2>(precision),
        3 => kernel::<3>(precision),
        4 => kernel::<4>(precision),
        5 => kernel::<5>(precision),
        6 => kernel::<6>(precision),
        rows => panic!("a dense tile takes 1 to {ROWS} rows, not {rows}"),
    };
    // SAFETY: the CPU has the kernel's features (checked above); every index the kernel forms
    // is below `range.end <= steps`, inside each panel and each of the `R` rows of `x`
    // (lengths checked above and by the match); the weight loads are aligned: `Line` is
    // 64-byte aligned.
    unsafe { kernel(panels, x.as_ptr().cast(), steps, range, sums) }
}

fn kernel<const R: usize>(precision: Precision) -> Kernel {
    match precision {
        Precision::Bf16 => tile_dpbf16::<R>,
        Precision::F32 => tile_fma::<R>,
    }
}

/// The tile kernel for `R` rows with one multiply-add `$madd(sum, broadcast step, weights)`.
macro_rules! tile_kernel {
    ($name:ident, $features:literal, $madd:ident) => {
        #[target_feature(enable = $features)]
        unsafe fn $name<const R: usize>(
            panels: [&[Line]; 2],
            x: *const u32,
            steps: usize,
            range: Range<usize>,
            sums: &mut Sums,
        ) {
            let weights = [panels[0].as_ptr(), panels[1].as_ptr()];
            let mut results = load::<R>(sums);
            for j in range {
                let w = [
                    _mm512_load_si512(weights[0].add(j).cast()),
                    _mm512_load_si512(weights[1].add(j).cast()),
                ];
                for (r, result) in results.iter_mut().enumerate() {
                    let a = _mm512_set1_epi32(x.add(r * steps + j).read_unaligned() as i32);
                    result[0] = $madd(result[0], a, w[0]);
                    result[1] = $madd(result[1], a, w[1]);
                }
            }
            store(&results, sums);
        }
    };
}

tile_kernel!(tile_dpbf16, "avx512f,avx512bf16", dpbf16);
tile_kernel!(tile_fma, "avx512f", fma);

/// `sum + Σ a·w` over the 16 lanes' bf16 pairs.
#[inline]
#[target_feature(enable = "avx512f,avx512bf16")]
fn dpbf16(sum: __m512, a: __m512i, w: __m512i) -> __m512 {
    _mm512_dpbf16_ps(sum, bh(a), bh(w))
}

/// `sum + a·w` in f32.
#[inline]
#[target_feature(enable = "avx512f")]
fn fma(sum: __m512, a: __m512i, w: __m512i) -> __m512 {
    _mm512_fmadd_ps(_mm512_castsi512_ps(a), _mm512_castsi512_ps(w), sum)
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
    assert!(
        available(Precision::Bf16),
        "the bf16 tile needs AVX-512 F and BF16"
    );
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
