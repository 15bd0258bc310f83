//! The toy GAN: two-dimensional points on the parabola `y = x²`, with `x` uniform on
//! `[-0.5, 0.5]`.
//!
//! Small enough to train in a few seconds on one core, and its progress can be read off a
//! scatter plot at a glance, which makes it the first thing to run when a change to the math
//! core is suspected of breaking learning.
//!
//! - Discriminator: `2 → 25 → 1`, LeakyReLU(0.2) on the hidden layer, one logit out.
//! - Generator: `latent (5) → 15 → 2`, LeakyReLU(0.2) on the hidden layer, linear out.
//! - Loss: numerically stable BCE on D's logits ([`loss::bce_logits`]), non-saturating for G.
//! - Optimizer: Adam for both networks.
//!
//! The steps are the image trainer's ([`Gan::train_step`], with these two networks and a
//! "data set" of points drawn fresh for every batch); only the data and the evaluation are the
//! toy's own. Everything runs on [`Serial`] (the networks are far too small for threads to pay
//! off), so a seed fixes every bit of a run.
//!
//! Progress is measured on a fixed evaluation set (real points and noise vectors drawn once from
//! the seed): the losses and D's accuracies on it, and the quality number
//! `mean |y − x²|` over the generated points (0 for points exactly on the curve). Because a
//! generator that puts every point on one spot of the curve would also score 0, the report also
//! gives the spread of the generated `x` relative to the real one (1 when the widths match).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use gan_core::init::Init;
use gan_core::kernels::Serial;
use gan_core::loss;
use gan_core::model;
use gan_core::noise::{self, NoiseRng};
use gan_core::spec::{Layer, Shape, Spec};

use crate::config::{Arch, DataShape, LossKind, NetDef, Noise, OptKind, TrainConfig};
use crate::report;
use crate::trainer::Gan;

/// Half-width of the real `x` range: `x ∈ [-X_RANGE, X_RANGE)`.
pub const X_RANGE: f32 = 0.5;

/// Standard deviation of a uniform `x` on `[-X_RANGE, X_RANGE)`: `2·X_RANGE / √12`.
pub const REAL_X_STD: f32 = 2.0 * X_RANGE * 0.288_675_13;

/// Everything that defines a toy run.
#[derive(Clone, Debug, PartialEq)]
pub struct ToyConfig {
    /// Training steps (one D update and one G update each).
    pub steps: u64,
    /// Points per batch (real and generated).
    pub batch: usize,
    /// Seed for initialisation, data, noise and the evaluation set.
    pub seed: u64,
    /// Noise distribution for the generator input.
    pub noise: Noise,
    /// Noise values per generated point.
    pub latent: u32,
    /// Generator hidden width.
    pub g_hidden: u32,
    /// Discriminator hidden width.
    pub d_hidden: u32,
    /// Generator learning rate.
    pub g_lr: f32,
    /// Discriminator learning rate.
    pub d_lr: f32,
    /// Adam β1 (both networks).
    pub beta1: f32,
    /// Adam β2 (both networks).
    pub beta2: f32,
    /// Report every this many steps (step 0 and the last step are always reported).
    pub report_every: u64,
    /// Size of the fixed evaluation set (real points and noise vectors).
    pub eval_points: usize,
}

impl Default for ToyConfig {
    fn default() -> Self {
        ToyConfig {
            steps: 10_000,
            batch: 128,
            seed: 1,
            noise: Noise::Uniform,
            latent: 5,
            g_hidden: 15,
            d_hidden: 25,
            g_lr: 1e-3,
            d_lr: 1e-3,
            beta1: 0.5,
            beta2: 0.999,
            report_every: 500,
            eval_points: 512,
        }
    }
}

impl ToyConfig {
    /// Checks ranges; returns a message a user can act on.
    pub fn validate(&self) -> Result<()> {
        ensure!(self.batch >= 2, "batch size must be at least 2");
        ensure!(self.eval_points >= 2, "the evaluation set needs at least 2 points");
        ensure!(self.report_every >= 1, "the report interval must be at least 1");
        ensure!(
            self.latent >= 1 && self.g_hidden >= 1 && self.d_hidden >= 1,
            "layer widths must be at least 1"
        );
        ensure!(
            self.g_lr > 0.0 && self.g_lr.is_finite() && self.d_lr > 0.0 && self.d_lr.is_finite(),
            "learning rates must be positive and finite"
        );
        ensure!(
            (0.0..1.0).contains(&self.beta1) && (0.0..1.0).contains(&self.beta2),
            "Adam betas must be in [0, 1)"
        );
        Ok(())
    }

