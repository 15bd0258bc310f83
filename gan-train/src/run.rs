//! A training run on disk: the run directory, atomic checkpoints, the epoch loop with its
//! progress bar and reports, and the generator export.
//!
//! ```text
//! RUN/
//!   config.toml          the configuration (as resolved)
//!   checkpoint.bin       latest checkpoint (written atomically: temp file + rename)
//!   losses.csv           one row every `log_every` steps
//!   losses.png           loss and D-output curves
//!   samples/epoch_NNNN.png  the fixed-noise grid after each epoch
//!   progress.gif         all grids, animated
//!   quality.csv          the generator's scores every `quality_every` epochs
//!   quality.png          their curves
//!   best.ganw, best.bin  the best-scoring generator, and its training state (for rollbacks)
//!   generator.ganw       the exported generator (firmware weights format)
//! ```

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use gan_core::encoding::Encoding;
use gan_core::format::{self, Header, ModelKind};
use gan_core::kernels::Exec;
use gan_core::noise;

use crate::checkpoint;
use crate::config::{CollapseAction, DataShape, OutAct, TrainConfig};
use crate::data::{Batcher, Dataset, Scale};
use crate::quality::{self, Tracker, Verdict};
use crate::report::{self, LossLog, LossRow};
use crate::trainer::{Checkpoint, DataSource, Gan};

/// Seed offset for the fixed grid noise, so it never coincides with training noise.
const GRID_SEED_SALT: u64 = 0x9E37_79B9_7F4A_7C15;

/// Paths inside a run directory.
#[derive(Clone, Debug)]
pub struct RunDir {
    root: PathBuf,
}

