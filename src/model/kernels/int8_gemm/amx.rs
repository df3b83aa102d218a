//! Prefill-sized matmuls on AMX: the packed 8- and 4-bit panels are widened, one pair of
//! panels at a time, to bf16 tiles (`q × scale − min` per 32-wide block, rounded once), the
//! activations are rounded to bf16, and `tdpbf16ps` accumulates a 32 × 32 block of outputs in
//! f32 in four tile registers over up to 2304 inputs at a time. No per-block rescaling is left
//! in the inner loop, which is what bounds the VNNI tile. Rust has no stable AMX intrinsics, so the
//! tile instructions are inline assembly; the widening uses AVX-512 (BF16, VBMI) intrinsics.
#![allow(unsafe_code)]

use std::arch::asm;
use std::arch::x86_64::{
    __m512, __m512i, _mm256_castsi256_si128, _mm256_extracti128_si256, _mm512_and_si512,
    _mm512_cvtepi32_ps, _mm512_cvtepi8_epi32, _mm512_cvtne2ps_pbh, _mm512_extracti64x4_epi64,
    _mm512_fmsub_ps, _mm512_load_si512, _mm512_loadu_ps, _mm512_loadu_si512,
    _mm512_permutexvar_epi8, _mm512_permutexvar_ps, _mm512_set1_epi8, _mm512_setzero_ps,
    _mm512_srli_epi16, _mm512_store_si512, _mm512_storeu_si512,
};
use std::cell::RefCell;
use std::ops::Range;
use std::sync::OnceLock;
use std::thread::LocalKey;

use rayon::prelude::*;

use crate::model::profile::{self, Phase};

use super::avx512::block_scales;
use super::{nibbles, q8_0, Line, Panels, BLOCK, PANEL};

/// Rows of a tile: tokens of an activation tile, input pairs of a weight tile.
const TILE_ROWS: usize = 16;
/// Tokens per pass of the kernel: two activation tiles.
const GROUP: usize = 2 * TILE_ROWS;
/// Lines of a bf16 weight tile: 16 input pairs × 16 outputs × 2 bytes.
const TILE_LINES: usize = 16;

/// Whether this CPU and kernel run the AMX path: CPUID reports AMX-TILE and AMX-BF16, the
/// widening's AVX-512 subsets are there, and Linux grants this process the tile state (asked
/// once; the grant covers every thread).
pub(super) fn available() -> bool {
    static GRANTED: OnceLock<bool> = OnceLock::new();
    *GRANTED.get_or_init(|| {
        let amx = super::avx512::available()
            && is_x86_feature_detected!("avx512bf16")
            && is_x86_feature_detected!("avx512vbmi")
            && {
                let leaf = std::arch::x86_64::__cpuid_count(7, 0);
                leaf.edx & (1 << 22) != 0 && leaf.edx & (1 << 24) != 0
            };
        amx && request_tile_state()
    })
}

/// Asks Linux for the AMX tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM,
/// XFEATURE_XTILEDATA)`); a kernel or hypervisor without it says no, and the VNNI path runs.
fn request_tile_state() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: this request only changes which register state the process may use.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

/// `x W^T` for `rows` rows of `x` (`rows × in_dim`, row-major) through AMX.
pub(super) fn matmul(
    panels: &Panels,
    out_dim: usize,
    in_dim: usize,
    x: &[f32],
    rows: usize,
) -> Vec<f32> {
    assert!(
        available(),
        "the AMX path needs AMX-BF16 and the tile state"
    );
    assert!(in_dim.is_multiple_of(BLOCK) && out_dim.is_multiple_of(2 * PANEL));
    assert!(x.len() >= rows * in_dim);
    let padded = rows.next_multiple_of(GROUP);
    let mut y = with_scratch(&ACTIVATIONS, |a| {
        profile::timed(Phase::Quantize, || {
            activations_bf16(x, rows, padded, in_dim, a)
        });
        widened_matmul(panels, out_dim, in_dim, a, padded)
    });
    y.truncate(rows * out_dim);
    y
}

