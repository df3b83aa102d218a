//! CPU kernels candle lacks or runs slowly: int8 GEMM tiles for quantized weights (AVX2,
//! AVX-512 VNNI or AMX, chosen at run time), and fused soft-capped softmax and GeGLU built on
//! vectorizable `exp`/`tanh` approximations.

pub(crate) mod approx;
pub(crate) mod geglu;
pub mod int8_gemm;
pub mod peak;
pub(crate) mod softmax;