/// The accessors of the files directly in a run directory: `name => "file"`.
macro_rules! run_files {
    ($($(#[$doc:meta])* $name:ident => $file:literal;)*) => {
        impl RunDir {
            $($(#[$doc])* pub fn $name(&self) -> PathBuf {
                self.root.join($file)
            })*
        }
    };
}

run_files! {
    /// `config.toml`.
    config => "config.toml";
    /// `checkpoint.bin`.
    checkpoint => "checkpoint.bin";
    /// `losses.csv`.
    csv => "losses.csv";
    /// `losses.png`.
    plot => "losses.png";
    /// `samples/`.
    samples => "samples";
    /// `progress.gif`.
    gif => "progress.gif";
    /// `generator.ganw`.
    generator => "generator.ganw";
    /// `quality.csv`: the scores during training.
    quality_csv => "quality.csv";
    /// `quality.png`.
    quality_plot => "quality.png";
    /// `best.ganw`: the best-scoring generator.
    best => "best.ganw";
    /// `best.bin`: the training state of the best-scoring generator (for rollbacks).
    best_checkpoint => "best.bin";
}

impl RunDir {
    /// A run directory at `root` (not created yet).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        RunDir { root: root.into() }
    }
    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// The grid after epoch `e` (1-based).
    pub fn grid(&self, e: u32) -> PathBuf {
        self.samples().join(format!("epoch_{e:04}.png"))
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, flushed to disk,
/// then renamed over the target. A crash leaves either the old or the new file, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path.file_name().context("path has no file name")?.to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp"));
    let written = (|| -> Result<()> {
        let mut f =
            fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let (first, rest) = bytes.split_at(bytes.len() / 2);
        f.write_all(first)
            .and_then(|()| {
                crate::failpoint::hit("write-half");
                f.write_all(rest)
            })
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        crate::failpoint::hit("write");
        fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    })();
    if written.is_err() {
        // Leave nothing behind; the old file (if any) is untouched.
        let _ = fs::remove_file(&tmp);
    }
    written?;
    // Persist the rename itself (best effort: not every platform can open a directory).
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The generator of a checkpoint as an f32 weights file (the firmware format).
pub fn export_bytes(ck: &Checkpoint) -> Result<Vec<u8>> {
    export_bytes_as(ck, Encoding::F32)
}

/// The generator of a checkpoint as a weights file in `encoding`, with its batch
/// normalisations folded into the layers before them ([`gan_core::fold`]).
pub fn export_bytes_as(ck: &Checkpoint, encoding: Encoding) -> Result<Vec<u8>> {
    let cfg = ck.config.resolved();
    let def = cfg.generator(ck.data)?;
    let spec = def.spec();
    ensure!(ck.g.params.len() == spec.param_len(), "checkpoint generator has the wrong size");
    let classes = if cfg.conditional { ck.data.classes } else { 0 };
    let meta = WeightsMeta {
        kind: ModelKind::Generator,
        latent: cfg.latent,
        classes,
        noise: cfg.noise.into(),
    };
    encode_folded(&spec, &meta, ck.generator_params(), encoding)
}

/// [`encode_weights`] of the network with every foldable batch normalisation folded into the
/// layer before it: what a device runs (fewer operations, and int8 cannot store the
/// normalisation). A network without one is encoded as it is.
pub fn encode_folded(
    spec: &gan_core::spec::Spec<'_>, meta: &WeightsMeta, params: &[f32], encoding: Encoding,
) -> Result<Vec<u8>> {
    if let Some(l) = spec.iter().find(|l| !params[l.param_range()].iter().all(|v| v.is_finite())) {
        bail!(
            "the generator's layer {} ({l}) holds a NaN or an infinity: the run diverged; \
             export an earlier checkpoint (best.bin keeps the best-scoring one)",
            l.index
        );
    }
    if !gan_core::fold::can_fold(spec) {
        return encode_weights(spec, meta, params, encoding);
    }
    let layers = gan_core::fold::folded_layers(spec).map_err(|e| anyhow::anyhow!("{e}"))?;
    let folded = gan_core::spec::Spec::new(spec.input(), &layers)
        .map_err(|e| anyhow::anyhow!("folded network: {e}"))?;
    let mut fp = vec![0f32; folded.param_len()];
    gan_core::fold::fold_params(spec, params, &folded, &mut fp)
        .map_err(|e| anyhow::anyhow!("folding batch normalisation: {e}"))?;
    encode_weights(&folded, meta, &fp, encoding)
}

/// What a weights file says about its network besides the layers.
#[derive(Clone, Copy, Debug)]
pub struct WeightsMeta {
    /// Generator or discriminator.
    pub kind: ModelKind,
    /// Noise values per sample.
    pub latent: u32,
    /// Classes of a conditional model (0 = unconditional).
    pub classes: u32,
    /// Noise distribution.
    pub noise: gan_core::format::NoiseKind,
}

/// A weights file for the network `spec` with f32 parameters `params`, stored in `encoding`:
/// the one way from parameters to a file, for checkpoints and weights files alike.
pub fn encode_weights(
    spec: &gan_core::spec::Spec<'_>, meta: &WeightsMeta, params: &[f32], encoding: Encoding,
) -> Result<Vec<u8>> {
    let header =
        Header::for_spec_as(meta.kind, spec, meta.latent, meta.classes, meta.noise, encoding)
            .map_err(|e| match e {
                format::FormatError::Unsupported => anyhow::anyhow!(
                    "{e}: this generator cannot be stored as {}, use f32",
                    encoding.name()
                ),
                e => anyhow::anyhow!("{e}"),
            })?;
    let mut maxima = Vec::new();
    let calib = if encoding.needs_calibration() {
        Some(calibrate(spec, meta, params, &mut maxima)?)
    } else {
        None
    };
    let mut buf = vec![0u8; header.file_len_bound()];
    let n = format::write_calibrated(&mut buf, &header, params, calib.as_ref())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    buf.truncate(n);
    Ok(buf)
}

/// Generator inputs the `q8` encoding's scales are calibrated on.
pub const CALIBRATION_SAMPLES: usize = 512;

/// The activations' scales for the `q8` encoding: the f32 generator run (exact inference) on
/// [`CALIBRATION_SAMPLES`] inputs drawn like `gan-train sample` draws them (noise from a
/// fixed seed, classes cycling), the largest magnitudes kept in `maxima`.
fn calibrate<'m>(
    spec: &gan_core::spec::Spec<'_>, meta: &WeightsMeta, params: &[f32], maxima: &'m mut Vec<f32>,
) -> Result<gan_core::encoding::q8::Calibration<'m>> {
    use gan_core::encoding::q8;
    ensure!(meta.kind == ModelKind::Generator, "only a generator can be stored as q8");
    let steps = q8::plan(spec).map_err(|e| anyhow::anyhow!("{e}"))?;
    let per = spec.input().len();
    let mut inputs = vec![0f32; CALIBRATION_SAMPLES * per];
    let mut rng = gan_core::noise::rng(0xCA11_B8A7);
    for (i, x) in inputs.chunks_exact_mut(per).enumerate() {
        let class = if meta.classes > 0 { i % meta.classes as usize } else { 0 };
        gan_core::noise::generator_input(meta.noise, &mut rng, meta.latent as usize, class, x);
    }
    maxima.resize(steps.len(), 0.0);
    let mut output = vec![0f32; spec.output().len()];
    let mut scratch = vec![0f32; spec.infer_scratch_len(1)];
    let input_max = q8::calibrate(
        spec,
        params,
        &inputs,
        CALIBRATION_SAMPLES,
        &mut output,
        &mut scratch,
        maxima,
    )
    .map_err(|e| anyhow::anyhow!("calibrating the q8 scales: {e}"))?;
    Ok(q8::Calibration { input_max, output_max: maxima })
}

/// Re-encodes an f32 weights file in `encoding` (its parameters, read back exactly, go through
/// [`encode_folded`]).
pub fn reencode_weights(bytes: &[u8], encoding: Encoding) -> Result<Vec<u8>> {
    let file = crate::sample::AlignedBytes::new(bytes);
    let w = file.weights()?;
    let h = &w.header;
    let params = w.params().with_context(|| {
        format!(
            "the weights file is already {}; re-encode from its f32 original or its run",
            h.encoding().description()
        )
    })?;
    let spec = h.spec().map_err(|e| anyhow::anyhow!("{e}"))?;
    let meta = WeightsMeta { kind: h.kind, latent: h.latent, classes: h.classes, noise: h.noise };
    encode_folded(&spec, &meta, params, encoding)
}

/// Parses an encoding name as the command line spells it ([`Encoding::name`]).
pub fn parse_encoding(s: &str) -> std::result::Result<Encoding, String> {
    Encoding::ALL.into_iter().find(|e| e.name() == s).ok_or_else(|| {
        let names: Vec<&str> = Encoding::ALL.iter().map(|e| e.name()).collect();
        format!("unknown weight type `{s}` (one of: {})", names.join(", "))
    })
}

/// Options for [`train`] and [`resume`] that are not part of the model's configuration.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Where the run lives.
    pub run_dir: PathBuf,
    /// Data directory (`None`: the bundled digits).
    pub data_dir: Option<PathBuf>,
    /// Show a progress bar (off in tests and when not on a terminal).
    pub progress: bool,
    /// Set from another thread (Ctrl-C) to stop after the current step with a checkpoint.
    pub stop: Arc<AtomicBool>,
    /// Write grids, plots and the GIF (tests may skip them for speed).
    pub reports: bool,
    /// Use at most this many images (0 = all).
    pub limit: usize,
}

