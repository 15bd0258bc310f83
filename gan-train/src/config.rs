//! Training configuration: architecture, loss, optimizers, schedule. Serialised as TOML in the
//! run directory (`config.toml`) and inside every checkpoint.

use anyhow::{Context, Result, bail};
use gan_core::format::NoiseKind;
use gan_core::init::Init;
use gan_core::optim::{AdamConfig, Optimizer, SgdConfig};
use gan_core::presets;
use gan_core::spec::{Layer, Shape, Spec};
use serde::{Deserialize, Serialize};

/// The preset `gan-train train` uses when none is given.
pub const DEFAULT_ARCH: Arch = Arch::Pico;

/// Architecture presets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    /// The microcontroller-sized MLP: G z64→128→192→784 (~184K parameters, ~738 KB as f32,
    /// fits a Raspberry Pi Pico's flash), D 784→256→128→1.
    Mcu,
    /// The classic MLP GAN: G z100→256→512→1024→784, D 784→512→256→1.
    Classic,
    /// DCGAN: G z100 → dense 128·7·7 → BN → ReLU → ConvT 64 (4×4, stride 2) → BN → ReLU →
    /// ConvT 1 (4×4, stride 2) → Tanh; D Conv 64 → LeakyReLU → Conv 128 → BN → LeakyReLU →
    /// dense 1. Too large for the microcontroller firmware's buffers.
    Dcgan,
    /// The default. Sized for the Raspberry Pi Pico, conditional: G z32 + class → dense 32·7·7 → BN → ReLU →
    /// ConvT 16 → BN → ReLU → ConvT 1 → Tanh (`g_hidden` holds the two channel counts), D an
    /// MLP 784 + class → 256 → 128 → 1 + 10 with a class projection; D's inputs shifted by up to
    /// 1 pixel.
    Pico,
    /// Widths from `latent`, `g_hidden` and `d_hidden`.
    Custom,
}

/// Hidden activation of the generator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum HiddenAct {
    /// LeakyReLU with slope 0.2.
    LeakyRelu,
    /// ReLU.
    Relu,
}

/// Output activation of the generator (and how pixels are scaled for training).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum OutAct {
    /// Tanh; real pixels scaled to [-1, 1].
    Tanh,
    /// Sigmoid; real pixels scaled to [0, 1].
    Sigmoid,
}

/// The adversarial objective.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LossKind {
    /// Non-saturating GAN with numerically stable BCE on D's logits.
    Bce,
    /// The classic form: D ends in a Sigmoid and BCE is taken on probabilities with ε = 1e-8.
    BceProb,
    /// Least squares GAN.
    Lsgan,
    /// Wasserstein critic with gradient penalty.
    WganGp,
    /// Hinge loss.
    Hinge,
}

/// Optimizer choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum OptKind {
    /// Adam.
    Adam,
    /// SGD (with `momentum`).
    Sgd,
}

/// Noise distribution (mirrors [`NoiseKind`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Noise {
    /// Standard normal.
    Gaussian,
    /// Uniform on [-1, 1).
    Uniform,
}

impl From<Noise> for NoiseKind {
    fn from(n: Noise) -> Self {
        match n {
            Noise::Gaussian => NoiseKind::Gaussian,
            Noise::Uniform => NoiseKind::Uniform,
        }
    }
}

