//! Training and generation throughput: `gan-train bench`.
//!
//! For each architecture preset it measures three things:
//! - **training images/s**: full [`Gan::train_step`] calls (noise, G forward, D forward on the
//!   real and the generated batch, D backward and Adam step, then a G step with fresh noise
//!   through D to G and Adam) on a fixed batch of synthetic "real" images (uniform pixels in
//!   `[-1, 1]`), so no dataset is needed; the kernels run on a [`Team`] of spinning threads, as
//!   `gan-train train` runs them.
//! - **generator samples/s at batch 1** with the exact inference path,
//!   [`Generator::generate_with`] on an exported weights file: noise, exact dense kernel, pixel
//!   conversion. This is what `gan-train sample` and the firmware run, one sample at a time;
//!   here the products' output columns are split over a [`Team`] of spinning threads (the
//!   bits are those of the one-thread firmware path).
//! - **generator samples/s at batch N** with the training forward ([`model::forward`] on the
//!   same team), noise included.
//!
//! Timing policy (shared with the PyTorch peer in `bench/peers/`): run the workload for a
//! warm-up period, use the warm-up rate to choose an iteration count that lasts about
//! `--rep-secs`, then time `--reps` repetitions of that count and report the median rate with
//! the slowest and fastest repetition.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use gan_core::generate::Generator;
use gan_core::kernels::{self, VectorIsa};
use gan_core::model;
use gan_core::noise;

use crate::config::{Arch, DataShape, TrainConfig};
use crate::sample::AlignedBytes;
use crate::team::Team;
use crate::trainer::Gan;

/// `gan-train bench` options.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// Architectures to measure (comma-separated): classic (the seed MLP GAN), mcu, dcgan.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Arch::Classic, Arch::Mcu])]
    pub arch: Vec<Arch>,
    /// Training batch size (also the batch of the batched generator measurement).
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Warm-up time per measurement, in seconds.
    #[arg(long, default_value_t = 1.0)]
    pub warmup_secs: f64,
    /// Approximate duration of one timed repetition, in seconds.
    #[arg(long, default_value_t = 1.0)]
    pub rep_secs: f64,
    /// Timed repetitions per measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Seed for the weights, the synthetic data and the noise.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Widest vector instruction set the kernels may use (default: all the CPU has), e.g.
    /// `avx2` to measure the AVX2 kernels on an AVX-512 machine.
    #[arg(long, value_enum)]
    pub isa: Option<IsaArg>,
}

/// A kernel instruction-set level for `--isa`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IsaArg {
    /// Plain Rust.
    Portable,
    /// AVX2 + FMA.
    Avx2,
    /// AVX-512F.
    Avx512,
}

impl From<IsaArg> for VectorIsa {
    fn from(a: IsaArg) -> Self {
        match a {
            IsaArg::Portable => VectorIsa::Portable,
            IsaArg::Avx2 => VectorIsa::Avx2,
            IsaArg::Avx512 => VectorIsa::Avx512,
        }
    }
}

/// Rates of the timed repetitions of one measurement.
#[derive(Clone, Debug, PartialEq)]
pub struct Rate {
    /// Units per second of every repetition, in the order they ran.
    pub reps: Vec<f64>,
    /// Calls of the workload per repetition.
    pub iters: u64,
}

impl Rate {
    fn sorted(&self) -> Vec<f64> {
        let mut v = self.reps.clone();
        v.sort_by(f64::total_cmp);
        v
    }
    /// Median over repetitions (mean of the middle two for an even count).
    pub fn median(&self) -> f64 {
        let v = self.sorted();
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
        }
    }
    /// Slowest repetition.
    pub fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }
    /// Fastest repetition.
    pub fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }
    /// `(max − min) / median`.
    pub fn spread(&self) -> f64 {
        (self.max() - self.min()) / self.median()
    }
}

/// The timing policy.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// Warm-up duration.
    pub warmup: Duration,
    /// Target duration of one repetition.
    pub rep: Duration,
    /// Number of timed repetitions.
    pub reps: usize,
}