impl RunOptions {
    /// Defaults for a run directory.
    pub fn new(run_dir: impl Into<PathBuf>) -> Self {
        RunOptions {
            run_dir: run_dir.into(),
            data_dir: None,
            progress: false,
            stop: Arc::new(AtomicBool::new(false)),
            reports: true,
            limit: 0,
        }
    }
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// All epochs (or `max_steps`) done; the generator was exported.
    Finished {
        /// Steps done in total.
        steps: u64,
        /// Images per second over this invocation.
        images_per_sec: f64,
    },
    /// Stopped by request; the checkpoint holds the position.
    Interrupted {
        /// Steps done so far.
        steps: u64,
    },
    /// Stopped after a collapse (`on_collapse = "stop"`, or no rollbacks left); the last
    /// generator was exported, the best is in `best.ganw`.
    Collapsed {
        /// Steps done.
        steps: u64,
        /// What showed the collapse.
        why: String,
        /// Epoch of the best generator (0 when none was scored).
        best_epoch: u32,
    },
}

fn load_data(opts: &RunOptions) -> Result<Dataset> {
    let dir = opts.data_dir.clone().unwrap_or_else(crate::data::default_data_dir);
    let mut data =
        Dataset::load_dir(&dir).with_context(|| format!("loading data from {}", dir.display()))?;
    if opts.limit > 0 {
        data.truncate(opts.limit);
    }
    Ok(data)
}

fn data_shape(data: &Dataset) -> Result<DataShape> {
    Ok(DataShape {
        h: u32::try_from(data.h)?,
        w: u32::try_from(data.w)?,
        classes: data.classes.max(1) as u32,
    })
}

/// Starts a new run in `opts.run_dir` (which must not hold a checkpoint already).
pub fn train(cfg: &TrainConfig, opts: &RunOptions, exec: &dyn Exec) -> Result<Outcome> {
    let run = RunDir::new(&opts.run_dir);
    if run.checkpoint().exists() {
        bail!(
            "{} already holds a run; resume it with `gan-train train --resume {}` or choose another --run",
            run.root().display(),
            run.root().display()
        );
    }
    let data = load_data(opts)?;
    let shape = data_shape(&data)?;
    if opts.reports {
        check_grid_fits(cfg.grid, shape)?;
    }
    if cfg.conditional && data.labels.is_none() {
        bail!("a conditional GAN needs labels, and this data set has none");
    }
    let mut gan = Gan::new(cfg, shape)?;
    gan.state.source = DataSource {
        // Absolute, so a resume from another working directory finds the same files.
        dir: opts.data_dir.as_ref().map(|d| {
            fs::canonicalize(d).unwrap_or_else(|_| d.clone()).to_string_lossy().into_owned()
        }),
        limit: opts.limit,
        images: data.n,
    };
    fs::create_dir_all(run.root()).with_context(|| format!("creating {}", run.root().display()))?;
    write_atomic(&run.config(), toml::to_string_pretty(gan.cfg())?.as_bytes())?;
    // Start the CSV afresh (a leftover from an aborted run without checkpoint is stale).
    let _ = fs::remove_file(run.csv());
    run_loop(gan, data, &run, opts, exec)
}