    /// The generator: `latent → g_hidden → 2`.
    pub fn generator(&self) -> Result<NetDef> {
        net(
            self.latent,
            vec![
                Layer::Dense { out: self.g_hidden },
                Layer::LeakyRelu { alpha: 0.2 },
                Layer::Dense { out: 2 },
            ],
        )
    }

    /// The discriminator: `2 → d_hidden → 1` (a logit).
    pub fn discriminator(&self) -> Result<NetDef> {
        net(
            2,
            vec![
                Layer::Dense { out: self.d_hidden },
                Layer::LeakyRelu { alpha: 0.2 },
                Layer::Dense { out: 1 },
            ],
        )
    }
}

fn net(inputs: u32, layers: Vec<Layer>) -> Result<NetDef> {
    let def = NetDef { input: Shape::flat(inputs), layers };
    Spec::new(def.input, &def.layers).map_err(|e| anyhow::anyhow!("toy network: {e}"))?;
    Ok(def)
}

/// Progress on the fixed evaluation set at one step.
#[derive(Clone, Debug, PartialEq)]
pub struct ToyReport {
    /// Training steps done.
    pub step: u64,
    /// Discriminator loss: BCE on real (target 1) plus BCE on generated (target 0).
    pub d_loss: f32,
    /// Non-saturating generator loss `−mean ln σ(D(G(z)))`.
    pub g_loss: f32,
    /// Fraction of real points D classifies as real (logit > 0).
    pub acc_real: f32,
    /// Fraction of generated points D classifies as generated (logit ≤ 0).
    pub acc_fake: f32,
    /// `mean |y − x²|` over the generated points: distance from the curve, 0 is perfect.
    pub mean_abs_err: f32,
    /// Standard deviation of the generated `x` divided by that of the real `x`: near 1 when the
    /// generator covers the whole range, near 0 when it collapses onto one spot.
    pub x_spread: f32,
    /// The generated evaluation points `(x, y)`.
    pub fake: Vec<(f32, f32)>,
}

/// What a toy run leaves behind.
#[derive(Clone, Debug, PartialEq)]
pub struct ToyResult {
    /// Evaluation before the first step.
    pub initial: ToyReport,
    /// Evaluation after the last step.
    pub last: ToyReport,
    /// The real evaluation points `(x, y)`.
    pub real: Vec<(f32, f32)>,
    /// Trained generator parameters (gan-core layout).
    pub g_params: Vec<f32>,
    /// Trained discriminator parameters.
    pub d_params: Vec<f32>,
}

/// Writes `n` real points (`x` uniform on `[-X_RANGE, X_RANGE)`, `y = x²`) into `out` (N × 2).
fn real_points(rng: &mut NoiseRng, out: &mut [f32]) {
    for p in out.chunks_exact_mut(2) {
        let x = (noise::unit(rng) - 0.5) * (2.0 * X_RANGE);
        p[0] = x;
        p[1] = x * x;
    }
}

fn pairs(flat: &[f32]) -> Vec<(f32, f32)> {
    flat.chunks_exact(2).map(|p| (p[0], p[1])).collect()
}

/// `mean |y − x²|` and the `x` spread (see [`ToyReport`]) of N × 2 points.
fn quality(points: &[f32]) -> (f32, f32) {
    let n = (points.len() / 2) as f64;
    let (mut err, mut sx, mut sxx) = (0.0f64, 0.0f64, 0.0f64);
    for p in points.chunks_exact(2) {
        let (x, y) = (f64::from(p[0]), f64::from(p[1]));
        err += (y - x * x).abs();
        sx += x;
        sxx += x * x;
    }
    let mean = sx / n;
    let var = (sxx / n - mean * mean).max(0.0);
    ((err / n) as f32, (var.sqrt() / f64::from(REAL_X_STD)) as f32)
}

