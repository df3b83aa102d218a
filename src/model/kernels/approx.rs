//! Branch-free approximations of `tanh` and `exp` for the fused f32 kernels: plain arithmetic
//! the compiler vectorizes, where libm's calls run one value at a time.

/// `tanh` as a 13/6-degree rational minimax approximation on [-7.9, 7.9] (beyond, tanh is ±1
/// in f32); branch-free, so loops over it vectorize. Error below 1e-6 (see the tests).
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    const CLAMP: f32 = 7.905_311;
    const A1: f32 = 4.893_524_6e-3;
    const A3: f32 = 6.372_619_3e-4;
    const A5: f32 = 1.485_722_4e-5;
    const A7: f32 = 5.122_297e-8;
    const A9: f32 = -8.604_672e-11;
    const A11: f32 = 2.000_188e-13;
    const A13: f32 = -2.760_768_5e-16;
    const B0: f32 = 4.893_525e-3;
    const B2: f32 = 2.268_434_6e-3;
    const B4: f32 = 1.185_347_1e-4;
    const B6: f32 = 1.198_258_4e-6;
    let x = x.clamp(-CLAMP, CLAMP);
    let x2 = x * x;
    let p = x2.mul_add(A13, A11);
    let p = x2.mul_add(p, A9);
    let p = x2.mul_add(p, A7);
    let p = x2.mul_add(p, A5);
    let p = x2.mul_add(p, A3);
    let p = x2.mul_add(p, A1);
    let q = x2.mul_add(B6, B4);
    let q = x2.mul_add(q, B2);
    let q = x2.mul_add(q, B0);
    x * p / q
}

/// `e^x`: zero below -87.3 (where the true value is subnormal, and for a mask's `-inf`), the
/// largest power of two reached above 88.3; in between, range reduction
/// `x = n ln 2 + r` (Cody–Waite), a degree-7 Taylor polynomial for `e^r` on |r| ≤ ln 2 / 2 and
/// `2^n` from the exponent bits; relative error below 3e-7 (see the tests).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const LOWEST: f32 = -87.336_54;
    let underflow = x < LOWEST;
    let x = x.clamp(LOWEST, 88.376_26);
    let n = (x * LOG2_E).round_ties_even();
    let r = (-n).mul_add(LN2_HI, x);
    let r = (-n).mul_add(LN2_LO, r);
    let p = r.mul_add(1.0 / 5040.0, 1.0 / 720.0);
    let p = r.mul_add(p, 1.0 / 120.0);
    let p = r.mul_add(p, 1.0 / 24.0);
    let p = r.mul_add(p, 1.0 / 6.0);
    let p = r.mul_add(p, 0.5);
    let p = r.mul_add(p, 1.0);
    let p = r.mul_add(p, 1.0);
    let e = p * f32::from_bits(((n as i32 + 127) as u32) << 23);
    if underflow {
        0.0
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tanh_is_within_a_millionth_everywhere() {
        let worst = (-200_000..=200_000)
            .map(|i| i as f32 * 1e-4)
            .chain([-1e30, -50.0, 50.0, 1e30])
            .map(|x| ((tanh(x) as f64) - (x as f64).tanh()).abs())
            .fold(0.0, f64::max);
        assert!(worst < 1e-6, "largest error {worst:e}");
        assert_eq!(tanh(0.0), 0.0);
    }

    #[test]
    fn exp_is_within_three_ten_millionths_relative() {
        let worst = (-873_365..=883_762)
            .map(|i| i as f32 * 1e-4)
            .map(|x| {
                let want = (x as f64).exp();
                ((exp(x) as f64) - want).abs() / want
            })
            .fold(0.0, f64::max);
        assert!(worst < 3e-7, "largest relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
    }
}
