//! CPU kernels candle lacks or runs slowly: int8 GEMM tiles for quantized weights (AVX2,
//! AVX-512 VNNI or AMX, chosen at run time), a bf16 GEMM tile for bf16 weights (AVX-512 BF16),
//! and fused soft-capped softmax and GeGLU built on vectorizable `exp`/`tanh` approximations.

pub(crate) mod approx;
pub mod bf16_gemm;
pub(crate) mod geglu;
pub mod int8_gemm;
pub(crate) mod panels;
pub mod peak;
pub(crate) mod softmax;
