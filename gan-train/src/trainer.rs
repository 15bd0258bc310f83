//! The GAN: two networks, their optimizers, and one training step.
//!
//! A step consumes one batch of real samples:
//! 1. **D step.** Draw noise, run G, score the real and the fake batch with D, take the loss
//!    gradients of both, back-propagate through D (plus the gradient penalty for WGAN-GP) and
//!    update D.
//! 2. **G step** (every `n_critic` D steps). Draw fresh noise, run G and D, take the generator
//!    loss, back-propagate through D to its input (no D parameter gradients) and on through G
//!    (plus feature matching when enabled), and update G.
//!
//! All state that influences the future — parameters, optimizer moments and step counts, the
//! noise generator, the position in the epoch, the partial log window — is in one
//! [`TrainState`] that the trainer owns and [`crate::checkpoint`] encodes, so a resumed run
//! continues with exactly the bits an uninterrupted run would have had. The toy GAN
//! ([`crate::toy`]) trains with the same [`Gan`], on its own two small networks.

use anyhow::{Result, bail, ensure};
use gan_core::gp;
use gan_core::init::Init;
use gan_core::kernels::Exec;
use gan_core::loss;
use gan_core::model::{self, ForwardCtx};
use gan_core::noise::{self, NoiseRng};
use gan_core::optim::{self, Optimizer};
use rand_core::Rng;
use serde::{Deserialize, Serialize};

use crate::augment;
use crate::config::{DataShape, LossKind, NetDef, OutAct, TrainConfig};

/// One network's trained state: its parameters and its optimizer's state. Part of
/// [`TrainState`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetParams {
    /// Parameters (flat, gan-core layout).
    pub params: Vec<f32>,
    /// Optimizer state (Adam: m then v).
    pub opt_state: Vec<f32>,
    /// Optimizer steps taken.
    pub opt_step: u64,
}

/// A network being trained: its architecture, its optimizer and its gradient buffer. The
/// values it trains are a [`NetParams`] in the [`TrainState`].
#[derive(Clone, Debug)]
pub struct Net {
    /// Architecture.
    pub def: NetDef,
    /// Optimizer.
    pub opt: Optimizer,
    grads: Vec<f32>,
}

impl Net {
    /// The network `def` trained with `opt`, and its freshly initialised parameters (drawn
    /// from `rng` with `init`).
    pub fn new(
        def: NetDef, opt: Optimizer, init: Init, rng: &mut NoiseRng,
    ) -> Result<(Net, NetParams)> {
        let spec = def.spec();
        let mut params = vec![0.0; spec.param_len()];
        gan_core::init::init_params(&spec, &mut params, init, rng)?;
        let n = params.len();
        let state = NetParams { opt_state: vec![0.0; opt.state_len(n)], params, opt_step: 0 };
        Ok((Net { grads: vec![0.0; n], def, opt }, state))
    }

    /// One optimizer step on `p` with the gradients in the buffer, split over `exec` (the
    /// update is element-wise, so the bits do not depend on the split). Returns whether every
    /// parameter is finite afterwards (checked as they are written).
    fn step(&self, p: &mut NetParams, exec: &dyn Exec) -> Result<bool> {
        p.opt_step += 1;
        Ok(self.opt.step_with(&mut p.params, &self.grads, &mut p.opt_state, p.opt_step, exec)?)
    }
}

/// Statistics of one step, for logs and the progress bar.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepStats {
    /// Discriminator loss (including the gradient penalty).
    pub d_loss: f32,
    /// Generator loss of the last G step (including feature matching).
    pub g_loss: f32,
    /// Mean D score on real samples (a probability for the BCE losses).
    pub d_real: f32,
    /// Mean D score on fake samples.
    pub d_fake: f32,
    /// Fraction of real samples D calls real.
    pub acc_real: f32,
    /// Fraction of fake samples D calls fake.
    pub acc_fake: f32,
}

/// Running sums of the step statistics since the last loss-log row. Part of the checkpoint, so
/// a run resumed in the middle of a logging window writes the same rows as one that was never
/// stopped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LogWindow {
    /// Sums of d_loss, g_loss, d_real, d_fake, acc_real, acc_fake.
    pub sum: [f64; 6],
    /// Steps summed.
    pub n: u32,
}

impl LogWindow {
    /// Adds one step.
    pub fn add(&mut self, s: &StepStats) {
        for (acc, v) in self
            .sum
            .iter_mut()
            .zip([s.d_loss, s.g_loss, s.d_real, s.d_fake, s.acc_real, s.acc_fake])
        {
            *acc += v as f64;
        }
        self.n += 1;
    }