/// Everything that defines a training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Architecture preset; `custom` uses the widths below as given.
    pub arch: Arch,
    /// Noise values per sample.
    pub latent: u32,
    /// Generator hidden widths.
    pub g_hidden: Vec<u32>,
    /// Discriminator hidden widths.
    pub d_hidden: Vec<u32>,
    /// Generator hidden activation.
    pub g_act: HiddenAct,
    /// Generator output activation.
    pub g_out: OutAct,
    /// Noise distribution.
    pub noise: Noise,
    /// Conditional GAN: one-hot labels appended to G's noise and D's input.
    pub conditional: bool,
    /// Objective.
    pub loss: LossKind,
    /// Gradient penalty weight for `wgan-gp`.
    pub gp_lambda: f32,
    /// Discriminator steps per generator step.
    pub n_critic: u32,
    /// One-sided label smoothing: real target is `1 - label_smoothing` (BCE losses).
    pub label_smoothing: f32,
    /// Weight of the feature-matching term in the generator loss (0 = off).
    pub feature_matching: f32,
    /// Minibatch discrimination in D before its last layer: `[kernels B, dims C]` (empty = off).
    pub minibatch_disc: Vec<u32>,
    /// Dropout probability after each hidden layer of an MLP discriminator (0 = off).
    pub d_dropout: f32,
    /// Conditional models: a projection discriminator. D's last layer gives an unconditional
    /// score and one value per class, and the score of a sample is the first plus the one of
    /// its class (the inner product of D's last features with a learned class embedding), a
    /// stronger class signal than the one-hot input alone.
    pub d_projection: bool,
    /// Shift every image the discriminator sees, real or generated, by up to this many pixels
    /// in x and y (drawn per image; 0 = off). Differentiable, so the generator learns through
    /// it; keeps D from memorising a small data set.
    pub d_translate: u32,
    /// Generator optimizer.
    pub g_opt: OptKind,
    /// Discriminator optimizer.
    pub d_opt: OptKind,
    /// Generator learning rate.
    pub g_lr: f32,
    /// Discriminator learning rate.
    pub d_lr: f32,
    /// Adam β1.
    pub beta1: f32,
    /// Adam β2.
    pub beta2: f32,
    /// SGD momentum.
    pub momentum: f32,
    /// Weight initialisation.
    pub init: Init,
    /// Batch size.
    pub batch: usize,
    /// Epochs.
    pub epochs: u32,
    /// Stop after this many discriminator steps (0 = no limit); for quick runs and tests.
    pub max_steps: u64,
    /// Seed for initialisation, shuffling and noise.
    pub seed: u64,
    /// Log a CSV row every this many steps.
    pub log_every: u32,
    /// Samples in the per-epoch grid (fixed noise).
    pub grid: usize,
    /// Decay of the exponential moving average of the generator's weights (0 = off). With
    /// it, grids, scores and the exported generator use the average.
    pub ema: f32,
    /// Score the generator every this many epochs (0 = never), see `gan-train score`. The
    /// last epoch is always scored when any is.
    pub quality_every: u32,
    /// Samples per score during training (fixed noise, a stream of their own).
    pub quality_samples: usize,
    /// What to do when the scores show a collapse.
    pub on_collapse: CollapseAction,
}

/// What training does when it detects a collapse (see `run.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum CollapseAction {
    /// Print a warning and go on.
    Warn,
    /// Go back to the best-scoring checkpoint, halve both learning rates and go on (at most
    /// three times, then stop).
    Rollback,
    /// Stop, keeping the best-scoring generator.
    Stop,
}

impl Default for TrainConfig {
    /// The `mcu` preset with the training recipe chosen by measurement (docs/QUALITY.md):
    /// hinge loss, batch 32, 150 epochs, Adam at 8e-4 for both networks, a weight average with
    /// decay 0.999, and shifts of up to 2 pixels for everything D sees.
    fn default() -> Self {
        TrainConfig {
            arch: Arch::Mcu,
            latent: 64,
            g_hidden: vec![128, 192],
            d_hidden: vec![256, 128],
            g_act: HiddenAct::LeakyRelu,
            g_out: OutAct::Tanh,
            noise: Noise::Gaussian,
            conditional: false,
            loss: LossKind::Hinge,
            gp_lambda: gan_core::gp::DEFAULT_LAMBDA,
            n_critic: 1,
            label_smoothing: 0.1,
            feature_matching: 0.0,
            minibatch_disc: vec![],
            d_dropout: 0.0,
            d_projection: false,
            d_translate: 2,
            g_opt: OptKind::Adam,
            d_opt: OptKind::Adam,
            g_lr: 8e-4,
            d_lr: 8e-4,
            beta1: 0.5,
            beta2: 0.999,
            momentum: 0.0,
            init: Init::HeNormal,
            batch: 32,
            epochs: 150,
            max_steps: 0,
            seed: 1,
            log_every: 20,
            grid: 64,
            ema: 0.999,
            // About 30 scores over the 150 epochs: a curve fine enough to pick the best
            // epoch and see a collapse, for a tenth of the run's time (a score takes about as
            // long as half an epoch of the default model).
            quality_every: 5,
            quality_samples: 2000,
            on_collapse: CollapseAction::Rollback,
        }
    }
}

