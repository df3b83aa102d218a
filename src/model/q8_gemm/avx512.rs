//! The register tile of the Q8_0 GEMM with AVX-512 VNNI intrinsics: `ROWS` tokens × 2 panels
//! of 16 outputs. Per 32-wide block, 8 steps of `vpdpbusd` add 4 products to each of the
//! `ROWS × 2` integer sums; the block's sums then become f32, scaled by weight scale ×
//! activation scale, and join the running results. This is the crate's one use of SIMD
//! intrinsics, so it allows `unsafe` here and nowhere else but the mmap.
#![allow(unsafe_code)]

use std::arch::x86_64::{
    __m512, __m512i, _mm512_cvtepi32_ps, _mm512_dpbusd_epi32, _mm512_fmadd_ps, _mm512_load_si512,
    _mm512_loadu_ps, _mm512_loadu_si512, _mm512_mul_ps, _mm512_set1_epi32, _mm512_set1_ps,
    _mm512_setzero_ps, _mm512_setzero_si512, _mm512_storeu_ps, _mm512_sub_epi32,
};

use super::{Activations, Panel, BLOCK, LINES_PER_BLOCK, PANEL, ROWS};

/// Whether this CPU runs the kernel (checked once per call of `PackedQ8::from_qtensor`).
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
}

/// Sums of the `ROWS` activation rows from `row` against the `left` and `right` panels.
pub(super) fn tile(
    left: &Panel,
    right: &Panel,
    acts: &Activations,
    row: usize,
    sums: &mut [[f32; 2 * PANEL]; ROWS],
) {
    let blocks = acts.in_dim / BLOCK;
    // Everything the kernel reads through raw pointers is checked here, once.
    for panel in [left, right] {
        assert!(panel.weights.len() >= blocks * LINES_PER_BLOCK);
        assert!(panel.scales.len() >= blocks * PANEL && panel.offsets.len() >= blocks * PANEL);
    }
    assert!(acts.bytes.len() >= (row + ROWS) * acts.in_dim);
    assert!(acts.scales.len() >= (row + ROWS) * blocks);
    assert!(available(), "the VNNI kernel needs AVX-512 F, BW and VNNI");
    // SAFETY: the CPU has the features (asserted above; `PackedQ8` is only built where it
    // does), every pointer the kernel forms stays inside the slices whose lengths were
    // asserted above, and the weight loads are aligned: `Line` is 64-byte aligned and the
    // kernel reads whole lines.
    unsafe { tile_vnni(left, right, acts, row, blocks, sums) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_vnni(
    left: &Panel,
    right: &Panel,
    acts: &Activations,
    row: usize,
    blocks: usize,
    sums: &mut [[f32; 2 * PANEL]; ROWS],
) {
    let weights = [
        left.weights.as_ptr().cast::<i8>(),
        right.weights.as_ptr().cast::<i8>(),
    ];
    let scales = [left.scales.as_ptr(), right.scales.as_ptr()];
    let offsets = [left.offsets.as_ptr(), right.offsets.as_ptr()];
    let x = acts.bytes.as_ptr().add(row * acts.in_dim);
    let x_scales = acts.scales.as_ptr().add(row * blocks);
    let mut results: [[__m512; 2]; ROWS] = [[_mm512_setzero_ps(); 2]; ROWS];
    for b in 0..blocks {
        let mut dots: [[__m512i; 2]; ROWS] = [[_mm512_setzero_si512(); 2]; ROWS];
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
        let meta = b * PANEL;
        let offset = [
            _mm512_loadu_si512(offsets[0].add(meta).cast()),
            _mm512_loadu_si512(offsets[1].add(meta).cast()),
        ];
        let scale = [
            _mm512_loadu_ps(scales[0].add(meta)),
            _mm512_loadu_ps(scales[1].add(meta)),
        ];
        for (r, (result, dot)) in results.iter_mut().zip(&dots).enumerate() {
            let x_scale = _mm512_set1_ps(*x_scales.add(r * blocks + b));
            for p in 0..2 {
                let exact = _mm512_cvtepi32_ps(_mm512_sub_epi32(dot[p], offset[p]));
                result[p] = _mm512_fmadd_ps(exact, _mm512_mul_ps(scale[p], x_scale), result[p]);
            }
        }
    }
    for (sum, result) in sums.iter_mut().zip(&results) {
        _mm512_storeu_ps(sum.as_mut_ptr(), result[0]);
        _mm512_storeu_ps(sum.as_mut_ptr().add(PANEL), result[1]);
    }
}