    /// The means (in [`LogWindow::sum`]'s order) of the steps added since the last call, and a
    /// fresh window; `None` if no step was added.
    pub fn take(&mut self) -> Option<[f32; 6]> {
        if self.n == 0 {
            return None;
        }
        let n = self.n as f64;
        let means = self.sum.map(|v| (v / n) as f32);
        *self = LogWindow::default();
        Some(means)
    }
}

/// Where a run's images came from, so a resume trains on the same ones.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataSource {
    /// Data directory (`None`: the bundled digits).
    pub dir: Option<String>,
    /// Image limit (0 = all).
    pub limit: usize,
    /// Number of images trained on.
    pub images: usize,
}

/// Where a run is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Discriminator steps done (batches consumed).
    pub step: u64,
    /// Current epoch (0-based).
    pub epoch: u32,
    /// Batches of the current epoch already consumed.
    pub batch_in_epoch: u32,
}

/// Everything needed to continue training exactly: the trainer owns it, and a checkpoint is
/// this value encoded ([`crate::checkpoint`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// The run's configuration (resolved). Stored as TOML text, so checkpoints keep loading
    /// when options are added.
    #[serde(with = "config_toml")]
    pub config: TrainConfig,
    /// The data geometry.
    pub data: DataShape,
    /// The generator's parameters and optimizer state.
    pub g: NetParams,
    /// The discriminator's.
    pub d: NetParams,
    /// Noise for z, class labels and interpolation.
    #[serde(with = "rng_bytes")]
    pub rng: NoiseRng,
    /// Position in the run.
    pub pos: Position,
    /// Last generator loss (so logs continue smoothly).
    pub last_g_loss: f32,
    /// The training data.
    pub source: DataSource,
    /// Statistics of the steps not yet written to the loss log.
    pub log_window: LogWindow,
    /// The exponential moving average of the generator's parameters (when
    /// [`TrainConfig::ema`] is on).
    pub g_ema: Option<Vec<f32>>,
    /// The scores so far (best generator, rollbacks).
    pub quality: QualityState,
}

impl TrainState {
    /// The generator's parameters as grids, scores and exports use them: the moving average
    /// when [`TrainConfig::ema`] is on, else the trained parameters.
    pub fn generator_params(&self) -> &[f32] {
        self.g_ema.as_deref().unwrap_or(&self.g.params)
    }

    /// Moves the average towards the parameters after a generator step: `avg ← β·avg +
    /// (1 − β)·params` with `β = min(ema, (1 + t) / (10 + t))` at generator step `t`, so the
    /// average follows closely at first instead of remembering the random initialisation.
    fn update_ema(&mut self, exec: &dyn Exec) {
        let decay = self.config.ema;
        if decay <= 0.0 {
            return;
        }
        let t = self.g.opt_step as f32;
        let beta = decay.min((1.0 + t) / (10.0 + t));
        let params = &self.g.params;
        let avg = self.g_ema.get_or_insert_with(|| params.clone());
        // Element-wise, so the split over `exec` does not change the bits.
        gan_core::kernels::par::for_each_chunk(exec, avg, &|at, part| {
            for (a, &p) in part.iter_mut().zip(&params[at..]) {
                *a = beta * *a + (1.0 - beta) * p;
            }
        });
    }
}

/// What training remembers of its scores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QualityState {
    /// Lowest FID so far (`inf` before the first score).
    pub best_fid: f64,
    /// Epoch (1-based) of the best FID, 0 before the first score.
    pub best_epoch: u32,
    /// Highest recall and class entropy so far (collapse is a fall from these).
    pub best_recall: f64,
    /// See `best_recall`.
    pub best_entropy: f64,
    /// Rollbacks done after a collapse.
    pub rollbacks: u32,
}

impl Default for QualityState {
    fn default() -> Self {
        QualityState {
            best_fid: f64::INFINITY,
            best_epoch: 0,
            best_recall: 0.0,
            best_entropy: 0.0,
            rollbacks: 0,
        }
    }
}

/// The configuration serialised as TOML text.
mod config_toml {
    use serde::{
        Deserialize, Deserializer, Serialize, Serializer, de::Error as _, ser::Error as _,
    };

    use crate::config::TrainConfig;