/// The product for the bf16 activations `a` (`padded` rows), `padded × out_dim` values.
///
/// Blocked for the caches: a task takes a few panel pairs and walks the input dimension in
/// chunks of up to [`CHUNK_BLOCKS`] blocks; it widens its pairs' chunk once into a buffer
/// that stays in L2, and each group of 32 rows then passes over every pair with its
/// activations in L2 too. The sums stay in tile registers for a whole chunk, so a 32 × 32
/// block goes back to memory only between chunks.
fn widened_matmul(
    panels: &Panels,
    out_dim: usize,
    in_dim: usize,
    a: &[u16],
    padded: usize,
) -> Vec<f32> {
    let blocks = in_dim / BLOCK;
    // Not zeroed: the tasks write every element (all row groups × all pairs) before it is read.
    let mut y: Vec<f32> = Vec::with_capacity(padded * out_dim);
    let out = Output(y.as_mut_ptr());
    let chunk_blocks = blocks.div_ceil(blocks.div_ceil(CHUNK_BLOCKS));
    let pairs = out_dim / (2 * PANEL);
    let threads = rayon::current_num_threads();
    let most = (WIDENED_BYTES / (chunk_blocks * 2 * TILE_LINES * 64)).max(1);
    let per_task = pairs.div_ceil(threads * pairs.div_ceil(threads * most));
    (0..pairs)
        .step_by(per_task)
        .collect::<Vec<_>>()
        .into_par_iter()
        .for_each(|first| {
            let task = first..(first + per_task).min(pairs);
            let tiles = Tiles::configure();
            with_scratch(&WIDENED, |weights| {
                let per_pair = chunk_blocks * 2 * TILE_LINES;
                weights.resize(task.len() * per_pair, Line([0; 64]));
                for chunk in (0..blocks).step_by(chunk_blocks) {
                    let chunk = chunk..(chunk + chunk_blocks).min(blocks);
                    for (pair, dst) in task.clone().zip(weights.chunks_exact_mut(per_pair)) {
                        widen_pair(panels, pair, chunk.clone(), dst);
                    }
                    for group in (0..padded).step_by(GROUP) {
                        for (pair, widened) in task.clone().zip(weights.chunks_exact(per_pair)) {
                            // SAFETY: `a` holds `padded` rows of `in_dim` bf16 values and
                            // `widened` the chunk's tiles of this pair, so the reads stay
                            // inside them; the sums are rows `group..group + 32` × this
                            // pair's columns of `y`, which holds `padded` rows and which no
                            // other task touches.
                            unsafe {
                                let sums = out.at(group * out_dim + pair * 2 * PANEL);
                                if chunk.start == 0 {
                                    tiles.zero_sums();
                                } else {
                                    tiles.load_sums(sums, out_dim * 4);
                                }
                                tiles.accumulate(
                                    a.as_ptr().add(group * in_dim + chunk.start * BLOCK),
                                    in_dim * 2,
                                    widened.as_ptr(),
                                    chunk.len(),
                                );
                                tiles.store_sums(sums, out_dim * 4);
                            }
                        }
                    }
                }
            });
        });
    // SAFETY: the loop above stored every row group of every pair: all `padded × out_dim`
    // elements are initialized.
    unsafe { y.set_len(padded * out_dim) };
    y
}

/// Most blocks of the input dimension per chunk: a pair's widened chunk is at most 144 KiB
/// (the whole input of the 2B's 2304-wide layers).
const CHUNK_BLOCKS: usize = 72;
/// Bytes of widened weights a task keeps (in L2) for one chunk.
const WIDENED_BYTES: usize = 1 << 20;

/// Runs `f` on this thread's buffer `key`, or on a fresh one if it is in use.
fn with_scratch<T, R>(
    key: &'static LocalKey<RefCell<Vec<T>>>,
    f: impl FnOnce(&mut Vec<T>) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffer) => f(&mut buffer),
        Err(_) => f(&mut Vec::new()),
    })
}

thread_local! {
    /// The calling thread's bf16 activations, kept between calls (a fresh buffer per call
    /// costs its page faults, about as much as converting); it holds the largest input seen,
    /// half the size of that input in f32.
    static ACTIVATIONS: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
    /// Each thread's buffer of widened weights, kept between calls.
    static WIDENED: RefCell<Vec<Line>> = const { RefCell::new(Vec::new()) };
}

/// The output matrix, shared by the tasks that each write their own columns.
struct Output(*mut f32);

impl Output {
    /// The element `offset`.
    ///
    /// # Safety
    /// `offset` must be inside the matrix.
    unsafe fn at(&self, offset: usize) -> *mut f32 {
        self.0.add(offset)
    }
}
// SAFETY: the tasks write disjoint columns of one matrix that outlives them.
unsafe impl Sync for Output {}

/// `x` rounded to bf16 (nearest, ties to even) into `a`: `padded` rows, zeros past `rows`.
fn activations_bf16(x: &[f32], rows: usize, padded: usize, in_dim: usize, a: &mut Vec<u16>) {
    a.resize(padded * in_dim, 0);
    a[rows * in_dim..].fill(0);
    a[..rows * in_dim]
        .par_chunks_mut(in_dim)
        .zip(x.par_chunks(in_dim))
        // SAFETY: `available` was checked (AVX-512 F and BF16); both rows are `in_dim` long,
        // a multiple of 32.
        .for_each(|(dst, src)| unsafe { row_bf16(src, dst) });
}

