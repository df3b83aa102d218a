//! The CPU's arithmetic ceilings, measured: microkernels that only multiply (twelve independent
//! register accumulators, no memory traffic) for each instruction sequence a GEMM kernel of the
//! crate is built on, run on every thread at once. The roofline benchmark sets each kernel's
//! achieved rate against the ceiling of the instructions it uses.
#![allow(unsafe_code)]

use std::time::{Duration, Instant};

/// The instruction sequences measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Micro {
    /// `vpdpbusd` on 512 bits (the VNNI tile): 64 u8 × s8 products into i32 per instruction.
    Vnni,
    /// `vpmaddubsw`, `vpmaddwd`, `vpaddd` on 256 bits: 32 products of unsigned by signed bytes
    /// per three instructions (the AVX2 tile's 4-bit types take no more per product).
    Avx2Int8,
    /// The same with `vpsignb` first (the AVX2 tile's Q8_0 sequence: signed by signed bytes
    /// as `|w|` times `x` with `w`'s sign): 32 products per four instructions.
    Avx2SignedInt8,
    /// `vpmaddubsw` and `vpaddw` eight times into 16-bit sums, then one `vpmaddwd` and `vpaddd`
    /// (the AVX2 tile's 4-bit sequence: a block's pair sums stay below 32768): 256 products per
    /// eighteen instructions.
    Avx2Nibble,
    /// `vdpbf16ps` on 512 bits: 32 bf16 pairs into f32 per instruction.
    Bf16,
    /// `vfmadd` on 512 bits: 16 f32 multiply-adds.
    Fma512,
    /// `vfmadd` on 256 bits: 8 f32 multiply-adds.
    Fma256,
}

/// Independent accumulators: enough to cover the latency of any of the instructions.
const ACC: usize = 12;
/// Accumulators of the AVX2 sequences: with one operand each and the two constants they fill
/// 14 of AVX2's 16 registers (12 would spill to the stack and measure the spills).
const ACC_AVX2: usize = 6;
/// Accumulators of the 4-bit AVX2 sequence, which also keeps a 16-bit sum beside each.
const ACC_NIBBLE: usize = 4;

impl Micro {
    /// Every sequence, fastest first within each kind.
    pub const ALL: [Micro; 7] = [
        Micro::Vnni,
        Micro::Avx2Int8,
        Micro::Avx2SignedInt8,
        Micro::Avx2Nibble,
        Micro::Bf16,
        Micro::Fma512,
        Micro::Fma256,
    ];

