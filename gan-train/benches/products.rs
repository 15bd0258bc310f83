//! The training products of the DCGAN and classic steps one at a time, on one thread and on
//! the 2-thread team, in GFLOP/s: how near each product runs to the core's FMA rate, and how
//! much of it two threads keep.
//!
//! Run with `cargo bench -p gan-train --bench products` (set `THREADS` for a larger team, and
//! `ISA=avx2` or `ISA=portable` to measure the narrower kernels on an AVX-512 machine).
//! Each product: one warm-up call, then 7 runs of about 0.3 s; the median and the best run
//! are printed.

use std::time::Instant;

use gan_core::kernels::{self, Exec, Serial};
use gan_core::noise;
use gan_train::team::Team;

/// How a product's operands are laid out.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// `C (m×n) += A (m×k) · B (k×n)`.
    Nn,
    /// `C += Aᵀ · B`, `A` stored `k×m`.
    Tn,
    /// `C += Σ_s A_s · B_sᵀ` over `count` products, `B_s` stored `n×k`.
    NtSum,
}

/// `(kind, m, k, n, count, what)`: the largest products of the two steps.
const PRODUCTS: [(Kind, usize, usize, usize, usize, &str); 7] = [
    (Kind::Nn, 128, 1024, 392, 1, "dcgan D conv 2 forward, one group of 8 samples"),
    (Kind::Nn, 1024, 128, 392, 1, "dcgan G transposed conv 1, one group of 8 samples"),
    (Kind::NtSum, 128, 49, 1024, 64, "dcgan D conv 2 weight gradient, 64 samples"),
    (Kind::Tn, 1024, 64, 784, 1, "classic G 1024 → 784 weight gradient"),
    (Kind::Nn, 64, 1024, 784, 1, "classic G 1024 → 784 forward"),
    (Kind::NtSum, 64, 784, 1024, 1, "classic G 1024 → 784 input gradient"),
    (Kind::Nn, 64, 100, 6272, 1, "dcgan G dense 100 → 6272 forward"),
];

/// Seeded values uniform on `[-1, 1)`.
fn filled(len: usize, seed: u64) -> Vec<f32> {
    let mut v = vec![0.0; len];
    noise::fill_uniform(&mut noise::rng(seed), &mut v);
    v
}

/// Median and best GFLOP/s of one product on `exec`.
fn rate(kind: Kind, (m, k, n, count): (usize, usize, usize, usize), exec: &dyn Exec) -> (f64, f64) {
    let a = filled(m * k * count, 1);
    let b = filled(k * n * count, 2);
    let mut c = vec![0.0f32; m * n];
    let mut run = || match kind {
        Kind::Nn => kernels::matmul(&mut c, &a, &b, m, k, n, true, exec),
        Kind::Tn => kernels::matmul_tn(&mut c, &a, &b, m, k, n, true, exec),
        Kind::NtSum => kernels::matmul_nt_sum(&mut c, &a, m * k, &b, n * k, count, m, k, n, exec),
    };
    run();
    let flops = 2.0 * (m * k * n * count) as f64;
    let mut rates: Vec<f64> = (0..7)
        .map(|_| {
            let t = Instant::now();
            let mut calls = 0u32;
            while t.elapsed().as_secs_f64() < 0.3 {
                run();
                calls += 1;
            }
            flops * f64::from(calls) / t.elapsed().as_secs_f64() / 1e9
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    (rates[3], rates[6])
}

fn main() -> std::io::Result<()> {
    let threads = std::env::var("THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    match std::env::var("ISA").as_deref() {
        Ok("avx2") => kernels::limit_vector_isa(kernels::VectorIsa::Avx2),
        Ok("portable") => kernels::limit_vector_isa(kernels::VectorIsa::Portable),
        Ok(other) => {
            let msg = format!("ISA={other}: give avx2 or portable (or leave it unset)");
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, msg));
        }
        Err(_) => {}
    }
    let team = Team::new(threads)?;
    println!("vector kernels: {:?}; GFLOP/s, median (best) of 7 runs", kernels::vector_isa());
    println!(
        "{:<22} {:>16} {:>16}  product",
        "m × k × n × count",
        "1 thread",
        format!("{threads} threads")
    );
    for (kind, m, k, n, count, what) in PRODUCTS {
        let (s_med, s_best) = rate(kind, (m, k, n, count), &Serial);
        let (t_med, t_best) = rate(kind, (m, k, n, count), &team);
        let shape = format!("{m} × {k} × {n} × {count}");
        println!(
            "{shape:<22} {s_med:>8.1} ({s_best:>5.1}) {t_med:>8.1} ({t_best:>5.1})  {kind:?}: {what}"
        );
    }
    Ok(())
}