#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn row_bf16(src: &[f32], dst: &mut [u16]) {
    for (dst, src) in dst.chunks_exact_mut(32).zip(src.chunks_exact(32)) {
        let low = _mm512_loadu_ps(src.as_ptr());
        let high = _mm512_loadu_ps(src.as_ptr().add(16));
        let both: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(high, low));
        _mm512_storeu_si512(dst.as_mut_ptr().cast(), both);
    }
}

/// Widens the blocks `chunk` of panels `2 pair` and `2 pair + 1` to bf16 tiles: tile `2 i + p`
/// holds block `chunk.start + i` of panel `p`, its row `r` the inputs `2r, 2r + 1` of each of
/// the 16 outputs.
fn widen_pair(panels: &Panels, pair: usize, chunk: Range<usize>, tiles: &mut [Line]) {
    assert!(tiles.len() >= chunk.len() * 2 * TILE_LINES);
    for p in 0..2 {
        for (i, b) in chunk.clone().enumerate() {
            let tile = &mut tiles[(2 * i + p) * TILE_LINES..][..TILE_LINES];
            // SAFETY: `available` was checked; each panel holds `blocks` blocks of lines and
            // scales (the panels' constructors check their sizes), and `tile` is 16 lines.
            unsafe {
                match panels {
                    Panels::Q8_0(all) => {
                        let panel = all.panel(2 * pair + p);
                        let scale = _mm512_loadu_ps(panel.scales[b * PANEL..][..PANEL].as_ptr());
                        let (scales, mins) = (pair_lanes(scale), [_mm512_setzero_ps(); 2]);
                        let lines = &panel.weights[b * q8_0::LINES_PER_BLOCK..];
                        for (l, line) in lines[..q8_0::LINES_PER_BLOCK].iter().enumerate() {
                            let values = _mm512_load_si512(line.0.as_ptr().cast());
                            widen_line(values, &scales, &mins, &mut tile[2 * l..]);
                        }
                    }
                    Panels::Nibbles(all) => {
                        let panel = all.panel(2 * pair + p);
                        let (scale, min) = block_scales(&panel.scales, b);
                        let (scales, mins) = (pair_lanes(scale), pair_lanes(min));
                        let lines = &panel.weights[b * nibbles::LINES_PER_BLOCK..];
                        let nibble = _mm512_set1_epi8(0x0F);
                        for (l, line) in lines[..nibbles::LINES_PER_BLOCK].iter().enumerate() {
                            let packed = _mm512_load_si512(line.0.as_ptr().cast());
                            let high = _mm512_and_si512(_mm512_srli_epi16(packed, 4), nibble);
                            let low = _mm512_and_si512(packed, nibble);
                            widen_line(low, &scales, &mins, &mut tile[4 * l..]);
                            widen_line(high, &scales, &mins, &mut tile[4 * l + 2..]);
                        }
                    }
                }
            }
        }
    }
}

/// Byte `i` of a widened line's row `j` (0..32 within the row) is input `2j + i % 2` of
/// output `i / 2`: the line holds `[output][4 inputs]`.
const PAIR_ORDER: [u8; 64] = {
    let mut order = [0; 64];
    let mut i = 0;
    while i < 64 {
        let (j, k) = (i / 32, i % 32);
        order[i] = (4 * (k / 2) + 2 * j + k % 2) as u8;
        i += 1;
    }
    order
};

/// Lane `i` takes output `i / 2` (first half) or `8 + i / 2` (second half).
const PAIR_LANES: [[u32; 16]; 2] = {
    let mut lanes = [[0; 16]; 2];
    let mut i = 0;
    while i < 16 {
        lanes[0][i] = (i / 2) as u32;
        lanes[1][i] = (8 + i / 2) as u32;
        i += 1;
    }
    lanes
};

/// A per-output vector spread over the lanes of an input pair row: outputs 0–7, then 8–15,
/// each twice.
#[target_feature(enable = "avx512f")]
unsafe fn pair_lanes(v: __m512) -> [__m512; 2] {
    PAIR_LANES.map(|lanes| _mm512_permutexvar_ps(_mm512_loadu_si512(lanes.as_ptr().cast()), v))
}

/// One line of 16 outputs × 4 inputs (`[output][input]` bytes, signed) as two bf16 tile rows
/// of `value × scale − min` per output (`scales` and `mins` from [`pair_lanes`]): inputs 0
/// and 1 of each output, then inputs 2 and 3.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512bf16")]
unsafe fn widen_line(values: __m512i, scales: &[__m512; 2], mins: &[__m512; 2], rows: &mut [Line]) {
    let order = _mm512_loadu_si512(PAIR_ORDER.as_ptr().cast());
    let sorted = _mm512_permutexvar_epi8(order, values);
    for (j, row) in rows[..2].iter_mut().enumerate() {
        let half = if j == 0 {
            _mm512_extracti64x4_epi64(sorted, 0)
        } else {
            _mm512_extracti64x4_epi64(sorted, 1)
        };
        let quarters = [
            _mm256_castsi256_si128(half),
            _mm256_extracti128_si256(half, 1),
        ];
        let widened = [0, 1].map(|h| {
            let q = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(quarters[h]));
            _mm512_fmsub_ps(q, scales[h], mins[h])
        });
        let bf16: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(widened[1], widened[0]));
        _mm512_store_si512(row.0.as_mut_ptr().cast(), bf16);
    }
}

