//! A row tile's running results moved between memory and AVX-512 registers, at the start and
//! end of each run of steps.
#![allow(unsafe_code)]

use std::arch::x86_64::{__m512, _mm512_loadu_ps, _mm512_storeu_ps};

use super::{Sums, PANEL, ROWS};

/// The first `R` rows of the tile's sums as `R` × 2 registers.
#[target_feature(enable = "avx512f")]
pub(crate) fn load<const R: usize>(sums: &Sums) -> [[__m512; 2]; R] {
    const { assert!(R <= ROWS) };
    // SAFETY: each row of `sums` holds 2 × PANEL floats: both loads stay inside it.
    std::array::from_fn(|r| unsafe {
        [
            _mm512_loadu_ps(sums[r].as_ptr()),
            _mm512_loadu_ps(sums[r].as_ptr().add(PANEL)),
        ]
    })
}

/// Writes the registers back to the first `R` rows of the tile's sums.
#[target_feature(enable = "avx512f")]
pub(crate) fn store<const R: usize>(results: &[[__m512; 2]; R], sums: &mut Sums) {
    for (sum, result) in sums.iter_mut().zip(results) {
        // SAFETY: as for `load`.
        unsafe {
            _mm512_storeu_ps(sum.as_mut_ptr(), result[0]);
            _mm512_storeu_ps(sum.as_mut_ptr().add(PANEL), result[1]);
        }
    }
}