/// Times `work` (which processes `units` items per call) under `policy`.
pub fn measure(policy: Policy, units: f64, mut work: impl FnMut() -> Result<()>) -> Result<Rate> {
    ensure!(policy.reps >= 1, "at least one repetition is needed");
    let start = Instant::now();
    let mut calls = 0u64;
    while calls == 0 || start.elapsed() < policy.warmup {
        work()?;
        calls += 1;
    }
    let per_call = start.elapsed().as_secs_f64() / calls as f64;
    let iters = ((policy.rep.as_secs_f64() / per_call).ceil() as u64).max(1);
    let mut reps = Vec::with_capacity(policy.reps);
    for _ in 0..policy.reps {
        let t = Instant::now();
        for _ in 0..iters {
            work()?;
        }
        reps.push(units * iters as f64 / t.elapsed().as_secs_f64());
    }
    Ok(Rate { reps, iters })
}

/// All measurements of one architecture.
#[derive(Clone, Debug, PartialEq)]
pub struct ArchResult {
    /// Preset name.
    pub arch: &'static str,
    /// Generator parameters.
    pub g_params: usize,
    /// Discriminator parameters.
    pub d_params: usize,
    /// Generator multiply-accumulates per sample.
    pub g_macs: usize,
    /// Training images per second (full D + G step).
    pub train: Rate,
    /// Images per second if a training step were only its matrix products: the products one
    /// step ran ([`kernels::set_trace`]), replayed alone on the same threads.
    pub gemm_bound: Rate,
    /// Floating-point operations per image in those products (2·m·k·n each).
    pub step_flops: f64,
    /// Generator samples per second, batch 1, exact inference path.
    pub gen_b1: Rate,
    /// Generator samples per second, batch N, training forward on the pool.
    pub gen_bn: Rate,
}

fn arch_name(a: Arch) -> Result<&'static str> {
    Ok(match a {
        Arch::Classic => "classic",
        Arch::Mcu => "mcu",
        Arch::Dcgan => "dcgan",
        Arch::Pico => "pico",
        Arch::Custom => {
            bail!("bench measures the presets only: use --arch classic, mcu, dcgan or pico")
        }
    })
}

/// Measures one architecture preset.
pub fn bench_arch(arch: Arch, batch: usize, seed: u64, policy: Policy) -> Result<ArchResult> {
    let name = arch_name(arch)?;
    // The PyTorch peers' workload: BCE, no weight average, no augmentation.
    let cfg = TrainConfig { batch, seed, ..TrainConfig::classic_recipe(arch) }.resolved();
    let shape = DataShape::MNIST;
    let px = shape.pixels();
    let mut gan = Gan::new(&cfg, shape)?;
    let g_def = cfg.generator(shape)?;
    let gs = g_def.spec();
    let d_params = cfg.discriminator(shape)?.spec().param_len();

    // Synthetic real images: uniform pixels in [-1, 1), the Tanh output range.
    let mut rng = noise::rng(seed ^ 0x5EED_DA7A);
    let mut real = vec![0.0f32; batch * px];
    noise::fill_uniform(&mut rng, &mut real);
    let labels = vec![0u8; batch];

    // Every pass runs on a team of spinning threads, as `gan-train train` does: a small
    // network's products are only tens of microseconds, too short to wait for a sleeping pool
    // worker to wake up (see `team`).
    let team = Team::with_rayon_threads().context("starting the threads")?;
    eprintln!("{name}: training step, batch {batch}");
    let train =
        measure(policy, batch as f64, || gan.train_step(&real, &labels, &team).map(|_| ()))?;

    eprintln!("{name}: the training step's matrix products alone");
    let (gemm_bound, step_flops) =
        measure_gemm_bound(&mut gan, &real, &labels, &team, policy, batch)?;

    // Batch 1 through the exported weights file, exactly as `gan-train sample` runs it.
    eprintln!("{name}: generator, batch 1, exact inference path");
    let bytes = crate::run::export_bytes(&gan.checkpoint())?;
    let file = AlignedBytes::new(&bytes);
    let weights = file.weights()?;
    let g = Generator::new(&weights)?;
    let mut z = vec![0.0f32; g.input_len()];
    let mut y = vec![0.0f32; g.output_len()];
    let mut scratch = vec![0.0f32; g.scratch_len()];
    let mut pixels = vec![0u8; g.output_len()];
    let mut grng = noise::rng(seed);
    let gen_b1 = measure(policy, 1.0, || {
        g.generate_with(&mut grng, 0, &mut z, &mut y, &mut scratch, &mut pixels, &team)
            .map_err(anyhow::Error::from)
    })?;

    // Batch N with the training forward.
    eprintln!("{name}: generator, batch {batch}, training forward");
    let mut acts = vec![0.0f32; gs.act_len(batch)];
    let params = gan.state.g.params.clone();
    let kind = cfg.noise.into();
    let gen_bn = measure(policy, batch as f64, || {
        noise::fill(kind, &mut grng, model::input_mut(&gs, &mut acts, batch));
        model::forward(&gs, &params, &mut acts, batch, &team).map_err(anyhow::Error::from)
    })?;

    Ok(ArchResult {
        arch: name,
        g_params: gs.param_len(),
        d_params,
        g_macs: gs.macs(),
        train,
        gemm_bound,
        step_flops,
        gen_b1,
        gen_bn,
    })
}