/// Activation buffers for the evaluation set.
struct Bufs {
    n: usize,
    /// Generator activations (input: N × latent).
    g_acts: Vec<f32>,
    /// Discriminator activations on real points (input: N × 2).
    d_real: Vec<f32>,
    /// Discriminator activations on generated points.
    d_fake: Vec<f32>,
    /// Loss gradients (N; the losses are computed, their gradients unused).
    grad_real: Vec<f32>,
    grad_fake: Vec<f32>,
}

impl Bufs {
    fn new(g: &Spec<'_>, d: &Spec<'_>, n: usize) -> Bufs {
        Bufs {
            n,
            g_acts: vec![0.0; g.act_len(n)],
            d_real: vec![0.0; d.act_len(n)],
            d_fake: vec![0.0; d.act_len(n)],
            grad_real: vec![0.0; n],
            grad_fake: vec![0.0; n],
        }
    }
}

/// The toy GAN's state during training.
struct Toy {
    /// The trainer, with the toy's networks.
    gan: Gan,
    /// Real points of one batch (N × 2) and their (unused) labels.
    real: Vec<f32>,
    labels: Vec<u8>,
    eval: Bufs,
    /// Fixed evaluation real points (N_eval × 2) and noise (N_eval × latent).
    eval_real: Vec<f32>,
    eval_z: Vec<f32>,
}

impl Toy {
    fn new(cfg: &ToyConfig) -> Result<Toy> {
        cfg.validate()?;
        let train = TrainConfig {
            arch: Arch::Custom,
            latent: cfg.latent,
            g_hidden: vec![cfg.g_hidden],
            d_hidden: vec![cfg.d_hidden],
            noise: cfg.noise,
            loss: LossKind::Bce,
            label_smoothing: 0.0,
            n_critic: 1,
            g_opt: OptKind::Adam,
            d_opt: OptKind::Adam,
            g_lr: cfg.g_lr,
            d_lr: cfg.d_lr,
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            init: Init::HeNormal,
            batch: cfg.batch,
            seed: cfg.seed,
            // Points, not images: no weight average, no image augmentation, no digit scores.
            ema: 0.0,
            d_translate: 0,
            d_dropout: 0.0,
            feature_matching: 0.0,
            quality_every: 0,
            ..TrainConfig::default()
        };
        // A "picture" of one row of two values, no classes.
        let data = DataShape { h: 1, w: 2, classes: 1 };
        let gan = Gan::with_nets(train, data, cfg.generator()?, cfg.discriminator()?)?;
        // The evaluation set has its own stream, so changing it never changes training.
        let mut eval_rng = noise::rng(cfg.seed ^ 0x9E37_79B9_7F4A_7C15);
        let mut eval_real = vec![0.0; cfg.eval_points * 2];
        real_points(&mut eval_rng, &mut eval_real);
        let mut eval_z = vec![0.0; cfg.eval_points * cfg.latent as usize];
        noise::fill(cfg.noise.into(), &mut eval_rng, &mut eval_z);
        let eval = Bufs::new(&gan.g.def.spec(), &gan.d.def.spec(), cfg.eval_points);
        Ok(Toy {
            gan,
            real: vec![0.0; cfg.batch * 2],
            labels: vec![0; cfg.batch],
            eval,
            eval_real,
            eval_z,
        })
    }

    /// One trainer step (a D update, then a G update) on a fresh batch of real points, drawn
    /// from the run's noise generator ahead of the step's own noise.
    fn step(&mut self) -> Result<()> {
        real_points(&mut self.gan.state.rng, &mut self.real);
        self.gan.train_step(&self.real, &self.labels, &Serial)?;
        Ok(())
    }