    pub fn serialize<S: Serializer>(c: &TrainConfig, s: S) -> Result<S::Ok, S::Error> {
        toml::to_string(c).map_err(S::Error::custom)?.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<TrainConfig, D::Error> {
        let text = String::deserialize(d)?;
        toml::from_str(&text).map_err(D::Error::custom)
    }
}

/// What a checkpoint holds.
pub type Checkpoint = TrainState;

/// The noise generator serialised as its 32 state bytes.
mod rng_bytes {
    use gan_core::noise::{self, NoiseRng};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(r: &NoiseRng, s: S) -> Result<S::Ok, S::Error> {
        noise::rng_state(r).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<NoiseRng, D::Error> {
        <[u8; 32]>::deserialize(d).map(noise::rng_from_state)
    }
}

/// Work buffers for one batch size.
#[derive(Debug, Default)]
struct Work {
    n: usize,
    z: Vec<f32>,
    g_acts: Vec<f32>,
    g_scratch: Vec<f32>,
    g_dout: Vec<f32>,
    d_real: Vec<f32>,
    d_fake: Vec<f32>,
    d_scratch: Vec<f32>,
    d_dx: Vec<f32>,
    d_dx2: Vec<f32>,
    grad_real: Vec<f32>,
    grad_fake: Vec<f32>,
    /// Projection discriminator: each sample's score, and the gradient on D's outputs.
    score_real: Vec<f32>,
    score_fake: Vec<f32>,
    out_grad: Vec<f32>,
    feat_grad: Vec<f32>,
    real_feat: Vec<f32>,
    gp_scratch: Vec<f32>,
    x_hat: Vec<f32>,
    eps: Vec<f32>,
    shifts_real: Vec<augment::Shift>,
    shifts_fake: Vec<augment::Shift>,
    shift_tmp: Vec<f32>,
}

/// A GAN being trained: its [`TrainState`], the two networks' architectures and optimizers,
/// and the work buffers of a step.
#[derive(Debug)]
pub struct Gan {
    /// Everything that a checkpoint keeps.
    pub state: TrainState,
    /// Generator.
    pub g: Net,
    /// Discriminator.
    pub d: Net,
    work: Work,
}

impl Gan {
    /// A fresh GAN with initialised weights.
    pub fn new(cfg: &TrainConfig, data: DataShape) -> Result<Self> {
        let (cfg, g, d) = Self::checked_nets(cfg, data)?;
        Gan::with_nets(cfg, data, g, d)
    }

    /// The validated, resolved configuration and its two networks, within the host's limits.
    fn checked_nets(cfg: &TrainConfig, data: DataShape) -> Result<(TrainConfig, NetDef, NetDef)> {
        cfg.validate()?;
        let cfg = cfg.resolved();
        let (g, d) = (cfg.generator(data)?, cfg.discriminator(data)?);
        crate::limits::check_network(&g.spec(), "the generator")?;
        crate::limits::check_network(&d.spec(), "the discriminator")?;
        Ok((cfg, g, d))
    }

    /// A fresh GAN with the given networks (the configuration supplies the objective, the
    /// optimizers and the seed): the generator maps `latent + classes` inputs to the data's
    /// pixels, the discriminator pixels (plus the class one-hot) to one score.
    pub fn with_nets(cfg: TrainConfig, data: DataShape, g: NetDef, d: NetDef) -> Result<Self> {
        let mut rng = noise::rng(cfg.seed);
        let (g, gp) = Net::new(g, cfg.optimizer(cfg.g_opt, cfg.g_lr), cfg.init, &mut rng)?;
        let (d, dp) = Net::new(d, cfg.optimizer(cfg.d_opt, cfg.d_lr), cfg.init, &mut rng)?;
        Ok(Gan {
            state: TrainState {
                config: cfg,
                data,
                g: gp,
                d: dp,
                rng,
                pos: Position::default(),
                last_g_loss: 0.0,
                source: DataSource::default(),
                log_window: LogWindow::default(),
                g_ema: None,
                quality: QualityState::default(),
            },
            g,
            d,
            work: Work::default(),
        })
    }

    /// Restores a GAN from a checkpoint, checking every buffer length.
    pub fn from_checkpoint(ck: Checkpoint) -> Result<Self> {
        // The parameter counts first: a small damaged checkpoint whose configuration describes
        // large networks is refused before their buffers are allocated and initialised.
        let (cfg, g, d) = Self::checked_nets(&ck.config, ck.data)?;
        let nets = [
            ("generator", &g, &ck.g, cfg.optimizer(cfg.g_opt, cfg.g_lr)),
            ("discriminator", &d, &ck.d, cfg.optimizer(cfg.d_opt, cfg.d_lr)),
        ];
        for (what, def, p, opt) in nets {
            let n = def.spec().param_len();
            for (part, got, want) in [
                ("parameters", p.params.len(), n),
                ("optimizer state", p.opt_state.len(), opt.state_len(n)),
            ] {
                ensure!(
                    got == want,
                    "checkpoint {what} {part} has {got} values, the configuration needs {want}"
                );
            }
        }
        let mut gan = Gan::with_nets(cfg, ck.data, g, d)?;
        if let Some(avg) = &ck.g_ema {
            ensure!(
                avg.len() == ck.g.params.len(),
                "checkpoint generator average has {} values, the configuration needs {}",
                avg.len(),
                ck.g.params.len()
            );
        }
        gan.state = ck;
        Ok(gan)
    }