/// `A`, `B` and `C` of one replayed product.
type Operands = (Vec<f32>, Vec<f32>, Vec<f32>);

/// The products of one training step, recorded by [`record`].
static STEP_PRODUCTS: std::sync::Mutex<Vec<kernels::Traced>> = std::sync::Mutex::new(Vec::new());

fn record(t: kernels::Traced) {
    if let Ok(mut v) = STEP_PRODUCTS.lock() {
        v.push(t);
    }
}

/// Records the products of one training step, then times them alone (random operands of the
/// same shapes, the same entry points, the same executor) as images per second. Products a
/// convolution runs one sample at a time inside its own split over the samples (on one
/// thread each) are replayed the same way: each run of them split over the threads. Also
/// returns the products' flops per image.
fn measure_gemm_bound(
    gan: &mut Gan, real: &[f32], labels: &[u8], team: &Team, policy: Policy, batch: usize,
) -> Result<(Rate, f64)> {
    kernels::set_trace(Some(record));
    let step = gan.train_step(real, labels, team);
    kernels::set_trace(None);
    step?;
    let calls = std::mem::take(&mut *STEP_PRODUCTS.lock().map_err(|_| anyhow::anyhow!("lock"))?);
    ensure!(!calls.is_empty(), "the training step ran no matrix products");
    let flops: f64 = calls.iter().map(|t| 2.0 * (t.count * t.m * t.k * t.n) as f64).sum();
    let mut rng = noise::rng(0x6E44);
    let bufs: Vec<std::sync::Mutex<Operands>> = calls
        .iter()
        .map(|t| {
            let mut r = |len: usize| {
                let mut v = vec![0.0f32; len];
                noise::fill_uniform(&mut rng, &mut v);
                v
            };
            std::sync::Mutex::new((r(t.count * t.m * t.k), r(t.count * t.k * t.n), r(t.m * t.n)))
        })
        .collect();
    let run = |i: usize, exec: &dyn kernels::Exec| {
        let t = calls[i];
        let Ok(mut guard) = bufs[i].lock() else { return };
        let (a, b, c) = &mut *guard;
        let (m, k, n) = (t.m, t.k, t.n);
        match t.kind {
            0 => kernels::matmul(c, a, b, m, k, n, t.accumulate, exec),
            1 => kernels::matmul_tn(c, a, b, m, k, n, t.accumulate, exec),
            _ if t.count > 1 => {
                kernels::matmul_nt_sum(c, a, m * k, b, n * k, t.count, m, k, n, exec);
            }
            _ => kernels::matmul_nt(c, a, b, m, k, n, t.accumulate, exec),
        }
    };
    let threads = kernels::Exec::threads(team).max(1);
    let rate = measure(policy, batch as f64, || {
        let mut i = 0;
        while i < calls.len() {
            if !calls[i].serial {
                run(i, team);
                i += 1;
                continue;
            }
            // A run of one-thread products: contiguous shares, one per thread.
            let end = (i..calls.len()).find(|&j| !calls[j].serial).unwrap_or(calls.len());
            let (start, len) = (i, end - i);
            kernels::Exec::for_each(team, threads, &|task| {
                let (lo, hi) = (start + task * len / threads, start + (task + 1) * len / threads);
                (lo..hi).for_each(|j| run(j, &kernels::Serial));
            });
            i = end;
        }
        Ok(())
    })?;
    Ok((rate, flops / batch as f64))
}