/// The tile configuration: 8 tiles of 16 rows × 64 bytes (0–3 sums, 4–5 activations, 6–7
/// weights), loaded for the calling thread and released when dropped.
struct Tiles {
    _not_send: std::marker::PhantomData<*const ()>,
}

#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl Tiles {
    fn configure() -> Self {
        let mut config = TileConfig([0; 64]);
        config.0[0] = 1;
        for t in 0..8 {
            config.0[16 + 2 * t..18 + 2 * t].copy_from_slice(&64u16.to_le_bytes());
            config.0[48 + t] = TILE_ROWS as u8;
        }
        // SAFETY: `available` granted the tile state; the configuration is a valid palette 1.
        unsafe { asm!("ldtilecfg [{0}]", in(reg) config.0.as_ptr(), options(nostack, readonly)) };
        Self {
            _not_send: std::marker::PhantomData,
        }
    }

    /// Zeroes the 32 × 32 sums (tiles 0–3).
    fn zero_sums(&self) {
        // SAFETY: the tiles are configured on this thread (`self` is not `Send`).
        unsafe {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            )
        };
    }

    /// Loads the 32 × 32 sums from `c` (row stride `stride` bytes).
    ///
    /// # Safety
    /// `c` must hold 32 rows of 32 f32 values at that stride.
    unsafe fn load_sums(&self, c: *const f32, stride: usize) {
        asm!(
            "tileloadd tmm0, [{c} + {stride}]",
            "tileloadd tmm1, [{c} + {stride} + 64]",
            "tileloadd tmm2, [{second} + {stride}]",
            "tileloadd tmm3, [{second} + {stride} + 64]",
            c = in(reg) c,
            second = in(reg) c.cast::<u8>().add(TILE_ROWS * stride),
            stride = in(reg) stride,
            options(nostack, readonly),
        );
    }

    /// Stores the 32 × 32 sums to `c` (row stride `stride` bytes).
    ///
    /// # Safety
    /// `c` must hold 32 rows of 32 f32 values at that stride.
    unsafe fn store_sums(&self, c: *mut f32, stride: usize) {
        asm!(
            "tilestored [{c} + {stride}], tmm0",
            "tilestored [{c} + {stride} + 64], tmm1",
            "tilestored [{second} + {stride}], tmm2",
            "tilestored [{second} + {stride} + 64], tmm3",
            c = in(reg) c,
            second = in(reg) c.cast::<u8>().add(TILE_ROWS * stride),
            stride = in(reg) stride,
            options(nostack),
        );
    }

    /// Adds to the sums the products of 32 activation rows at `a` (row stride `a_stride`
    /// bytes) and `blocks` pairs of weight tiles at `b`.
    ///
    /// # Safety
    /// `a` must hold 32 rows of `blocks × 32` bf16 values at that stride, `b` `2 × blocks`
    /// tiles of 1 KiB; `blocks` must be at least 1.
    unsafe fn accumulate(&self, a: *const u16, a_stride: usize, b: *const Line, blocks: usize) {
        // Software-pipelined: each operand tile is reloaded for the next block as soon as
        // its last product of this block has been issued (tiles are not renamed).
        asm!(
            "tileloadd tmm4, [{a} + {a_stride}]",
            "tileloadd tmm6, [{b} + {b_stride}]",
            "tileloadd tmm5, [{a_second} + {a_stride}]",
            "tileloadd tmm7, [{b} + {b_stride} + 1024]",
            "dec {blocks}",
            "jz 3f",
            "2:",
            "add {a}, 64",
            "add {a_second}, 64",
            "add {b}, 2048",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm4, [{a} + {a_stride}]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tileloadd tmm6, [{b} + {b_stride}]",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "tileloadd tmm5, [{a_second} + {a_stride}]",
            "tileloadd tmm7, [{b} + {b_stride} + 1024]",
            "dec {blocks}",
            "jnz 2b",
            "3:",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            a = inout(reg) a => _,
            a_second = inout(reg) a.cast::<u8>().add(TILE_ROWS * a_stride) => _,
            b = inout(reg) b => _,
            blocks = inout(reg) blocks => _,
            a_stride = in(reg) a_stride,
            b_stride = in(reg) 64usize,
            options(nostack, readonly),
        );
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: releases the tile state this thread configured.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}