    /// Snapshot of all training state.
    pub fn checkpoint(&self) -> Checkpoint {
        self.state.clone()
    }

    /// The resolved configuration.
    pub fn cfg(&self) -> &TrainConfig {
        &self.state.config
    }

    /// Marks the current epoch done: the next step starts the next one.
    pub fn end_epoch(&mut self) {
        self.state.pos.epoch += 1;
        self.state.pos.batch_in_epoch = 0;
    }

    /// Classes the networks are conditioned on (0 when unconditional).
    pub fn classes(&self) -> usize {
        if self.state.config.conditional { self.state.data.classes as usize } else { 0 }
    }

    fn ensure_work(&mut self, n: usize) {
        if self.work.n == n {
            return;
        }
        let gs = self.g.def.spec();
        let ds = self.d.def.spec();
        let cfg = &self.state.config;
        let px = self.state.data.pixels();
        let feat = if cfg.feature_matching > 0.0 {
            ds.layer(cfg.feature_layer() - 1).map_or(0, |l| l.out_shape.len())
        } else {
            0
        };
        self.work = Work {
            n,
            z: vec![0.0; n * gs.input().len()],
            g_acts: vec![0.0; gs.act_len(n)],
            g_scratch: vec![0.0; gs.backward_scratch_len(n)],
            g_dout: vec![0.0; n * px],
            d_real: vec![0.0; ds.act_len(n)],
            d_fake: vec![0.0; ds.act_len(n)],
            d_scratch: vec![0.0; ds.backward_scratch_len(n)],
            d_dx: vec![0.0; n * ds.input().len()],
            d_dx2: vec![0.0; if feat > 0 { n * ds.input().len() } else { 0 }],
            grad_real: vec![0.0; n],
            grad_fake: vec![0.0; n],
            score_real: vec![0.0; if cfg.d_projection { n } else { 0 }],
            score_fake: vec![0.0; if cfg.d_projection { n } else { 0 }],
            out_grad: vec![0.0; if cfg.d_projection { n * ds.output().len() } else { 0 }],
            feat_grad: vec![0.0; n * feat],
            real_feat: vec![0.0; n * feat],
            gp_scratch: if cfg.loss == LossKind::WganGp {
                vec![0.0; gp::gp_scratch_len(&ds, n)]
            } else {
                vec![]
            },
            x_hat: vec![0.0; if cfg.loss == LossKind::WganGp { n * ds.input().len() } else { 0 }],
            eps: vec![0.0; n],
            shifts_real: vec![augment::Shift::default(); n],
            shifts_fake: vec![augment::Shift::default(); n],
            shift_tmp: vec![],
        };
    }

    /// Runs G on `z` (N × G input) with the training kernels; returns N × pixels in `out`.
    pub fn generate_batch(&mut self, z: &[f32], n: usize, exec: &dyn Exec) -> Result<Vec<f32>> {
        let gs = self.g.def.spec();
        let mut acts = vec![0.0; gs.act_len(n)];
        model::input_mut(&gs, &mut acts, n).copy_from_slice(z);
        model::forward(&gs, &self.state.g.params, &mut acts, n, exec)?;
        Ok(model::output(&gs, &acts, n).to_vec())
    }