impl TrainConfig {
    /// The tuned configuration of an architecture preset (what `gan-train train --arch A`
    /// starts from): the default recipe for the MLPs; for `dcgan` its own, measured on the
    /// bundled digits at the 20-epoch budget.
    pub fn preset(arch: Arch) -> TrainConfig {
        let base = TrainConfig { arch, ..TrainConfig::default() };
        match arch {
            Arch::Mcu | Arch::Classic | Arch::Custom => base,
            Arch::Pico => TrainConfig {
                latent: presets::PICO.latent,
                g_hidden: presets::PICO.channels.to_vec(),
                d_hidden: presets::PICO.d_hidden.to_vec(),
                conditional: true,
                d_projection: true,
                d_translate: 1,
                ..base
            },
            // Measured at the 20-epoch budget (docs/QUALITY.md): the default recipe with
            // PyTorch's N(0, 0.02) initialisation, Adam at 1.6e-3, and no shifts for D (in
            // 20 epochs the convolutional D does not memorise the digits; shifts cost FID).
            Arch::Dcgan => TrainConfig {
                epochs: 20,
                g_lr: 1.6e-3,
                d_lr: 1.6e-3,
                init: Init::Normal002,
                d_translate: 0,
                // 20 epochs: a score every epoch.
                quality_every: 1,
                ..base
            },
        }
    }

    /// The settings of the classic recipe this project started with (non-saturating BCE with
    /// label smoothing 0.1, batch 64, 60 epochs, Adam at 2e-4, no average, no augmentation):
    /// what `data/weights/default.ganw` was trained with before the measured recipe, kept
    /// for comparisons and for the throughput benchmarks (the PyTorch peers train this way).
    pub fn classic_recipe(arch: Arch) -> TrainConfig {
        TrainConfig {
            arch,
            loss: LossKind::Bce,
            d_translate: 0,
            g_lr: 2e-4,
            d_lr: 2e-4,
            batch: 64,
            epochs: 60,
            ema: 0.0,
            init: Init::HeNormal,
            ..TrainConfig::preset(arch)
        }
    }
}

/// [`TrainConfig`] as checkpoints of format versions 1 and 2 stored it (postcard writes a
/// struct's fields one after another, so this list is frozen; from version 3 on the
/// configuration is stored as TOML and new fields take their defaults). Read only.
#[derive(Serialize, Deserialize)]
#[doc(hidden)]
pub struct LegacyConfig {
    arch: Arch,
    latent: u32,
    g_hidden: Vec<u32>,
    d_hidden: Vec<u32>,
    g_act: HiddenAct,
    g_out: OutAct,
    noise: Noise,
    conditional: bool,
    loss: LossKind,
    gp_lambda: f32,
    n_critic: u32,
    label_smoothing: f32,
    feature_matching: f32,
    minibatch_disc: Vec<u32>,
    d_dropout: f32,
    g_opt: OptKind,
    d_opt: OptKind,
    g_lr: f32,
    d_lr: f32,
    beta1: f32,
    beta2: f32,
    momentum: f32,
    init: Init,
    batch: usize,
    epochs: u32,
    max_steps: u64,
    seed: u64,
    log_every: u32,
    grid: usize,
}

impl LegacyConfig {
    /// The configuration with today's fields: the same values by name (through TOML), new
    /// fields at their defaults.
    pub fn upgrade(&self) -> Result<TrainConfig> {
        Ok(toml::from_str(&toml::to_string(self)?)?)
    }

    /// The fields of `c` that version 1 and 2 checkpoints stored (to write such a checkpoint
    /// in tests).
    pub fn of(c: &TrainConfig) -> Result<LegacyConfig> {
        Ok(toml::from_str(&toml::to_string(c)?)?)
    }
}

/// Image geometry and label count of the data the run trains on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataShape {
    /// Image height.
    pub h: u32,
    /// Image width.
    pub w: u32,
    /// Number of classes (used by conditional models).
    pub classes: u32,
}

impl DataShape {
    /// MNIST: 28×28, 10 classes.
    pub const MNIST: DataShape = DataShape { h: 28, w: 28, classes: 10 };
    /// Pixels per image.
    pub fn pixels(&self) -> usize {
        (self.h * self.w) as usize
    }
}

/// A network as owned layers plus its input shape.
#[derive(Clone, Debug, PartialEq)]
pub struct NetDef {
    /// Input shape of one sample.
    pub input: Shape,
    /// Layers.
    pub layers: Vec<Layer>,
}

impl NetDef {
    /// The validated spec.
    pub fn spec(&self) -> Spec<'_> {
        Spec::new(self.input, &self.layers).expect("NetDef is validated when built")
    }
}