/// Continues the run in `opts.run_dir` from its checkpoint; `epochs` may extend it.
pub fn resume(opts: &RunOptions, epochs: Option<u32>, exec: &dyn Exec) -> Result<Outcome> {
    resume_with(opts, epochs, None, exec)
}

/// Like [`resume`]; `max_steps` may also change the step limit (0 = none).
///
/// The run continues on the data it started with: the data directory and image limit stored in
/// the checkpoint are used unless `opts` names them, and a data set of another size is refused.
pub fn resume_with(
    opts: &RunOptions, epochs: Option<u32>, max_steps: Option<u64>, exec: &dyn Exec,
) -> Result<Outcome> {
    let run = RunDir::new(&opts.run_dir);
    let mut ck = checkpoint::load(&run.checkpoint())?;
    check_run_config(&run, &ck.config)?;
    let changed = epochs.is_some_and(|e| e != ck.config.epochs)
        || max_steps.is_some_and(|m| m != ck.config.max_steps);
    if let Some(e) = epochs {
        ck.config.epochs = e;
    }
    if let Some(m) = max_steps {
        ck.config.max_steps = m;
    }
    let mut opts = opts.clone();
    if opts.data_dir.is_none() {
        opts.data_dir = ck.source.dir.as_ref().map(PathBuf::from);
    }
    if opts.limit == 0 {
        opts.limit = ck.source.limit;
    }
    let data = load_data(&opts)?;
    let shape = data_shape(&data)?;
    if opts.reports {
        check_grid_fits(ck.config.grid, shape)?;
    }
    ensure!(
        shape == ck.data,
        "the data ({}×{}, {} classes) does not match the run's ({}×{}, {} classes)",
        shape.h,
        shape.w,
        shape.classes,
        ck.data.h,
        ck.data.w,
        ck.data.classes
    );
    ensure!(
        ck.source.images == 0 || data.n == ck.source.images,
        "the run trained on {} images, this data has {} (check --data and --limit)",
        ck.source.images,
        data.n
    );
    // Everything is checked before anything is written.
    let gan = Gan::from_checkpoint(ck)?;
    if changed || !run.config().exists() {
        write_atomic(&run.config(), toml::to_string_pretty(gan.cfg())?.as_bytes())?;
    }
    run_loop(gan, data, &run, &opts, exec)
}

/// Refuses to resume when the run directory's `config.toml` is not the configuration of the
/// checkpoint it holds: the file was edited (training would silently ignore and then overwrite
/// it), or the checkpoint was copied in from another run. Names the keys that differ.
fn check_run_config(run: &RunDir, ck: &TrainConfig) -> Result<()> {
    let path = run.config();
    let Ok(text) = fs::read_to_string(&path) else {
        return Ok(()); // none yet (or unreadable): resume writes the checkpoint's
    };
    let file: toml::Table = toml::from_str(&text).with_context(|| {
        format!("{} is not valid TOML; restore it or delete it", path.display())
    })?;
    let ours: toml::Table = toml::from_str(&toml::to_string(ck)?)?;
    let mut differ: Vec<&str> = ours
        .iter()
        .filter(|(k, v)| file.get(k.as_str()).is_some_and(|f| f != *v))
        .map(|(k, _)| k.as_str())
        .collect();
    differ.extend(file.keys().filter(|k| !ours.contains_key(k.as_str())).map(|k| k.as_str()));
    if !differ.is_empty() {
        bail!(
            "{} does not match the run's checkpoint ({} differ): it was edited, or the checkpoint \
             comes from another run. Nothing was changed. A resume continues the checkpoint's \
             configuration (use --epochs to extend it); restore config.toml, or start a new run \
             with --config {}",
            path.display(),
            differ.join(", "),
            path.display()
        );
    }
    Ok(())
}

/// The fixed noise batch for grids: `grid` rows of G input, classes cycling 0..classes.
pub fn fixed_noise(gan: &Gan) -> Vec<f32> {
    let cfg = gan.cfg();
    let gin = gan.g.def.input.len();
    let mut z = vec![0.0; cfg.grid * gin];
    let mut rng = noise::rng(cfg.seed ^ GRID_SEED_SALT);
    let classes = gan.classes().max(1);
    for (i, row) in z.chunks_exact_mut(gin).enumerate() {
        noise::generator_input(cfg.noise.into(), &mut rng, cfg.latent as usize, i % classes, row);
    }
    z
}