    /// One training step on a real batch (`real`: N × pixels scaled for the output activation;
    /// `labels`: N class labels, used by conditional models). Moves the position one batch on
    /// and adds the step to the log window.
    pub fn train_step(
        &mut self, real: &[f32], labels: &[u8], exec: &dyn Exec,
    ) -> Result<StepStats> {
        let px = self.state.data.pixels();
        if real.is_empty() || !real.len().is_multiple_of(px) {
            bail!("real batch has {} values, not a multiple of {px}", real.len());
        }
        let n = real.len() / px;
        if labels.len() != n {
            bail!("got {} labels for a batch of {n}", labels.len());
        }
        self.ensure_work(n);
        let (mut stats, d_finite) = self.d_step(real, labels, exec)?;
        let st = &mut self.state;
        st.pos.step += 1;
        // Every parameter of a network its optimizer stepped was checked as it was written;
        // G's, when it did not step, may still have moved (batch-norm running statistics).
        let g_finite = if st.pos.step.is_multiple_of(st.config.n_critic as u64) {
            let (loss, finite) = self.g_step(real, labels, exec)?;
            self.state.last_g_loss = loss;
            self.state.update_ema(exec);
            finite
        } else {
            optim::all_finite_with(&self.state.g.params, exec)
        };
        let st = &mut self.state;
        stats.g_loss = st.last_g_loss;
        let step = st.pos.step;
        if !(stats.d_loss.is_finite() && stats.g_loss.is_finite()) {
            bail!(NonFinite { step, what: "loss" });
        }
        if !(g_finite && d_finite) {
            bail!(NonFinite { step, what: "weights" });
        }
        st.pos.batch_in_epoch += 1;
        st.log_window.add(&stats);
        Ok(stats)
    }

    /// Writes D inputs: per row the pixels followed by the class one-hot.
    fn write_d_input(dst: &mut [f32], pixels: &[f32], labels: &[u8], px: usize, classes: usize) {
        for ((row, p), &l) in
            dst.chunks_exact_mut(px + classes).zip(pixels.chunks_exact(px)).zip(labels)
        {
            row[..px].copy_from_slice(p);
            let onehot = &mut row[px..];
            onehot.fill(0.0);
            if let Some(v) = onehot.get_mut(l as usize) {
                *v = 1.0;
            }
        }
    }

    /// Draws noise for `labels` (one-hot appended for conditional models) and runs G's training
    /// forward into `work.g_acts`, updating BatchNorm running statistics. `pass` keeps dropout
    /// masks distinct between the passes of one step.
    fn run_generator(&mut self, labels: &[u8], pass: u64, exec: &dyn Exec) -> Result<()> {
        let gs = self.g.def.spec();
        let n = self.work.n;
        let gin = gs.input().len();
        let latent = self.state.config.latent as usize;
        let noise_kind = self.state.config.noise.into();
        let ctx = self.pass_ctx();
        let (w, st) = (&mut self.work, &mut self.state);
        for (row, &l) in w.z.chunks_exact_mut(gin).zip(labels) {
            noise::generator_input(noise_kind, &mut st.rng, latent, l as usize, row);
        }
        model::input_mut(&gs, &mut w.g_acts, n).copy_from_slice(&w.z);
        model::forward_with(&gs, &st.g.params, &mut w.g_acts, n, exec, &ctx(pass))?;
        model::update_running_stats(&gs, &mut st.g.params, &w.g_acts, n)?;
        Ok(())
    }

    /// The dropout context of pass `pass` of the current step.
    fn pass_ctx(&self) -> impl Fn(u64) -> ForwardCtx + use<> {
        let (seed, step) = (self.state.config.seed, self.state.pos.step);
        move |pass| ForwardCtx::with_seed(mix(seed, step, pass))
    }