impl TrainConfig {
    /// Applies the preset widths (for `mcu`, `classic` and `dcgan`; see [`presets`]).
    pub fn resolved(&self) -> TrainConfig {
        let mut c = self.clone();
        let mlp = |c: &mut TrainConfig, p: presets::Mlp| {
            c.latent = p.latent;
            c.g_hidden = p.g_hidden.to_vec();
            c.d_hidden = p.d_hidden.to_vec();
        };
        match self.arch {
            Arch::Mcu => mlp(&mut c, presets::MCU),
            Arch::Classic => mlp(&mut c, presets::CLASSIC),
            Arch::Dcgan => {
                c.latent = presets::DCGAN_LATENT;
                c.g_hidden = vec![];
                c.d_hidden = vec![];
            }
            // The widths are the config's own (`preset` sets them): `g_hidden` holds the two
            // channel counts of the generator's feature maps.
            Arch::Pico | Arch::Custom => {}
        }
        c
    }

    /// Checks ranges; returns a message a user can act on.
    pub fn validate(&self) -> Result<()> {
        let c = self.resolved();
        if c.latent == 0 {
            bail!("latent size must be at least 1");
        }
        if c.g_hidden.contains(&0) || c.d_hidden.contains(&0) {
            bail!("hidden widths must be at least 1");
        }
        if c.batch < 2 {
            bail!("batch size must be at least 2");
        }
        use crate::limits::{MAX_BATCH, MAX_EPOCHS, MAX_GRID, MAX_HIDDEN_LAYERS, MAX_WIDTH};
        if c.latent > MAX_WIDTH || c.g_hidden.iter().chain(&c.d_hidden).any(|&w| w > MAX_WIDTH) {
            bail!("latent sizes and widths are at most {MAX_WIDTH}");
        }
        if c.g_hidden.len() > MAX_HIDDEN_LAYERS || c.d_hidden.len() > MAX_HIDDEN_LAYERS {
            bail!("at most {MAX_HIDDEN_LAYERS} hidden layers per network");
        }
        if c.batch > MAX_BATCH {
            bail!("batch size is at most {MAX_BATCH}");
        }
        if c.epochs > MAX_EPOCHS {
            bail!("at most {MAX_EPOCHS} epochs per run");
        }
        if c.grid > MAX_GRID || c.quality_samples > 100 * MAX_GRID {
            bail!(
                "the sample grid holds at most {MAX_GRID} images and a quality score at most {} samples",
                100 * MAX_GRID
            );
        }
        if !(c.g_lr > 0.0 && c.d_lr > 0.0 && c.g_lr.is_finite() && c.d_lr.is_finite()) {
            bail!("learning rates must be positive and finite");
        }
        if !((0.0..1.0).contains(&c.beta1) && (0.0..1.0).contains(&c.beta2)) {
            bail!("Adam's beta1 and beta2 must be in [0, 1) (the usual values: 0.5 and 0.999)");
        }
        if !(0.0..1.0).contains(&c.momentum) {
            bail!("SGD momentum must be in [0, 1)");
        }
        if !(c.gp_lambda >= 0.0 && c.gp_lambda.is_finite()) {
            bail!("the gradient-penalty weight must be >= 0 and finite (the usual value: 10)");
        }
        if !(0.0..1.0).contains(&c.label_smoothing) {
            bail!("label smoothing must be in [0, 1)");
        }
        if !(c.feature_matching >= 0.0 && c.feature_matching.is_finite()) {
            bail!("feature-matching weight must be >= 0");
        }
        if !(c.minibatch_disc.is_empty()
            || c.minibatch_disc.len() == 2 && !c.minibatch_disc.contains(&0))
        {
            bail!("minibatch discrimination takes two positive numbers: kernels and dims");
        }
        if c.grid == 0 {
            bail!("the sample grid needs at least one image");
        }
        if c.n_critic == 0 {
            bail!("n_critic must be at least 1");
        }
        if !(0.0..1.0).contains(&c.ema) {
            bail!("the EMA decay must be in [0, 1) (0 = off)");
        }
        if c.quality_every > 0 && c.quality_samples <= crate::score::K {
            bail!("quality scores need more than {} samples", crate::score::K);
        }
        if c.d_hidden.is_empty() && c.feature_matching > 0.0 {
            bail!("feature matching needs at least one hidden discriminator layer");
        }
        if c.loss == LossKind::WganGp && !c.minibatch_disc.is_empty() {
            bail!("the gradient penalty does not support minibatch discrimination");
        }
        if c.d_translate > 4 {
            bail!("d_translate is at most 4 pixels");
        }
        if !(0.0..1.0).contains(&c.d_dropout) {
            bail!("dropout must be in [0, 1)");
        }
        if c.loss == LossKind::WganGp && (c.d_dropout > 0.0 || c.arch == Arch::Dcgan) {
            bail!(
                "the gradient penalty supports dense/LeakyReLU critics only (no dropout, no DCGAN)"
            );
        }
        if c.d_projection
            && (!c.conditional || matches!(c.loss, LossKind::WganGp | LossKind::BceProb))
        {
            bail!(
                "the projection discriminator needs a conditional model and a loss on logits (not wgan-gp or bce-prob)"
            );
        }
        if c.arch == Arch::Pico && c.g_hidden.len() != 2 {
            bail!(
                "the pico preset's g_hidden holds two channel counts (quarter- and half-size maps), e.g. 32,16"
            );
        }
        if c.arch == Arch::Dcgan
            && (c.conditional || c.feature_matching > 0.0 || !c.minibatch_disc.is_empty())
        {
            bail!(
                "the DCGAN preset does not combine with --conditional, feature matching or minibatch discrimination"
            );
        }
        Ok(())
    }