/// Grey bytes for generator outputs.
pub fn to_pixels(out: &[f32], act: OutAct) -> Vec<u8> {
    out.iter()
        .map(|&v| match act {
            OutAct::Tanh => gan_core::to_pixel(v),
            OutAct::Sigmoid => gan_core::to_pixel_unit(v),
        })
        .collect()
}

fn grid_cols(n: usize) -> usize {
    (n as f64).sqrt().ceil().max(1.0) as usize
}

/// Largest side of a GIF frame (and so of the per-epoch grids it animates).
const MAX_GRID_SIDE: usize = 65_535;

/// Refuses, before training, a per-epoch grid of `n` images too large for the GIF (images of
/// the data's size, drawn at twice their size).
fn check_grid_fits(n: usize, shape: DataShape) -> Result<()> {
    let cols = grid_cols(n);
    let rows = n.div_ceil(cols);
    let side = |cells: usize, px: u32| cells.saturating_mul(2 * px as usize + 1).saturating_add(1);
    let (width, height) = (side(cols, shape.w), side(rows, shape.h));
    if width > MAX_GRID_SIDE || height > MAX_GRID_SIDE {
        bail!(
            "the per-epoch sample grid of {n} images of {}×{} would be {width}×{height} pixels, \
             more than the {MAX_GRID_SIDE} a GIF frame allows: set a smaller `grid` in the config, \
             or train with smaller images",
            shape.w,
            shape.h
        );
    }
    Ok(())
}

fn save_epoch_grid(gan: &Gan, run: &RunDir, z: &[f32], epoch: u32) -> Result<()> {
    // Inference mode (running BatchNorm statistics, no dropout): what an export will draw.
    let n = gan.cfg().grid;
    let spec = gan.g.def.spec();
    let mut out = vec![0.0; n * spec.output().len()];
    let mut scratch = vec![0.0; spec.infer_scratch_len(n)];
    gan_core::model::infer(&spec, gan.state.generator_params(), z, &mut out, &mut scratch, n)?;
    let px = to_pixels(&out, gan.cfg().g_out);
    let (h, w) = (gan.state.data.h as usize, gan.state.data.w as usize);
    fs::create_dir_all(run.samples())?;
    report::save_grid_png(&run.grid(epoch), &px, n, h, w, grid_cols(n), 2)
}

/// Reads back every epoch grid and writes the GIF.
/// Writes the animation of all epoch grids; `false` (and nothing written) if `stop` was set
/// (Ctrl-C) before it was done.
fn save_progress_gif(run: &RunDir, epochs: u32, stop: &AtomicBool) -> Result<bool> {
    let mut frames = Vec::new();
    let mut dims = None;
    for e in 1..=epochs {
        if stop.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let path = run.grid(e);
        if !path.exists() {
            continue;
        }
        let (pixels, w, h) = read_gray_png(&path)?;
        if dims.is_some_and(|d| d != (w, h)) {
            continue;
        }
        dims = Some((w, h));
        frames.push(pixels);
    }
    if stop.load(Ordering::Relaxed) {
        return Ok(false);
    }
    if let Some((w, h)) = dims {
        report::save_gif(&run.gif(), &frames, w, h, 25)?;
    }
    Ok(true)
}

/// Decodes an 8-bit grey PNG.
pub fn read_gray_png(path: &Path) -> Result<(Vec<u8>, usize, usize)> {
    let file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let decoder = png::Decoder::new(std::io::BufReader::new(file));
    let mut reader = decoder.read_info()?;
    let mut buf = vec![0; reader.output_buffer_size().context("PNG too large")?];
    let info = reader.next_frame(&mut buf)?;
    ensure!(
        info.color_type == png::ColorType::Grayscale && info.bit_depth == png::BitDepth::Eight,
        "{} is not an 8-bit grey PNG",
        path.display()
    );
    buf.truncate(info.buffer_size());
    Ok((buf, info.width as usize, info.height as usize))
}

/// The loss-log row for the steps collected in the log window, which starts over.
fn take_row(gan: &mut Gan) -> Option<LossRow> {
    let st = &mut gan.state;
    let [d_loss, g_loss, d_real, d_fake, d_acc_real, d_acc_fake] = st.log_window.take()?;
    Some(LossRow {
        step: st.pos.step,
        epoch: st.pos.epoch,
        d_loss,
        g_loss,
        d_real,
        d_fake,
        d_acc_real,
        d_acc_fake,
    })
}

