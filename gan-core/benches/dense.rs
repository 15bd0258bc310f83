//! Dense-layer kernels at the MNIST GAN generator's shapes, batch 64, single-threaded.
//!
//! For every layer `c_in → c_out` this measures the three training products of one step
//! (forward `matmul`, weight gradient `matmul_tn`, input gradient `matmul_nt`), the same three
//! products with `matrixmultiply::sgemm` as a yardstick, and the exact inference kernel at batch
//! 1 and 64. Throughput is reported in elements per second where one element is one flop
//! (`2·m·n·k` per product), so `Gelem/s` reads as GFLOP/s.
//!
//! Run with `cargo bench -p gan-core --bench dense`; pass a filter such as `-- 512x1024` to run
//! one layer.

use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use gan_core::kernels::{self, Serial};
use gan_core::noise;

/// Batch size of the training steps measured here.
const BATCH: usize = 64;

/// The generator's dense layers (`c_in`, `c_out`).
const LAYERS: [(usize, usize); 4] = [(100, 256), (256, 512), (512, 1024), (1024, 784)];

/// Seeded values uniform on `[-1, 1)`.
fn filled(len: usize, seed: u64) -> Vec<f32> {
    let mut v = vec![0.0; len];
    noise::fill_uniform(&mut noise::rng(seed), &mut v);
    v
}

/// `C (m×n) = beta·C + A·B` with `matrixmultiply`, operands described by (row, column) strides.
#[allow(clippy::too_many_arguments)]
fn sgemm(
    c: &mut [f32], a: &[f32], (rsa, csa): (usize, usize), b: &[f32], (rsb, csb): (usize, usize),
    (m, k, n): (usize, usize, usize), beta: f32,
) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    // SAFETY: the strides describe an m×k and a k×n matrix inside `a` and `b` (asserted
    // lengths), and `c` is a contiguous m×n row-major matrix that aliases neither.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            rsa as isize,
            csa as isize,
            b.as_ptr(),
            rsb as isize,
            csb as isize,
            beta,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

/// Times `f` writing into `out` as the benchmark `name` of group `g`.
fn time(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, out: &mut [f32], f: impl Fn(&mut [f32])) {
    g.bench_function(name, |bn| bn.iter(|| f(black_box(&mut *out))));
}

fn dense(cr: &mut Criterion) {
    for (c_in, c_out) in LAYERS {
        let n = BATCH;
        let x = filled(n * c_in, 1); // N × C_in
        let w = filled(c_in * c_out, 2); // C_in × C_out
        let dout = filled(n * c_out, 3); // N × C_out
        let bias = filled(c_out, 4); // C_out
        let mut out = vec![0.0f32; n * c_out]; // N × C_out
        let mut dw = vec![0.0f32; c_in * c_out]; // C_in × C_out
        let mut dx = vec![0.0f32; n * c_in]; // N × C_in
        let flops = (2 * n * c_in * c_out) as u64;

        let mut g = cr.benchmark_group(format!("dense/{c_in}x{c_out}"));
        g.throughput(Throughput::Elements(flops));

        // (a) forward: out (N×C_out) += x (N×C_in) · w (C_in×C_out), as dense_forward does.
        let (xb, wb, db) = (black_box(&x[..]), black_box(&w[..]), black_box(&dout[..]));
        time(&mut g, "fwd/gan-core", &mut out, |o| {
            kernels::matmul(o, xb, wb, n, c_in, c_out, true, &Serial);
        });
        time(&mut g, "fwd/matrixmultiply", &mut out, |o| {
            sgemm(o, xb, (c_in, 1), wb, (c_out, 1), (n, c_in, c_out), 1.0);
        });

        // (b) weight gradient: dw (C_in×C_out) += xᵀ · dout, x stored N×C_in.
        time(&mut g, "dw/gan-core", &mut dw, |o| {
            kernels::matmul_tn(o, xb, db, c_in, n, c_out, true, &Serial);
        });
        time(&mut g, "dw/matrixmultiply", &mut dw, |o| {
            sgemm(o, xb, (1, c_in), db, (c_out, 1), (c_in, n, c_out), 1.0);
        });

        // (c) input gradient: dx (N×C_in) = dout · wᵀ, w stored C_in×C_out.
        time(&mut g, "dx/gan-core", &mut dx, |o| {
            kernels::matmul_nt(o, db, wb, n, c_out, c_in, false, &Serial);
        });
        time(&mut g, "dx/matrixmultiply", &mut dx, |o| {
            sgemm(o, db, (c_out, 1), wb, (1, c_out), (n, c_out, c_in), 0.0);
        });

        // (d) the exact inference kernel at batch 64 and at batch 1.
        time(&mut g, "exact/b64", &mut out, |o| {
            kernels::matmul_exact(o, xb, wb, &bias, n, c_in, c_out);
        });
        g.throughput(Throughput::Elements(flops / BATCH as u64));
        time(&mut g, "exact/b1", &mut out[..c_out], |o| {
            kernels::matmul_exact(o, &xb[..c_in], wb, &bias, 1, c_in, c_out);
        });
        g.finish();
    }
}

criterion_group! {
    name = benches;
    // Short runs: the numbers are medians over repeated invocations of the whole bench anyway,
    // and the machine this was tuned on is a small shared VM.
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(30);
    targets = dense
}
criterion_main!(benches);