    /// The generator network for this config.
    pub fn generator(&self, data: DataShape) -> Result<NetDef> {
        let c = self.resolved();
        let classes = if c.conditional { data.classes } else { 0 };
        let out = match c.g_out {
            OutAct::Tanh => Layer::Tanh,
            OutAct::Sigmoid => Layer::Sigmoid,
        };
        let conv = matches!(c.arch, Arch::Dcgan | Arch::Pico);
        if conv && (!data.h.is_multiple_of(4) || !data.w.is_multiple_of(4)) {
            bail!("the convolutional presets need image sides divisible by 4");
        }
        let (input, layers) = if c.arch == Arch::Dcgan {
            (c.latent, presets::dcgan_generator(data.h, data.w, out))
        } else if c.arch == Arch::Pico {
            let (c0, c1) = (c.g_hidden[0], c.g_hidden[1]);
            (c.latent + classes, presets::conv_generator(data.h, data.w, c0, c1, out))
        } else {
            let act = match c.g_act {
                HiddenAct::LeakyRelu => presets::LEAKY,
                HiddenAct::Relu => Layer::Relu,
            };
            let layers = presets::mlp_generator(&c.g_hidden, act, out, data.h, data.w)
                .context("generator: too many layers")?;
            (c.latent + classes, layers)
        };
        checked(NetDef { input: Shape::flat(input), layers: layers.to_vec() }, "generator")
    }

    /// The discriminator network for this config. Its output is one score per sample: a logit
    /// (BCE, hinge, Wasserstein, least squares) or a probability (`bce-prob`); with
    /// [`TrainConfig::d_projection`], `1 + classes` values that the trainer combines into the
    /// score of each sample's class.
    pub fn discriminator(&self, data: DataShape) -> Result<NetDef> {
        let c = self.resolved();
        let classes = if c.conditional { data.classes } else { 0 };
        let sigmoid = c.loss == LossKind::BceProb;
        let layers = if c.arch == Arch::Dcgan {
            presets::dcgan_discriminator(data.h, data.w, sigmoid)
        } else {
            let minibatch = match c.minibatch_disc[..] {
                [b, d] => Some((b, d)),
                _ => None,
            };
            let outputs = 1 + if c.d_projection { classes } else { 0 };
            presets::mlp_discriminator(&c.d_hidden, c.d_dropout, minibatch, outputs, sigmoid)
                .context("discriminator: too many layers")?
        };
        checked(
            NetDef { input: Shape::flat(data.h * data.w + classes), layers: layers.to_vec() },
            "discriminator",
        )
    }

    /// Index (exclusive end) of the discriminator layers whose output feature matching compares:
    /// the last hidden activation (after dropout, when enabled).
    pub fn feature_layer(&self) -> usize {
        let c = self.resolved();
        let per = if c.d_dropout > 0.0 { 3 } else { 2 };
        per * c.d_hidden.len()
    }

    /// Optimizer for G or D.
    pub fn optimizer(&self, kind: OptKind, lr: f32) -> Optimizer {
        match kind {
            OptKind::Adam => Optimizer::Adam(AdamConfig {
                lr,
                beta1: self.beta1,
                beta2: self.beta2,
                ..AdamConfig::default()
            }),
            OptKind::Sgd => {
                Optimizer::Sgd(SgdConfig { lr, momentum: self.momentum, ..SgdConfig::default() })
            }
        }
    }
}

fn checked(def: NetDef, what: &str) -> Result<NetDef> {
    Spec::new(def.input, &def.layers).map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
    Ok(def)
}