/// After a collapse: the state of the best generator, with both learning rates halved and the
/// run's current epoch budget.
fn rolled_back(gan: &Gan, run: &RunDir) -> Result<Gan> {
    let mut ck =
        checkpoint::load(&run.best_checkpoint()).context("rolling back to the best generator")?;
    ck.config.g_lr = gan.cfg().g_lr / 2.0;
    ck.config.d_lr = gan.cfg().d_lr / 2.0;
    ck.config.epochs = gan.cfg().epochs;
    ck.config.max_steps = gan.cfg().max_steps;
    ck.quality = gan.state.quality.clone();
    ck.quality.rollbacks += 1;
    Gan::from_checkpoint(ck)
}

/// What the quality step decided.
enum AfterScore {
    Continue,
    /// Rolled back: the loop restarts from the best epoch.
    RolledBack,
    /// Stop the run.
    Stop(String),
}

/// Scores the epoch just done when it is due, keeps the best generator, and acts on a
/// collapse. `scored` is how many loss rows the previous score had seen.
fn quality_step(
    gan: &mut Gan, tracker: &mut Tracker, log: &mut LossLog, scored: &mut usize, run: &RunDir,
    opts: &RunOptions, exec: &dyn Exec,
) -> Result<AfterScore> {
    let epoch = gan.state.pos.epoch;
    if !Tracker::due(gan.cfg(), epoch) {
        return Ok(AfterScore::Continue);
    }
    let s = tracker.score(gan, exec)?;
    let recent = &log.rows()[(*scored).min(log.rows().len())..];
    let verdict = quality::judge(&mut gan.state.quality, &s, epoch, recent);
    *scored = log.rows().len();
    tracker.push(gan, &s);
    tracker.save(run, opts.reports)?;
    let why = match verdict {
        Verdict::Fine => return Ok(AfterScore::Continue),
        Verdict::Best => {
            write_atomic(&run.best(), &export_bytes(&gan.state)?)?;
            checkpoint::save(&run.best_checkpoint(), &gan.state)?;
            return Ok(AfterScore::Continue);
        }
        Verdict::Collapse(why) => why,
    };
    let q = &gan.state.quality;
    let best =
        format!("the best generator so far is from epoch {} (FID {:.1})", q.best_epoch, q.best_fid);
    match gan.cfg().on_collapse {
        CollapseAction::Warn => {
            eprintln!(
                "warning: collapse at epoch {epoch}: {why}; {best}, in {}",
                run.best().display()
            );
            Ok(AfterScore::Continue)
        }
        CollapseAction::Rollback
            if q.rollbacks < quality::MAX_ROLLBACKS && run.best_checkpoint().exists() =>
        {
            let next = rolled_back(gan, run)?;
            eprintln!(
                "collapse at epoch {epoch}: {why}; rolling back to epoch {} and going on with learning rates G {:.2e}, D {:.2e} (rollback {} of {})",
                next.state.pos.epoch,
                next.cfg().g_lr,
                next.cfg().d_lr,
                next.state.quality.rollbacks,
                quality::MAX_ROLLBACKS
            );
            *gan = next;
            *log = LossLog::resume_csv(&run.csv(), gan.state.pos.step)?;
            *scored = log.rows().len();
            tracker.rows.retain(|r| r.epoch <= gan.state.pos.epoch);
            tracker.save(run, opts.reports)?;
            write_atomic(&run.config(), toml::to_string_pretty(gan.cfg())?.as_bytes())?;
            checkpoint::save(&run.checkpoint(), &gan.state)?;
            Ok(AfterScore::RolledBack)
        }
        CollapseAction::Rollback => {
            Ok(AfterScore::Stop(format!("{why} (after {} rollbacks); {best}", q.rollbacks)))
        }
        CollapseAction::Stop => Ok(AfterScore::Stop(format!("{why}; {best}"))),
    }
}