    /// The D step: its statistics and whether D's parameters are all finite after it.
    fn d_step(
        &mut self, real: &[f32], labels: &[u8], exec: &dyn Exec,
    ) -> Result<(StepStats, bool)> {
        let n = self.work.n;
        let px = self.state.data.pixels();
        let classes = self.classes();
        // Fakes are drawn with the real batch's labels, so that conditional D sees matched pairs.
        self.run_generator(labels, 0, exec)?;
        let gs = self.g.def.spec();
        let ds = self.d.def.spec();
        let ctx = self.pass_ctx();
        let w = &mut self.work;
        let fake = model::output(&gs, &w.g_acts, n);

        Self::write_d_input(model::input_mut(&ds, &mut w.d_real, n), real, labels, px, classes);
        Self::write_d_input(model::input_mut(&ds, &mut w.d_fake, n), fake, labels, px, classes);
        let (st, stride) = (&mut self.state, px + classes);
        let real_in = model::input_mut(&ds, &mut w.d_real, n);
        augment(st, &mut w.shifts_real, &mut w.shift_tmp, real_in, stride);
        let fake_in = model::input_mut(&ds, &mut w.d_fake, n);
        augment(st, &mut w.shifts_fake, &mut w.shift_tmp, fake_in, stride);
        model::forward_with(&ds, &self.state.d.params, &mut w.d_real, n, exec, &ctx(1))?;
        model::forward_with(&ds, &self.state.d.params, &mut w.d_fake, n, exec, &ctx(2))?;
        model::update_running_stats(&ds, &mut self.state.d.params, &w.d_real, n)?;
        let proj = self.state.config.d_projection;
        let sr = scores(model::output(&ds, &w.d_real, n), labels, proj, &mut w.score_real);
        let sf = scores(model::output(&ds, &w.d_fake, n), labels, proj, &mut w.score_fake);

        let real_target = 1.0 - self.state.config.label_smoothing;
        let (gr, gf) = (&mut w.grad_real[..], &mut w.grad_fake[..]);
        let mut d_loss = match self.state.config.loss {
            LossKind::Bce => {
                loss::bce_logits(gr, sr, real_target)? + loss::bce_logits(gf, sf, 0.0)?
            }
            LossKind::BceProb => loss::bce(gr, sr, real_target)? + loss::bce(gf, sf, 0.0)?,
            LossKind::Lsgan => loss::lsgan(gr, sr, real_target)? + loss::lsgan(gf, sf, 0.0)?,
            LossKind::WganGp => loss::wasserstein_critic(gr, gf, sr, sf)?,
            LossKind::Hinge => loss::hinge_critic(gr, gf, sr, sf)?,
        };
        let mut stats = score_stats(self.state.config.loss, sr, sf);

        zero(&mut self.d.grads, exec);
        for (acts, g) in [(&w.d_real, &*gr), (&w.d_fake, &*gf)] {
            let g = output_grad(g, labels, proj, &mut w.out_grad);
            let grads = Some(&mut self.d.grads[..]);
            model::backward(
                &ds,
                &self.state.d.params,
                acts,
                g,
                grads,
                None,
                &mut w.d_scratch,
                n,
                exec,
            )?;
        }
        if self.state.config.loss == LossKind::WganGp {
            for e in w.eps.iter_mut() {
                *e = noise::unit(&mut self.state.rng);
            }
            let din = ds.input().len();
            gp::interpolate(&mut w.x_hat, &w.d_real[..n * din], &w.d_fake[..n * din], &w.eps)?;
            let (pen, _) = gp::gradient_penalty(
                &ds,
                &self.state.d.params,
                &mut self.d.grads,
                &w.x_hat,
                self.state.config.gp_lambda,
                &mut w.gp_scratch,
                n,
                exec,
            )?;
            d_loss += pen;
        }
        let finite = self.d.step(&mut self.state.d, exec)?;
        stats.d_loss = d_loss;
        Ok((stats, finite))
    }