fn fmt_rate(x: f64) -> String {
    if x >= 100.0 { format!("{x:.0}") } else { format!("{x:.1}") }
}

/// The results as a plain-text table.
pub fn table(results: &[ArchResult], batch: usize) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<8} {:<34} {:>10} {:>10} {:>10} {:>7}",
        "model", "measurement", "median", "min", "max", "spread"
    );
    for r in results {
        let rows = [
            ("training (images/s, D+G step)".to_string(), &r.train),
            ("  its products alone (images/s)".to_string(), &r.gemm_bound),
            ("generator batch 1 (samples/s)".to_string(), &r.gen_b1),
            (format!("generator batch {batch} (samples/s)"), &r.gen_bn),
        ];
        for (what, rate) in rows {
            let _ = writeln!(
                s,
                "{:<8} {:<34} {:>10} {:>10} {:>10} {:>6.1}%",
                r.arch,
                what,
                fmt_rate(rate.median()),
                fmt_rate(rate.min()),
                fmt_rate(rate.max()),
                100.0 * rate.spread()
            );
        }
        let _ = writeln!(
            s,
            "{:<8} {:<34} {:>9.0}%",
            r.arch,
            "  share of that bound (medians)",
            100.0 * r.train.median() / r.gemm_bound.median()
        );
        let gflops = |rate: &Rate| rate.median() * r.step_flops / 1e9;
        let _ = writeln!(
            s,
            "{:<8} {:<34} {:>10.1} Mflop/image; {:.0} GFLOP/s in training, {:.0} alone",
            r.arch,
            "  the step's products",
            r.step_flops / 1e6,
            gflops(&r.train),
            gflops(&r.gemm_bound)
        );
    }
    s
}

fn json_rate(r: &Rate) -> String {
    let reps: Vec<String> = r.reps.iter().map(|v| format!("{v:.3}")).collect();
    format!(
        "{{\"median\": {:.3}, \"min\": {:.3}, \"max\": {:.3}, \"iters_per_rep\": {}, \"reps\": [{}]}}",
        r.median(),
        r.min(),
        r.max(),
        r.iters,
        reps.join(", ")
    )
}