fn run_loop(
    mut gan: Gan, data: Dataset, run: &RunDir, opts: &RunOptions, exec: &dyn Exec,
) -> Result<Outcome> {
    let scale = match gan.cfg().g_out {
        OutAct::Tanh => Scale::Tanh,
        OutAct::Sigmoid => Scale::Sigmoid,
    };
    let batch = gan.cfg().batch;
    let batcher = Batcher::new(data, batch, gan.cfg().seed, scale)?;
    let per_epoch = batcher.batches_per_epoch();
    let px = batcher.dataset().pixels_per_image();
    let mut log = LossLog::resume_csv(&run.csv(), gan.state.pos.step)?;
    let history = quality::read_csv(&run.quality_csv(), gan.state.pos.epoch)?;
    let mut tracker = Tracker::new(&gan, batcher.dataset(), history, exec)?;
    let mut scored = log.rows().len();
    let z_fixed = fixed_noise(&gan);
    let mut real = vec![0.0f32; batch * px];
    let mut labels = vec![0u8; batch];
    let started = Instant::now();
    let start_step = gan.state.pos.step;
    let log_every = gan.cfg().log_every.max(1) as u64;
    let mut collapse = None;

    'epochs: while gan.state.pos.epoch < gan.cfg().epochs {
        let (epochs, max_steps) = (gan.cfg().epochs, gan.cfg().max_steps);
        let perm = batcher.permutation(gan.state.pos.epoch);
        let bar = progress_bar(opts.progress, per_epoch as u64, gan.state.pos.epoch, epochs);
        bar.set_position(gan.state.pos.batch_in_epoch as u64);
        let fid = tracker
            .as_ref()
            .and_then(|t| t.rows.last())
            .map_or(String::new(), |r| format!("  FID {:.1}", r.fid));
        while (gan.state.pos.batch_in_epoch as usize) < per_epoch {
            if max_steps > 0 && gan.state.pos.step >= max_steps {
                bar.finish_and_clear();
                break 'epochs;
            }
            let b = gan.state.pos.batch_in_epoch as usize;
            batcher.fill_batch(&perm, b * batch, &mut real, &mut labels);
            let stats = gan.train_step(&real, &labels, exec).map_err(|e| {
                bar.abandon();
                let kept = if run.checkpoint().exists() {
                    format!("the last good checkpoint is kept at {}", run.checkpoint().display())
                } else {
                    "no checkpoint had been written yet".to_string()
                };
                e.context(format!("stopped; {kept} (try a lower learning rate)"))
            })?;
            if gan.state.pos.step.is_multiple_of(log_every)
                && let Some(row) = take_row(&mut gan)
            {
                log.push(row);
            }
            bar.inc(1);
            bar.set_message(format!(
                "D {:.3}  G {:.3}  D(x) {:.2}  D(G(z)) {:.2}{fid}",
                stats.d_loss, stats.g_loss, stats.d_real, stats.d_fake
            ));
            if opts.stop.load(Ordering::Relaxed) {
                bar.abandon_with_message("interrupted");
                log.append_csv(&run.csv())?;
                checkpoint::save(&run.checkpoint(), &gan.state)?;
                return Ok(Outcome::Interrupted { steps: gan.state.pos.step });
            }
        }
        bar.finish_and_clear();
        gan.end_epoch();
        log.append_csv(&run.csv())?;
        if opts.reports {
            save_epoch_grid(&gan, run, &z_fixed, gan.state.pos.epoch)?;
            if !log.rows().is_empty() {
                report::plot_losses(&run.plot(), log.rows(), "GAN training")?;
            }
        }
        if let Some(t) = &mut tracker {
            match quality_step(&mut gan, t, &mut log, &mut scored, run, opts, exec)? {
                AfterScore::Continue => {}
                AfterScore::RolledBack => continue 'epochs,
                AfterScore::Stop(why) => {
                    collapse = Some(why);
                    checkpoint::save(&run.checkpoint(), &gan.state)?;
                    break 'epochs;
                }
            }
        }
        checkpoint::save(&run.checkpoint(), &gan.state)?;
        if opts.progress
            && let Some(r) = log.rows().last()
        {
            let score = tracker.as_ref().and_then(|t| t.rows.last()).map_or(String::new(), |q| {
                format!(
                    "  FID {:.1} precision {:.2} recall {:.2}{}",
                    q.fid,
                    q.precision,
                    q.recall,
                    q.class_share(|m| format!(" class {:.0}%", 100.0 * m))
                )
            });
            eprintln!(
                "epoch {:>3}/{epochs}  D {:.3}  G {:.3}  D(x) {:.2}  D(G(z)) {:.2}  acc real {:.0}% fake {:.0}%{score}",
                gan.state.pos.epoch,
                r.d_loss,
                r.g_loss,
                r.d_real,
                r.d_fake,
                100.0 * r.d_acc_real,
                100.0 * r.d_acc_fake
            );
        }
    }
    if let Some(row) = take_row(&mut gan) {
        // A run killed while writing this last checkpoint has logged this row already (the
        // checkpoint it resumed from is the one before, at the same step): log it once.
        if log.rows().last().map(|r| r.step) != Some(row.step) {
            log.push(row);
        }
    }
    log.append_csv(&run.csv())?;
    checkpoint::save(&run.checkpoint(), &gan.state)?;
    // The generator first: a Ctrl-C during the reports below then loses only the animation.
    write_atomic(&run.generator(), &export_bytes(&gan.state)?)?;
    if opts.reports {
        if !log.rows().is_empty() {
            report::plot_losses(&run.plot(), log.rows(), "GAN training")?;
        }
        if !save_progress_gif(run, gan.state.pos.epoch, &opts.stop)? {
            eprintln!("interrupted: skipped {} (the run itself is complete)", run.gif().display());
        }
    }
    if let Some(why) = collapse {
        let best_epoch = gan.state.quality.best_epoch;
        return Ok(Outcome::Collapsed { steps: gan.state.pos.step, why, best_epoch });
    }
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    Ok(Outcome::Finished {
        steps: gan.state.pos.step,
        images_per_sec: (gan.state.pos.step - start_step) as f64 * batch as f64 / secs,
    })
}