    /// Losses, accuracies and quality on the fixed evaluation set; changes no parameters.
    fn evaluate(&mut self, step: u64) -> Result<ToyReport> {
        let (gs, ds) = (self.gan.g.def.spec(), self.gan.d.def.spec());
        let (gp, dp) = (&self.gan.state.g.params, &self.gan.state.d.params);
        let b = &mut self.eval;
        let n = b.n;
        model::input_mut(&gs, &mut b.g_acts, n).copy_from_slice(&self.eval_z);
        model::forward(&gs, gp, &mut b.g_acts, n, &Serial)?;
        let fake = model::output(&gs, &b.g_acts, n);
        model::input_mut(&ds, &mut b.d_fake, n).copy_from_slice(fake);
        model::input_mut(&ds, &mut b.d_real, n).copy_from_slice(&self.eval_real);
        model::forward(&ds, dp, &mut b.d_real, n, &Serial)?;
        model::forward(&ds, dp, &mut b.d_fake, n, &Serial)?;
        let sr = model::output(&ds, &b.d_real, n);
        let sf = model::output(&ds, &b.d_fake, n);
        let d_loss = loss::bce_logits(&mut b.grad_real, sr, 1.0)?
            + loss::bce_logits(&mut b.grad_fake, sf, 0.0)?;
        let g_loss = loss::ns_generator_logits(&mut b.grad_fake, sf)?;
        let (mean_abs_err, x_spread) = quality(fake);
        Ok(ToyReport {
            step,
            d_loss,
            g_loss,
            acc_real: loss::accuracy_above(sr, 0.0),
            acc_fake: 1.0 - loss::accuracy_above(sf, 0.0),
            mean_abs_err,
            x_spread,
            fake: pairs(fake),
        })
    }
}

/// Trains the toy GAN. `on_report` sees the evaluation before the first step, after every
/// `cfg.report_every` steps and after the last step.
pub fn train_toy(cfg: &ToyConfig, mut on_report: impl FnMut(&ToyReport)) -> Result<ToyResult> {
    let mut toy = Toy::new(cfg)?;
    let initial = toy.evaluate(0)?;
    on_report(&initial);
    let mut last = initial.clone();
    for step in 1..=cfg.steps {
        toy.step()?;
        if step % cfg.report_every == 0 || step == cfg.steps {
            last = toy.evaluate(step)?;
            if !(last.d_loss.is_finite() && last.g_loss.is_finite()) {
                bail!("the toy GAN diverged at step {step} (a loss is not finite)");
            }
            on_report(&last);
        }
    }
    Ok(ToyResult {
        initial,
        last,
        real: pairs(&toy.eval_real),
        g_params: toy.gan.state.g.params,
        d_params: toy.gan.state.d.params,
    })
}