/// The results as JSON (the same layout the PyTorch peer writes).
pub fn to_json(results: &[ArchResult], batch: usize, threads: usize, policy: Policy) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{{");
    let _ = writeln!(s, "  \"tool\": \"gan-train bench\",");
    let _ = writeln!(s, "  \"batch\": {batch},");
    let _ = writeln!(s, "  \"threads\": {threads},");
    let _ = writeln!(s, "  \"kernels\": \"{:?}\",", kernels::vector_isa());
    let _ = writeln!(s, "  \"warmup_secs\": {},", policy.warmup.as_secs_f64());
    let _ = writeln!(s, "  \"rep_secs\": {},", policy.rep.as_secs_f64());
    let _ = writeln!(s, "  \"reps\": {},", policy.reps);
    let _ = writeln!(s, "  \"results\": [");
    for (i, r) in results.iter().enumerate() {
        let _ = writeln!(s, "    {{");
        let _ = writeln!(s, "      \"arch\": \"{}\",", r.arch);
        let _ = writeln!(s, "      \"g_params\": {},", r.g_params);
        let _ = writeln!(s, "      \"d_params\": {},", r.d_params);
        let _ = writeln!(s, "      \"train_images_per_sec\": {},", json_rate(&r.train));
        let _ =
            writeln!(s, "      \"train_gemm_bound_images_per_sec\": {},", json_rate(&r.gemm_bound));
        let _ = writeln!(s, "      \"step_flops_per_image\": {:.0},", r.step_flops);
        let _ = writeln!(s, "      \"gen_b1_samples_per_sec\": {},", json_rate(&r.gen_b1));
        let _ = writeln!(s, "      \"gen_bn_samples_per_sec\": {}", json_rate(&r.gen_bn));
        let comma = if i + 1 < results.len() { "," } else { "" };
        let _ = writeln!(s, "    }}{comma}");
    }
    let _ = writeln!(s, "  ]");
    let _ = writeln!(s, "}}");
    s
}

/// Runs the benchmarks and prints a table (and writes JSON with `--json`).
pub fn run(args: &BenchArgs) -> Result<()> {
    ensure!(args.batch >= 2, "--batch must be at least 2");
    ensure!(args.reps >= 1, "--reps must be at least 1");
    ensure!(
        args.warmup_secs >= 0.0 && args.rep_secs > 0.0,
        "--warmup-secs must be >= 0 and --rep-secs > 0"
    );
    if let Some(t) = args.threads {
        ensure!(t >= 1, "--threads must be at least 1");
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .context("setting up the thread pool")?;
    }
    if let Some(isa) = args.isa {
        kernels::limit_vector_isa(isa.into());
    }
    let threads = rayon::current_num_threads();
    let policy = Policy {
        warmup: Duration::from_secs_f64(args.warmup_secs),
        rep: Duration::from_secs_f64(args.rep_secs),
        reps: args.reps,
    };
    let mut results = Vec::new();
    for &arch in &args.arch {
        results.push(bench_arch(arch, args.batch, args.seed, policy)?);
    }
    println!(
        "gan-train bench: batch {}, {threads} threads, {:?} kernels, {} reps of ~{} s after {} s warm-up",
        args.batch,
        kernels::vector_isa(),
        args.reps,
        args.rep_secs,
        args.warmup_secs
    );
    for r in &results {
        println!(
            "  {}: G {} parameters ({} MACs/sample), D {} parameters",
            r.arch,
            crate::inspect::group(r.g_params),
            crate::inspect::group(r.g_macs),
            crate::inspect::group(r.d_params)
        );
    }
    print!("{}", table(&results, args.batch));
    if let Some(path) = &args.json {
        crate::run::write_atomic(path, to_json(&results, args.batch, threads, policy).as_bytes())?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_statistics() {
        let r = Rate { reps: vec![3.0, 1.0, 2.0, 10.0], iters: 4 };
        assert_eq!(r.median(), 2.5);
        assert_eq!(r.min(), 1.0);
        assert_eq!(r.max(), 10.0);
        assert!((r.spread() - 9.0 / 2.5).abs() < 1e-12);
    }

    #[test]
    fn bench_runs_on_the_small_model() {
        let policy = Policy { warmup: Duration::ZERO, rep: Duration::from_millis(1), reps: 2 };
        let r = bench_arch(Arch::Mcu, 4, 1, policy).unwrap();
        for rate in [&r.train, &r.gemm_bound, &r.gen_b1, &r.gen_bn] {
            assert_eq!(rate.reps.len(), 2);
            assert!(rate.median() > 0.0 && rate.median().is_finite());
        }
        let json = to_json(std::slice::from_ref(&r), 4, 1, policy);
        assert!(json.contains("\"arch\": \"mcu\""));
        assert!(table(&[r], 4).contains("generator batch 4"));
        assert!(bench_arch(Arch::Custom, 4, 1, policy).is_err());
    }
}