fn progress_bar(show: bool, len: u64, epoch: u32, epochs: u32) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30.cyan/blue}] {pos}/{len} {per_sec:>9} {eta:>4} {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(format!("epoch {:>3}/{epochs}", epoch + 1));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use gan_core::generate::ClassChoice;
    use gan_core::spec::{Layer, Shape, Spec};

    /// Random parameters with batch-norm statistics as a trained network has them.
    fn params(spec: &Spec<'_>) -> Vec<f32> {
        let mut rng = gan_core::noise::rng(3);
        let mut p = vec![0f32; spec.param_len()];
        gan_core::noise::fill_gaussian(&mut rng, &mut p);
        for l in spec.iter() {
            for v in &mut p[l.weight_range()] {
                *v *= if l.stats_len > 0 { 0.1 } else { 0.2 };
                if l.stats_len > 0 {
                    *v += 1.0;
                }
            }
            let half = l.stats_len / 2;
            for v in &mut p[l.stats_range()][half..] {
                *v = 0.5 + v.abs();
            }
        }
        p
    }

    /// The animation is written from the epoch grids, and not at all once Ctrl-C was pressed.
    #[test]
    fn the_progress_gif_honours_ctrl_c() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        fs::create_dir_all(run.samples()).unwrap();
        for e in 1..=3u32 {
            let pixels = vec![(e * 60) as u8; 4 * 784];
            crate::report::save_grid_png(&run.grid(e), &pixels, 4, 28, 28, 2, 1).unwrap();
        }
        let stop = AtomicBool::new(true);
        assert!(!save_progress_gif(&run, 3, &stop).unwrap());
        assert!(!run.gif().exists());
        stop.store(false, Ordering::Relaxed);
        assert!(save_progress_gif(&run, 3, &stop).unwrap());
        assert!(fs::metadata(run.gif()).unwrap().len() > 100);
    }

    /// Export folds the batch normalisation of a convolutional generator away; its digits stay
    /// those of the trained network (within a grey level), and int8 can store it.
    #[test]
    fn export_folds_batch_norm() {
        let layers = gan_core::presets::conv_generator(28, 28, 8, 4, Layer::Tanh);
        let spec = Spec::new(Shape::flat(12), &layers).unwrap();
        let p = params(&spec);
        let meta = WeightsMeta {
            kind: ModelKind::Generator,
            latent: 2,
            classes: 10,
            noise: gan_core::format::NoiseKind::Gaussian,
        };
        let plain = encode_weights(&spec, &meta, &p, Encoding::F32).unwrap();
        let folded = encode_folded(&spec, &meta, &p, Encoding::F32).unwrap();
        let int8 = encode_folded(&spec, &meta, &p, Encoding::I8).unwrap();
        assert!(encode_weights(&spec, &meta, &p, Encoding::I8).is_err());
        let digits = |bytes: &[u8]| {
            let a = crate::sample::AlignedBytes::new(bytes);
            let w = a.weights().unwrap();
            let layers = w.header.layers.len();
            (crate::sample::generate(&w, 5, 10, ClassChoice::Cycle).unwrap(), layers)
        };
        let (want, n_plain) = digits(&plain);
        let (got, n_folded) = digits(&folded);
        let (q, n_int8) = digits(&int8);
        assert_eq!((n_plain, n_folded, n_int8), (9, 7, 7));
        let max_diff = |a: &[u8], b: &[u8]| a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max();
        assert!(max_diff(&want, &got) <= Some(1), "{:?}", max_diff(&want, &got));
        let mean: f64 = want.iter().zip(&q).map(|(x, y)| f64::from(x.abs_diff(*y))).sum::<f64>()
            / want.len() as f64;
        assert!(mean < 6.0, "int8 differs from f32 by {mean} grey levels on average");
        // Re-encoding the folded f32 file gives the same int8 file.
        assert_eq!(reencode_weights(&folded, Encoding::I8).unwrap(), int8);
        // A diverged generator is not exported.
        let mut nan = p.clone();
        nan[spec.layer(4).unwrap().weight_range().start + 3] = f32::NAN;
        let err = format!("{:#}", encode_folded(&spec, &meta, &nan, Encoding::I8).unwrap_err());
        assert!(err.contains("layer 4") && err.contains("NaN or an infinity"), "{err}");
    }
}