    /// Its name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Micro::Vnni => "int8 AVX-512 VNNI (vpdpbusd)",
            Micro::Avx2Int8 => "int8 AVX2 (vpmaddubsw + vpmaddwd)",
            Micro::Avx2SignedInt8 => "int8 AVX2 signed (vpsignb + vpmaddubsw + vpmaddwd)",
            Micro::Avx2Nibble => "int8 AVX2 4-bit (vpmaddubsw, 16-bit sums)",
            Micro::Bf16 => "bf16 AVX-512 (vdpbf16ps)",
            Micro::Fma512 => "f32 AVX-512 FMA",
            Micro::Fma256 => "f32 AVX2 FMA",
        }
    }

    /// Whether this CPU runs it.
    pub fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let f = |name| match name {
                "avx512f" => is_x86_feature_detected!("avx512f"),
                "avx512bw" => is_x86_feature_detected!("avx512bw"),
                "avx512vnni" => is_x86_feature_detected!("avx512vnni"),
                "avx512bf16" => is_x86_feature_detected!("avx512bf16"),
                "avx2" => is_x86_feature_detected!("avx2"),
                "fma" => is_x86_feature_detected!("fma"),
                _ => false,
            };
            match self {
                Micro::Vnni => f("avx512f") && f("avx512bw") && f("avx512vnni"),
                Micro::Avx2Int8 | Micro::Avx2SignedInt8 | Micro::Avx2Nibble => f("avx2"),
                Micro::Bf16 => f("avx512f") && f("avx512bf16"),
                Micro::Fma512 => f("avx512f"),
                Micro::Fma256 => f("avx2") && f("fma"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = self;
            false
        }
    }

    /// Operations per loop iteration (a multiply-add counts two).
    fn ops_per_iteration(self) -> f64 {
        // Per instruction, or per sequence where the sequence has a fixed length.
        let per_instruction = match self {
            Micro::Vnni => 128.0,
            Micro::Avx2Int8 | Micro::Avx2SignedInt8 => 64.0,
            Micro::Avx2Nibble => 512.0,
            Micro::Bf16 => 64.0,
            Micro::Fma512 => 32.0,
            Micro::Fma256 => 16.0,
        };
        per_instruction * self.accumulators() as f64
    }

    /// Independent sums the kernel keeps.
    fn accumulators(self) -> usize {
        match self {
            Micro::Avx2Int8 | Micro::Avx2SignedInt8 => ACC_AVX2,
            Micro::Avx2Nibble => ACC_NIBBLE,
            _ => ACC,
        }
    }

    /// Runs `iterations` loop iterations and returns the sum of every accumulator lane (all
    /// inputs are ones, or 2⁻¹⁰ for the float kernels' second factor, so the sum is known); `None`
    /// where the CPU lacks the instructions.
    pub fn run(self, iterations: u64) -> Option<f64> {
        if !self.available() {
            return None;
        }
        #[cfg(target_arch = "x86_64")]
        {
            let n = std::hint::black_box(iterations);
            // SAFETY: `available()` checked every feature the function is compiled for; the
            // kernels touch registers only.
            Some(unsafe {
                match self {
                    Micro::Vnni => x86::vnni(n),
                    Micro::Avx2Int8 => x86::avx2_int8::<false>(n),
                    Micro::Avx2SignedInt8 => x86::avx2_int8::<true>(n),
                    Micro::Avx2Nibble => x86::avx2_nibble(n),
                    Micro::Bf16 => x86::bf16(n),
                    Micro::Fma512 => x86::fma512(n),
                    Micro::Fma256 => x86::fma256(n),
                }
            })
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = iterations;
            None
        }
    }

    /// What [`Micro::run`] returns after `iterations`.
    pub fn expected(self, iterations: u64) -> f64 {
        let n = iterations as f64;
        let acc = self.accumulators() as f64;
        match self {
            // 16 i32 lanes, each adding 4 products of 1 × 1 per instruction.
            Micro::Vnni => acc * 16.0 * 4.0 * n,
            // 8 i32 lanes, each adding 4 products per sequence.
            Micro::Avx2Int8 | Micro::Avx2SignedInt8 => acc * 8.0 * 4.0 * n,
            // 8 i32 lanes, each adding 8 × 4 products per sequence.
            Micro::Avx2Nibble => acc * 8.0 * 32.0 * n,
            // 16 f32 lanes, each adding 2 products of 1 × 2⁻¹⁰.
            Micro::Bf16 => acc * 16.0 * 2.0 * n / 1024.0,
            Micro::Fma512 => acc * 16.0 * n / 1024.0,
            Micro::Fma256 => acc * 8.0 * n / 1024.0,
        }
    }

    /// Operations per second on `threads` threads, each running the kernel for about `span`.
    pub fn measure(self, threads: usize, span: Duration) -> Option<f64> {
        // Size the run from a short one on this thread.
        let probe = 200_000;
        let start = Instant::now();
        self.run(probe)?;
        let per_iteration = start.elapsed().as_secs_f64() / probe as f64;
        let iterations = ((span.as_secs_f64() / per_iteration.max(1e-12)) as u64).max(probe);
        let threads = threads.max(1);
        let start = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| std::hint::black_box(self.run(iterations)));
            }
        });
        let seconds = start.elapsed().as_secs_f64();
        Some(threads as f64 * iterations as f64 * self.ops_per_iteration() / seconds)
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::asm;
    use std::arch::x86_64::{
        __m256, __m256i, __m512, __m512bh, __m512i, _mm256_add_epi16, _mm256_add_epi32,
        _mm256_fmadd_ps, _mm256_madd_epi16, _mm256_maddubs_epi16, _mm256_set1_epi16,
        _mm256_set1_epi8, _mm256_set1_ps, _mm256_setzero_ps, _mm256_setzero_si256,
        _mm256_sign_epi8, _mm256_storeu_ps, _mm256_storeu_si256, _mm512_cvtne2ps_pbh,
        _mm512_dpbf16_ps, _mm512_dpbusd_epi32, _mm512_fmadd_ps, _mm512_reduce_add_ps,
        _mm512_set1_epi8, _mm512_set1_ps, _mm512_setzero_ps, _mm512_setzero_si512,
        _mm512_storeu_si512,
    };
    use std::hint::black_box;

    use super::{ACC, ACC_AVX2, ACC_NIBBLE};

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn vnni(n: u64) -> f64 {
        let (a, b) = (
            black_box(_mm512_set1_epi8(1)),
            black_box(_mm512_set1_epi8(1)),
        );
        let mut acc: [__m512i; ACC] = [_mm512_setzero_si512(); ACC];
        for _ in 0..n {
            for x in acc.iter_mut() {
                *x = _mm512_dpbusd_epi32(*x, a, b);
            }
        }
        let mut total = 0f64;
        for x in acc {
            let mut lanes = [0i32; 16];
            // SAFETY: `lanes` holds 64 bytes.
            unsafe { _mm512_storeu_si512(lanes.as_mut_ptr().cast(), x) };
            total += lanes.iter().map(|&v| f64::from(v)).sum::<f64>();
        }
        total
    }

    /// Each sum gets its own operand, which the compiler must take as changed on every pass (an
    /// empty asm block that claims to write it): otherwise it multiplies once and adds that one
    /// product to every sum.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn opaque(a: &mut __m256i) {
        // SAFETY: the block is empty: it touches no memory, stack or flags.
        unsafe {
            asm!(
                "/* {0} */",
                inout(ymm_reg) * a,
                options(nomem, nostack, preserves_flags)
            )
        };
    }

    /// The sum of every i32 lane of `acc`.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn lane_sum(acc: &[__m256i]) -> f64 {
        let mut total = 0f64;
        for &x in acc {
            let mut lanes = [0i32; 8];
            // SAFETY: `lanes` holds 32 bytes.
            unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), x) };
            total += lanes.iter().map(|&v| f64::from(v)).sum::<f64>();
        }
        total
    }

    /// `SIGNED`: each operand through `vpsignb` first (by ones: the values stay ones).
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn avx2_int8<const SIGNED: bool>(n: u64) -> f64 {
        let (b, ones) = (
            black_box(_mm256_set1_epi8(1)),
            black_box(_mm256_set1_epi16(1)),
        );
        let mut a: [__m256i; ACC_AVX2] = [black_box(_mm256_set1_epi8(1)); ACC_AVX2];
        let mut acc: [__m256i; ACC_AVX2] = [_mm256_setzero_si256(); ACC_AVX2];
        for _ in 0..n {
            for (x, a) in acc.iter_mut().zip(a.iter_mut()) {
                opaque(a);
                let signed = if SIGNED { _mm256_sign_epi8(*a, b) } else { *a };
                *x = _mm256_add_epi32(*x, _mm256_madd_epi16(_mm256_maddubs_epi16(b, signed), ones));
            }
        }
        lane_sum(&acc)
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn avx2_nibble(n: u64) -> f64 {
        let (b, ones) = (
            black_box(_mm256_set1_epi8(1)),
            black_box(_mm256_set1_epi16(1)),
        );
        let mut a: [__m256i; ACC_NIBBLE] = [black_box(_mm256_set1_epi8(1)); ACC_NIBBLE];
        let mut acc: [__m256i; ACC_NIBBLE] = [_mm256_setzero_si256(); ACC_NIBBLE];
        for _ in 0..n {
            let mut pairs: [__m256i; ACC_NIBBLE] = [_mm256_setzero_si256(); ACC_NIBBLE];
            for _ in 0..8 {
                for (p, a) in pairs.iter_mut().zip(a.iter_mut()) {
                    opaque(a);
                    *p = _mm256_add_epi16(*p, _mm256_maddubs_epi16(*a, b));
                }
            }
            for (x, p) in acc.iter_mut().zip(pairs) {
                *x = _mm256_add_epi32(*x, _mm256_madd_epi16(p, ones));
            }
        }
        lane_sum(&acc)
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn bf16(n: u64) -> f64 {
        let one = _mm512_set1_ps(1.0);
        let small = _mm512_set1_ps(1.0 / 1024.0);
        let a: __m512bh = black_box(_mm512_cvtne2ps_pbh(one, one));
        let b: __m512bh = black_box(_mm512_cvtne2ps_pbh(small, small));
        let mut acc: [__m512; ACC] = [_mm512_setzero_ps(); ACC];
        for _ in 0..n {
            for x in acc.iter_mut() {
                *x = _mm512_dpbf16_ps(*x, a, b);
            }
        }
        acc.iter()
            .map(|&x| f64::from(_mm512_reduce_add_ps(x)))
            .sum()
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn fma512(n: u64) -> f64 {
        let (a, b) = (
            black_box(_mm512_set1_ps(1.0)),
            black_box(_mm512_set1_ps(1.0 / 1024.0)),
        );
        let mut acc: [__m512; ACC] = [_mm512_setzero_ps(); ACC];
        for _ in 0..n {
            for x in acc.iter_mut() {
                *x = _mm512_fmadd_ps(a, b, *x);
            }
        }
        acc.iter()
            .map(|&x| f64::from(_mm512_reduce_add_ps(x)))
            .sum()
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn fma256(n: u64) -> f64 {
        let (a, b) = (
            black_box(_mm256_set1_ps(1.0)),
            black_box(_mm256_set1_ps(1.0 / 1024.0)),
        );
        let mut acc: [__m256; ACC] = [_mm256_setzero_ps(); ACC];
        for _ in 0..n {
            for x in acc.iter_mut() {
                *x = _mm256_fmadd_ps(a, b, *x);
            }
        }
        let mut total = 0f64;
        for x in acc {
            let mut lanes = [0f32; 8];
            // SAFETY: `lanes` holds 32 bytes.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), x) };
            total += lanes.iter().map(|&v| f64::from(v)).sum::<f64>();
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_microkernel_does_the_arithmetic_it_is_counted_for() {
        for m in Micro::ALL {
            match m.run(1000) {
                Some(sum) => assert_eq!(sum, m.expected(1000), "{}", m.name()),
                None => assert!(!m.available(), "{}", m.name()),
            }
        }
        // An AVX2 machine has at least the int8 and f32 sequences.
        for m in Micro::ALL.into_iter().filter(|m| m.available()) {
            let rate = m.measure(1, Duration::from_millis(10)).expect("runs");
            assert!(rate > 1e8, "{}: {rate} op/s", m.name());
        }
    }
}