    /// The G step: its loss and whether G's parameters are all finite after it.
    fn g_step(&mut self, real: &[f32], real_labels: &[u8], exec: &dyn Exec) -> Result<(f32, bool)> {
        let n = self.work.n;
        let px = self.state.data.pixels();
        let classes = self.classes();
        // Fresh noise and, for conditional models, uniformly drawn classes.
        let mut labels = vec![0u8; n];
        if classes > 0 {
            for l in labels.iter_mut() {
                *l = (self.state.rng.next_u32() % classes as u32) as u8;
            }
        }
        self.run_generator(&labels, 3, exec)?;
        let gs = self.g.def.spec();
        let ds = self.d.def.spec();
        let ctx = self.pass_ctx();
        let w = &mut self.work;
        let fake = model::output(&gs, &w.g_acts, n);
        Self::write_d_input(model::input_mut(&ds, &mut w.d_fake, n), fake, &labels, px, classes);
        let (st, stride) = (&mut self.state, px + classes);
        let fake_in = model::input_mut(&ds, &mut w.d_fake, n);
        augment(st, &mut w.shifts_fake, &mut w.shift_tmp, fake_in, stride);
        model::forward_with(&ds, &self.state.d.params, &mut w.d_fake, n, exec, &ctx(4))?;
        let proj = self.state.config.d_projection;
        let sf = scores(model::output(&ds, &w.d_fake, n), &labels, proj, &mut w.score_fake);
        let gf = &mut w.grad_fake[..];
        let mut g_loss = match self.state.config.loss {
            LossKind::Bce => loss::ns_generator_logits(gf, sf)?,
            LossKind::BceProb => loss::bce(gf, sf, 1.0)?,
            LossKind::Lsgan => loss::lsgan(gf, sf, 1.0)?,
            LossKind::WganGp => loss::wasserstein_generator(gf, sf)?,
            LossKind::Hinge => loss::hinge_generator(gf, sf)?,
        };
        let gf = output_grad(gf, &labels, proj, &mut w.out_grad);
        model::backward(
            &ds,
            &self.state.d.params,
            &w.d_fake,
            gf,
            None,
            Some(&mut w.d_dx),
            &mut w.d_scratch,
            n,
            exec,
        )?;

        if self.state.config.feature_matching > 0.0 {
            // Features of the real batch under the updated D, then matched by the fakes'.
            let upto = self.state.config.feature_layer();
            Self::write_d_input(
                model::input_mut(&ds, &mut w.d_real, n),
                real,
                real_labels,
                px,
                classes,
            );
            let real_in = model::input_mut(&ds, &mut w.d_real, n);
            augment(&mut self.state, &mut w.shifts_real, &mut w.shift_tmp, real_in, stride);
            model::forward_with(&ds, &self.state.d.params, &mut w.d_real, n, exec, &ctx(5))?;
            let info = ds.layer(upto - 1).expect("feature layer exists");
            let f = info.out_shape.len();
            w.real_feat.copy_from_slice(&w.d_real[info.out_range(n)]);
            let fm = loss::feature_matching(
                &mut w.feat_grad,
                &w.real_feat,
                &w.d_fake[info.out_range(n)],
                n,
                n,
                f,
            )?;
            let k = self.state.config.feature_matching;
            w.feat_grad.iter_mut().for_each(|g| *g *= k);
            model::backward_from(
                &ds,
                &self.state.d.params,
                &w.d_fake,
                upto,
                &w.feat_grad,
                None,
                Some(&mut w.d_dx2),
                &mut w.d_scratch,
                n,
                exec,
            )?;
            w.d_dx.iter_mut().zip(&w.d_dx2).for_each(|(a, b)| *a += b);
            g_loss += k * fm;
        }

        // Gradient w.r.t. the generated pixels: undo the shifts, drop the one-hot columns.
        if self.state.config.d_translate > 0 {
            let (h, wd) = (self.state.data.h as usize, self.state.data.w as usize);
            augment::unshift_rows(&mut w.d_dx, stride, h, wd, &w.shifts_fake, &mut w.shift_tmp);
        }
        for (dst, src) in w.g_dout.chunks_exact_mut(px).zip(w.d_dx.chunks_exact(px + classes)) {
            dst.copy_from_slice(&src[..px]);
        }
        zero(&mut self.g.grads, exec);
        model::backward(
            &gs,
            &self.state.g.params,
            &w.g_acts,
            &w.g_dout,
            Some(&mut self.g.grads),
            None,
            &mut w.g_scratch,
            n,
            exec,
        )?;
        let finite = self.g.step(&mut self.state.g, exec)?;
        Ok((g_loss, finite))
    }
}

/// Zeroes a gradient buffer over the tasks of `exec` (millions of values for the MLPs).
fn zero(buf: &mut [f32], exec: &dyn Exec) {
    gan_core::kernels::par::for_each_chunk(exec, buf, &|_, part| part.fill(0.0));
}

/// D's score of each sample from its outputs `out`: the outputs themselves, or with a
/// projection discriminator (`proj`; `1 + classes` outputs per sample) the unconditional score
/// plus the output of the sample's class, written into `buf`.
fn scores<'a>(out: &'a [f32], labels: &[u8], proj: bool, buf: &'a mut [f32]) -> &'a [f32] {
    if !proj {
        return out;
    }
    let width = out.len() / labels.len().max(1);
    for ((s, row), &l) in buf.iter_mut().zip(out.chunks_exact(width)).zip(labels) {
        *s = row[0] + row.get(1 + l as usize).copied().unwrap_or(0.0);
    }
    buf
}

/// The gradient on D's outputs from the gradient `g` on the scores of [`scores`]: `g` itself,
/// or with a projection discriminator `g` on the unconditional output and on the class's,
/// zero elsewhere (written into `buf`).
fn output_grad<'a>(g: &'a [f32], labels: &[u8], proj: bool, buf: &'a mut [f32]) -> &'a [f32] {
    if !proj {
        return g;
    }
    let width = buf.len() / labels.len().max(1);
    buf.fill(0.0);
    for ((row, &gi), &l) in buf.chunks_exact_mut(width).zip(g).zip(labels) {
        row[0] = gi;
        if let Some(v) = row.get_mut(1 + l as usize) {
            *v = gi;
        }
    }
    buf
}

/// With [`TrainConfig::d_translate`] on: draws a shift per image of `rows` (D inputs of
/// `stride` values, the pixels first) into `shifts` and applies it.
fn augment(
    st: &mut TrainState, shifts: &mut [augment::Shift], tmp: &mut Vec<f32>, rows: &mut [f32],
    stride: usize,
) {
    let max = st.config.d_translate;
    if max == 0 {
        return;
    }
    augment::draw(shifts, max, &mut st.rng);
    let fill = match st.config.g_out {
        OutAct::Tanh => -1.0,
        OutAct::Sigmoid => 0.0,
    };
    let (h, w) = (st.data.h as usize, st.data.w as usize);
    augment::shift_rows(rows, stride, h, w, shifts, fill, tmp);
}

/// A per-pass seed for dropout masks: distinct for every run seed, step and pass.
fn mix(seed: u64, step: u64, pass: u64) -> u64 {
    let mut x =
        seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ pass.wrapping_mul(0xD1B5_4A32_D192_ED03);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 29)
}

/// Mean scores and accuracies, on the scale each loss uses.
fn score_stats(kind: LossKind, sr: &[f32], sf: &[f32]) -> StepStats {
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
    let (d_real, d_fake, thr) = match kind {
        LossKind::Bce => {
            let p = |v: &[f32]| {
                v.iter().map(|&x| gan_core::layers::activation::sigmoid(x)).sum::<f32>()
                    / v.len() as f32
            };
            (p(sr), p(sf), 0.0)
        }
        LossKind::BceProb | LossKind::Lsgan => (mean(sr), mean(sf), 0.5),
        LossKind::Hinge => (mean(sr), mean(sf), 0.0),
        LossKind::WganGp => {
            let (r, f) = (mean(sr), mean(sf));
            (r, f, 0.5 * (r + f))
        }
    };
    StepStats {
        d_real,
        d_fake,
        acc_real: loss::accuracy_above(sr, thr),
        acc_fake: 1.0 - loss::accuracy_above(sf, thr),
        ..StepStats::default()
    }
}

/// Training produced a NaN or infinity; the run stops and keeps its last good checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("training diverged at step {step}: a {what} value became NaN or infinite")]
pub struct NonFinite {
    /// Step at which it happened.
    pub step: u64,
    /// "loss" or "weights".
    pub what: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkpoint whose parameters do not fit its configuration (here: the `mcu` networks'
    /// parameters under the much larger `classic` configuration) is refused on the counts,
    /// naming both; a checkpoint that fits loads back to the same state.
    #[test]
    fn checkpoints_are_checked_against_their_configuration() {
        use crate::config::Arch;
        let shape = DataShape::MNIST;
        let small = TrainConfig::classic_recipe(Arch::Mcu);
        let ck = Gan::new(&small, shape).unwrap().checkpoint();
        let again = Gan::from_checkpoint(ck.clone()).unwrap().checkpoint();
        assert_eq!(postcard::to_allocvec(&again).unwrap(), postcard::to_allocvec(&ck).unwrap());
        let big = TrainConfig::classic_recipe(Arch::Classic).resolved();
        let want = big.generator(shape).unwrap().spec().param_len();
        let foreign = Checkpoint { config: big, ..ck.clone() };
        let Err(err) = Gan::from_checkpoint(foreign) else { panic!("a foreign checkpoint loaded") };
        let got = ck.g.params.len();
        assert_eq!(
            err.to_string(),
            format!(
                "checkpoint generator parameters has {got} values, the configuration needs {want}"
            )
        );
    }

    /// The projection's output gradient is the derivative of `Σ g·score` with respect to each
    /// output (the map is linear, so the check is exact).
    #[test]
    fn projection_scores_and_their_gradient() {
        let labels = [2u8, 0, 1];
        let width = 4;
        let out: Vec<f32> = (0..labels.len() * width).map(|i| i as f32 * 0.5 - 1.0).collect();
        let mut buf = vec![0.0; labels.len()];
        let s = scores(&out, &labels, true, &mut buf).to_vec();
        assert_eq!(s, [out[0] + out[3], out[4] + out[5], out[8] + out[10]]);
        assert_eq!(scores(&out[..3], &labels, false, &mut buf), &out[..3]);
        let g = [0.25f32, -1.0, 2.0];
        let mut full = vec![0.0; out.len()];
        let dg = output_grad(&g, &labels, true, &mut full).to_vec();
        for j in 0..out.len() {
            let mut bumped = out.clone();
            bumped[j] += 1.0;
            let s2 = scores(&bumped, &labels, true, &mut buf).to_vec();
            let d: f32 = g.iter().zip(s2.iter().zip(&s)).map(|(g, (a, b))| g * (a - b)).sum();
            assert_eq!(d, dg[j], "output {j}");
        }
    }
}
