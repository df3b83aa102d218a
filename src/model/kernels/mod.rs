//! CPU kernels candle lacks or runs slowly: int8 GEMM tiles for quantized weights (AVX2,
//! AVX-512 VNNI or AMX, chosen at run time), a dense GEMM tile for bf16 and f32 weights (AVX-512, BF16 for bf16),
//! and fused attention, RMS norms and GeGLU built on vectorizable `exp`/`tanh` approximations.

pub(crate) mod approx;
pub(crate) mod attention;
pub mod dense_gemm;
pub(crate) mod float;
pub(crate) mod geglu;
pub(crate) mod heads;
pub mod int8_gemm;
pub(crate) mod norm;
pub(crate) mod panels;
pub mod peak;
pub(crate) mod rows;

/// How far `SHIELDGATE_KERNELS` caps the kernels this CPU would pick: `vnni` (no AMX), `avx2`
/// (no AVX-512 kernel), `candle` (none of ours). Read at each load, so a test or bench can
/// change it between models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cap {
    /// No cap: the fastest kernel the CPU runs.
    None,
    Vnni,
    Avx2,
    Candle,
}

impl Cap {
    /// The cap in the environment.
    pub(crate) fn from_env() -> Self {
        Self::parse(std::env::var("SHIELDGATE_KERNELS").ok().as_deref())
    }

    /// The cap a value names; an unknown value is logged and ignored.
    fn parse(value: Option<&str>) -> Self {
        match value {
            None | Some("") => Self::None,
            Some("vnni") => Self::Vnni,
            Some("avx2") => Self::Avx2,
            Some("candle") => Self::Candle,
            Some(other) => {
                // Once per process: the cap is read for every matrix loaded.
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| {
                    tracing::warn!(
                    value = other,
                    "SHIELDGATE_KERNELS takes vnni, avx2 or candle; using the CPU's fastest kernels"
                    )
                });
                Self::None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Cap;

    #[test]
    fn the_kernel_cap_reads_its_three_values_and_ignores_others() {
        for (value, cap) in [
            (Some("vnni"), Cap::Vnni),
            (Some("avx2"), Cap::Avx2),
            (Some("candle"), Cap::Candle),
            (Some("fast"), Cap::None),
            (Some(""), Cap::None),
            (None, Cap::None),
        ] {
            assert_eq!(Cap::parse(value), cap, "{value:?}");
        }
    }
}
