//! Where a forward pass spends its time, for the roofline benchmark: wall time per phase
//! (weight GEMMs, activation quantization, attention, element-wise work, copies), each phase's
//! own time without the phases timed inside it. Timing is per thread and off unless the thread
//! [`enable`]s it (a phase then costs a thread-local read); phases are timed on the thread that
//! runs the forward pass, around calls whose inner work may spread over the thread pool.

use std::cell::RefCell;
use std::time::Instant;

/// A kind of work in the forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Multiplying activations by weight matrices (projections and MLP).
    Gemm,
    /// Quantizing activations for the int8 kernels (or rounding them to bf16 for AMX).
    Quantize,
    /// Attention scores, the soft-capped softmax and the weighted values.
    Attention,
    /// RMS norms with their residual additions, the query and key head splits with RoPE, GeGLU.
    Elementwise,
    /// Moving data between layouts: the value head split, key/value concatenation, repacking
    /// activations for a kernel.
    Copies,
}

impl Phase {
    /// Every phase, in table order.
    pub const ALL: [Phase; 5] = [
        Phase::Gemm,
        Phase::Quantize,
        Phase::Attention,
        Phase::Elementwise,
        Phase::Copies,
    ];

    /// Its name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Gemm => "weight GEMMs",
            Phase::Quantize => "activation quantization",
            Phase::Attention => "attention",
            Phase::Elementwise => "norms, RoPE, GeGLU, residuals",
            Phase::Copies => "copies",
        }
    }
}

/// One thread's timing.
#[derive(Default)]
struct State {
    on: bool,
    nanos: [u64; Phase::ALL.len()],
    /// Operations of the weight GEMMs (a multiply-add counts two).
    gemm_ops: f64,
    /// Time spent in phases nested in each open phase, innermost last.
    open: Vec<u64>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

/// Starts (or stops) timing on this thread, and clears what was timed.
pub fn enable(on: bool) {
    STATE.with(|s| {
        *s.borrow_mut() = State {
            on,
            ..State::default()
        }
    });
}

/// Seconds this thread spent in each phase since [`enable`], each phase's own time only.
pub fn seconds() -> Vec<(Phase, f64)> {
    STATE.with(|s| {
        let s = s.borrow();
        Phase::ALL
            .iter()
            .map(|&p| (p, s.nanos[p as usize] as f64 * 1e-9))
            .collect()
    })
}

/// Counts a weight GEMM of `rows` × `in_dim` by `in_dim` × `out_dim` while this thread times.
pub fn count_gemm(rows: usize, in_dim: usize, out_dim: usize) {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        if s.on {
            s.gemm_ops += 2.0 * (rows * in_dim * out_dim) as f64;
        }
    });
}

/// The weight GEMMs' operations this thread counted since [`enable`].
pub fn gemm_ops() -> f64 {
    STATE.with(|s| s.borrow().gemm_ops)
}

/// Runs `f`, counting its time (less that of phases timed inside it) to `phase` while this
/// thread times.
pub fn timed<T>(phase: Phase, f: impl FnOnce() -> T) -> T {
    let on = STATE.with(|s| {
        let mut s = s.borrow_mut();
        if s.on {
            s.open.push(0);
        }
        s.on
    });
    if !on {
        return f();
    }
    let start = Instant::now();
    let out = f();
    let elapsed = start.elapsed().as_nanos() as u64;
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        let nested = s.open.pop().unwrap_or(0);
        if let Some(parent) = s.open.last_mut() {
            *parent += elapsed;
        }
        s.nanos[phase as usize] += elapsed.saturating_sub(nested);
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_count_their_own_time_and_nothing_while_off() {
        let sleep = |ms| std::thread::sleep(std::time::Duration::from_millis(ms));
        enable(false);
        timed(Phase::Gemm, || sleep(5));
        count_gemm(2, 3, 4);
        assert!(seconds().iter().all(|(_, s)| *s == 0.0));
        assert_eq!(gemm_ops(), 0.0);
        enable(true);
        count_gemm(2, 3, 4);
        assert_eq!(gemm_ops(), 48.0);
        timed(Phase::Gemm, || {
            sleep(20);
            timed(Phase::Quantize, || sleep(30));
        });
        let s: std::collections::BTreeMap<&str, f64> =
            seconds().into_iter().map(|(p, s)| (p.name(), s)).collect();
        enable(false);
        let gemm = s["weight GEMMs"];
        let quantize = s["activation quantization"];
        assert!((0.02..0.029).contains(&gemm), "own time only: {gemm}");
        assert!((0.03..0.05).contains(&quantize), "{quantize}");
    }
}