/// `gan-train toy` options.
#[derive(Clone, Debug, clap::Args)]
pub struct ToyArgs {
    /// Training steps (one discriminator and one generator update each).
    #[arg(long, default_value_t = 10_000)]
    pub steps: u64,
    /// Points per batch.
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// Seed (initialisation, data, noise).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print progress every N steps.
    #[arg(long, default_value_t = 500)]
    pub every: u64,
    /// Save a scatter plot every N steps (default: a fifth of the run).
    #[arg(long)]
    pub plot_every: Option<u64>,
    /// Noise distribution of the generator input.
    #[arg(long, value_enum, default_value_t = Noise::Uniform)]
    pub noise: Noise,
    /// Learning rate of both networks.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f32,
    /// Adam β1.
    #[arg(long, default_value_t = 0.5)]
    pub beta1: f32,
    /// Output directory for the scatter plots and `toy_losses.csv`.
    #[arg(long, default_value = "runs/toy")]
    pub out: PathBuf,
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// First line of `toy_losses.csv`.
pub const CSV_HEADER: &str = "step,d_loss,g_loss,acc_real,acc_fake,mean_abs_err,x_spread";

fn csv_row(r: &ToyReport) -> String {
    format!(
        "{},{},{},{},{},{},{}",
        r.step, r.d_loss, r.g_loss, r.acc_real, r.acc_fake, r.mean_abs_err, r.x_spread
    )
}

fn scatter(path: &Path, real: &[(f32, f32)], r: &ToyReport) -> Result<()> {
    let title = format!("y = x², step {}: mean |y − x²| = {:.4}", r.step, r.mean_abs_err);
    report::plot_scatter(path, real, &r.fake, &title)
        .with_context(|| format!("writing {}", path.display()))
}

/// Runs the toy GAN: prints progress, writes scatter plots and `toy_losses.csv` to `--out`.
pub fn run(args: &ToyArgs) -> Result<()> {
    ensure!(args.every >= 1, "--every must be at least 1");
    let plot_every = args.plot_every.unwrap_or((args.steps / 5).max(1));
    ensure!(plot_every >= 1, "--plot-every must be at least 1");
    let cfg = ToyConfig {
        steps: args.steps,
        batch: args.batch,
        seed: args.seed,
        noise: args.noise,
        g_lr: args.lr,
        d_lr: args.lr,
        beta1: args.beta1,
        report_every: gcd(args.every, plot_every),
        ..ToyConfig::default()
    };
    cfg.validate()?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;

    // The real evaluation points are known before training; the plots need them.
    let real = Toy::new(&cfg)?.eval_real;
    let real = pairs(&real);

    let mut csv = format!("{CSV_HEADER}\n");
    let mut plots = Vec::new();
    let mut failure: Option<anyhow::Error> = None;
    println!(
        "{:>7}  {:>7}  {:>7}  {:>8}  {:>8}  {:>12}  {:>8}",
        "step", "D loss", "G loss", "D acc r", "D acc f", "mean|y-x²|", "x spread"
    );
    let started = std::time::Instant::now();
    let result = train_toy(&cfg, |r| {
        let _ = writeln!(csv, "{}", csv_row(r));
        if r.step % args.every == 0 || r.step == args.steps {
            println!(
                "{:>7}  {:>7.4}  {:>7.4}  {:>8.3}  {:>8.3}  {:>12.5}  {:>8.3}",
                r.step, r.d_loss, r.g_loss, r.acc_real, r.acc_fake, r.mean_abs_err, r.x_spread
            );
        }
        if failure.is_none() && (r.step % plot_every == 0 || r.step == args.steps) {
            let path = args.out.join(format!("scatter_{:06}.png", r.step));
            match scatter(&path, &real, r) {
                Ok(()) => plots.push(path),
                Err(e) => failure = Some(e),
            }
        }
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    let final_plot = args.out.join("scatter_final.png");
    scatter(&final_plot, &result.real, &result.last)?;
    let csv_path = args.out.join("toy_losses.csv");
    crate::run::write_atomic(&csv_path, csv.as_bytes())?;

    eprintln!(
        "done: {} steps in {:.1} s; mean |y − x²| {:.4} → {:.4}, x spread {:.2} (1 = real)",
        args.steps,
        started.elapsed().as_secs_f64(),
        result.initial.mean_abs_err,
        result.last.mean_abs_err,
        result.last.x_spread
    );
    eprintln!(
        "  scatter plots: {} files in {} (last: {})",
        plots.len() + 1,
        args.out.display(),
        final_plot.display()
    );
    eprintln!("  losses:        {}", csv_path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick() -> ToyConfig {
        ToyConfig { steps: 3000, report_every: 1000, ..ToyConfig::default() }
    }

    #[test]
    fn toy_gan_learns_the_parabola() {
        let cfg = quick();
        let mut reports = Vec::new();
        let res = train_toy(&cfg, |r| reports.push((r.step, r.mean_abs_err))).unwrap();
        let steps: Vec<u64> = reports.iter().map(|r| r.0).collect();
        assert_eq!(steps, [0, 1000, 2000, 3000]);
        let (before, after) = (res.initial.mean_abs_err, res.last.mean_abs_err);
        assert!(before > 0.15, "untrained error {before} is suspiciously small");
        assert!(after < 0.03, "mean |y - x²| after training is {after} (was {before})");
        assert!(after < before / 5.0, "error only dropped from {before} to {after}");
        assert!(
            (0.6..1.4).contains(&res.last.x_spread),
            "generated x spread {} is not near the real one",
            res.last.x_spread
        );
    }

    #[test]
    fn toy_gan_same_seed_same_bits() {
        let cfg = ToyConfig { steps: 200, report_every: 100, ..ToyConfig::default() };
        let a = train_toy(&cfg, |_| {}).unwrap();
        let b = train_toy(&cfg, |_| {}).unwrap();
        assert_eq!(a, b);
        let c = train_toy(&ToyConfig { seed: cfg.seed + 1, ..cfg.clone() }, |_| {}).unwrap();
        assert_ne!(a.g_params, c.g_params);
    }

    #[test]
    fn quality_of_points_on_the_curve() {
        let pts = [-0.5, 0.25, 0.0, 0.0, 0.5, 0.25, 0.1, 0.01 + 0.2];
        let (err, spread) = quality(&pts);
        assert!((err - 0.05).abs() < 1e-6, "{err}");
        assert!(spread > 0.0);
        assert_eq!(gcd(500, 2000), 500);
        assert_eq!(gcd(300, 2000), 100);
    }
}
