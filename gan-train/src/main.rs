//! `gan-train`: train a GAN on MNIST-format digits, watch it learn, export it for a
//! microcontroller.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use gan_core::board::Board;
use gan_core::encoding::Encoding;
use gan_train::config::{
    Arch, CollapseAction, DEFAULT_ARCH, DataShape, HiddenAct, LossKind, Noise, OptKind, OutAct,
    TrainConfig,
};
use gan_train::inspect;
use gan_train::run::{self, Outcome, RunDir, RunOptions};
use gan_train::sample::{self, AlignedBytes, ClassChoice};

#[derive(Parser)]
#[command(
    name = "gan-train",
    version,
    about = "Train a GAN on handwritten digits and export it for a microcontroller"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train a GAN (default: the microcontroller-sized model on the bundled 10k MNIST digits).
    Train(TrainArgs),
    /// Print the generator and discriminator layer tables for a configuration.
    Summary(ModelArgs),
    /// Export a run's generator as a weights file for the firmware (and optionally a UF2).
    Export(ExportArgs),
    /// Show and validate a weights file.
    Inspect {
        /// The weights file.
        file: PathBuf,
    },
    /// Generate digits from a weights file with the exact inference path the firmware uses.
    Sample(SampleArgs),
    /// The toy GAN that learns y = x² (2-D points).
    Toy(gan_train::toy::ToyArgs),
    /// Measure training and generation throughput.
    Bench(gan_train::bench::BenchArgs),
    /// Download MNIST from a mirror (checks SHA-256).
    Download(DownloadArgs),
    /// Convert firmware (ELF) or a weights file to UF2 for drag-and-drop flashing of a Pico.
    Uf2(Uf2Args),
    /// Score samples with the digit classifier: FID, precision, recall, class balance.
    Score(gan_train::score::ScoreArgs),
    /// Train the digit classifier that `score` uses.
    Classifier(gan_train::score::ClassifierArgs),
}

/// Model and training options; every flag overrides the config file (or the defaults).
#[derive(Args, Clone, Debug, Default, PartialEq)]
struct ModelArgs {
    /// TOML config file (see a run's config.toml for every key).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Architecture preset [default: pico].
    #[arg(long, value_enum)]
    arch: Option<Arch>,
    /// Noise size (with --arch custom or pico).
    #[arg(long)]
    latent: Option<u32>,
    /// Generator hidden widths, e.g. 256,512,1024 (with --arch custom; with --arch pico the
    /// channels of its two feature maps, e.g. 32,16).
    #[arg(long, value_delimiter = ',')]
    g_hidden: Option<Vec<u32>>,
    /// Discriminator hidden widths, e.g. 512,256 (with --arch custom or pico).
    #[arg(long, value_delimiter = ',')]
    d_hidden: Option<Vec<u32>>,
    /// Generator hidden activation.
    #[arg(long, value_enum)]
    g_act: Option<HiddenAct>,
    /// Generator output activation.
    #[arg(long, value_enum)]
    g_out: Option<OutAct>,
    /// Noise distribution.
    #[arg(long, value_enum)]
    noise: Option<Noise>,
    /// Conditional GAN (class labels into G and D).
    #[arg(long)]
    conditional: bool,
    /// Loss.
    #[arg(long, value_enum)]
    loss: Option<LossKind>,
    /// Gradient penalty weight (wgan-gp).
    #[arg(long)]
    gp_lambda: Option<f32>,
    /// Discriminator steps per generator step.
    #[arg(long)]
    n_critic: Option<u32>,
    /// One-sided label smoothing (real target 1 - s).
    #[arg(long)]
    label_smoothing: Option<f32>,
    /// Feature-matching weight added to the generator loss.
    #[arg(long)]
    feature_matching: Option<f32>,
    /// Minibatch discrimination kernels,dims (e.g. 32,8).
    #[arg(long, value_delimiter = ',')]
    minibatch_disc: Option<Vec<u32>>,
    /// Optimizer for both networks.
    #[arg(long, value_enum)]
    optimizer: Option<OptKind>,
    /// Generator learning rate.
    #[arg(long)]
    g_lr: Option<f32>,
    /// Discriminator learning rate.
    #[arg(long)]
    d_lr: Option<f32>,
    /// Adam β1.
    #[arg(long)]
    beta1: Option<f32>,
    /// SGD momentum.
    #[arg(long)]
    momentum: Option<f32>,
    /// Batch size.
    #[arg(long)]
    batch: Option<usize>,
    /// Epochs.
    #[arg(long)]
    epochs: Option<u32>,
    /// Stop after this many steps.
    #[arg(long)]
    max_steps: Option<u64>,
    /// Seed (initialisation, shuffling, noise).
    #[arg(long)]
    seed: Option<u64>,
    /// Weight initialisation: he-normal, he-uniform, xavier-normal, xavier-uniform or
    /// normal-0.02 (the DCGAN paper's).
    #[arg(long, value_parser = parse_init)]
    init: Option<gan_core::init::Init>,
    /// Dropout after each hidden layer of an MLP discriminator.
    #[arg(long)]
    d_dropout: Option<f32>,
    /// Shift every image D sees by up to this many pixels (augmentation; 0 = off).
    #[arg(long)]
    d_translate: Option<u32>,
    /// Projection discriminator for a conditional model (true/false).
    #[arg(long)]
    d_projection: Option<bool>,
    /// Decay of the generator's weight average (e.g. 0.999; 0 = off); grids, scores and the
    /// exported generator use the average.
    #[arg(long)]
    ema: Option<f32>,
    /// Score the generator every this many epochs (0 = never).
    #[arg(long)]
    quality_every: Option<u32>,
    /// Samples per score during training.
    #[arg(long)]
    quality_samples: Option<usize>,
    /// What to do when the scores show a collapse.
    #[arg(long, value_enum)]
    on_collapse: Option<CollapseAction>,
}

impl ModelArgs {
    fn config(&self) -> Result<TrainConfig> {
        let custom = self.latent.is_some() || self.g_hidden.is_some() || self.d_hidden.is_some();
        let mut c = match &self.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing {}", p.display()))?
            }
            // Widths without a preset: a custom MLP, from the mcu preset's recipe and widths.
            None if custom && self.arch.is_none() => TrainConfig::preset(Arch::Mcu),
            None => TrainConfig::preset(self.arch.unwrap_or(DEFAULT_ARCH)),
        };
        if custom && self.arch.is_none() && c.arch != Arch::Pico {
            // Widths given without a preset: start from the current preset's widths (the
            // pico preset's widths are its channel counts and stay its own).
            c = TrainConfig { arch: Arch::Custom, ..c.resolved() };
        }
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f.clone() { c.$f = v; } )* };
        }
        set!(arch, latent, g_hidden, d_hidden, g_act, g_out, noise, loss, gp_lambda, n_critic);
        set!(label_smoothing, feature_matching, minibatch_disc, g_lr, d_lr, beta1, momentum);
        set!(batch, epochs, max_steps, seed, ema, quality_every, quality_samples, on_collapse);
        set!(d_dropout, d_translate, d_projection, init);
        if let Some(o) = self.optimizer {
            c.g_opt = o;
            c.d_opt = o;
        }
        if self.conditional {
            c.conditional = true;
        }
        if c.loss == LossKind::WganGp && self.n_critic.is_none() && c.n_critic == 1 {
            c.n_critic = 5;
        }
        c.validate()?;
        Ok(c)
    }
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Run directory (default: runs/run-NNN, the next free number).
    #[arg(long)]
    run: Option<PathBuf>,
    /// Continue the run in this directory from its checkpoint (--epochs may extend it).
    #[arg(long, conflicts_with = "run")]
    resume: Option<PathBuf>,
    /// Data directory with MNIST-format IDX files (default: the bundled 10k digits).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Use only the first N images.
    #[arg(long, default_value_t = 0)]
    limit: usize,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Widest vector instruction set the training kernels may use (default: all the CPU has);
    /// for checking that another CPU would train the same bits.
    #[arg(long, value_enum)]
    isa: Option<gan_train::bench::IsaArg>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct ExportArgs {
    /// Run directory to export from (uses its checkpoint).
    #[arg(long, required_unless_present_any = ["checkpoint", "weights"])]
    run: Option<PathBuf>,
    /// An f32 weights file to re-encode instead (with `--dtype i8` or `q8`), e.g.
    /// data/weights/default.ganw.
    #[arg(long, conflicts_with_all = ["run", "checkpoint"], requires = "out")]
    weights: Option<PathBuf>,
    /// A checkpoint file instead of a run directory.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Output weights file (default: RUN/generator.ganw).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also write a UF2 that flashes just these weights to the board's weights region.
    #[arg(long)]
    uf2: Option<PathBuf>,
    /// Board for --uf2.
    #[arg(long, default_value = "pico", value_parser = gan_train::uf2::parse_board)]
    board: &'static Board,
    /// Weight type: f32 (exact), i8 (a quarter of the size, integer products on the device) or q8 (all-integer: int8 activations too, scales calibrated at export).
    #[arg(long, value_parser = run::parse_encoding, default_value = "f32")]
    dtype: Encoding,
}

#[derive(Args)]
struct SampleArgs {
    /// Weights file.
    #[arg(long)]
    model: PathBuf,
    /// Number of digits.
    #[arg(long, default_value_t = 16)]
    n: usize,
    /// Noise seed (the firmware with the same seed draws the same digits).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Class for a conditional model (default: cycle 0, 1, 2, ...).
    #[arg(long)]
    class: Option<u32>,
    /// Conditional models: one row per class, each the first N digits of the seed drawn as
    /// that class (what the firmware draws with `seed=S class=C count=N`).
    #[arg(long, conflicts_with = "class")]
    by_class: bool,
    /// Write a PNG grid.
    #[arg(long)]
    png: Option<PathBuf>,
    /// Write an IDX (ubyte, N×H×W) file.
    #[arg(long)]
    idx: Option<PathBuf>,
    /// Write raw bytes (N×H×W), the firmware's output format.
    #[arg(long)]
    raw: Option<PathBuf>,
    /// Print the digits as ASCII art.
    #[arg(long)]
    ascii: bool,
}

#[derive(Args)]
struct DownloadArgs {
    /// Mirror base URL (files are fetched from BASE/train-images-idx3-ubyte.gz etc.).
    #[arg(long)]
    mirror: Option<String>,
    /// Destination directory.
    #[arg(long, default_value = "data/mnist")]
    dest: PathBuf,
    /// Also fetch the 10k test set files.
    #[arg(long)]
    test_set: bool,
}

#[derive(Args)]
struct Uf2Args {
    /// Firmware ELF to convert.
    #[arg(long, conflicts_with = "weights", required_unless_present = "weights")]
    elf: Option<PathBuf>,
    /// Weights file to place at the board's weights region.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Board the UF2 is for: its family id, and for --weights its weights region.
    #[arg(long, default_value = "pico", value_parser = gan_train::uf2::parse_board)]
    board: &'static Board,
    /// Flash address for --weights (default: the board's weights region).
    #[arg(long, value_parser = parse_u32)]
    addr: Option<u32>,
    /// Output UF2.
    #[arg(long)]
    out: PathBuf,
}

fn parse_init(s: &str) -> std::result::Result<gan_core::init::Init, String> {
    use gan_core::init::Init;
    Ok(match s {
        "he-normal" => Init::HeNormal,
        "he-uniform" => Init::HeUniform,
        "xavier-normal" => Init::XavierNormal,
        "xavier-uniform" => Init::XavierUniform,
        "normal-0.02" => Init::Normal002,
        _ => {
            return Err(format!(
                "unknown initialisation `{s}` (he-normal, he-uniform, xavier-normal, xavier-uniform, normal-0.02)"
            ));
        }
    })
}

fn parse_u32(s: &str) -> std::result::Result<u32, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|e| e.to_string())
}

fn next_run_dir() -> PathBuf {
    (1..)
        .map(|i| PathBuf::from(format!("runs/run-{i:03}")))
        .find(|p| !p.exists())
        .expect("some run number is free")
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = dispatch(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn dispatch(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Train(a) => cmd_train(a),
        Cmd::Summary(m) => {
            let cfg = m.config()?;
            let shape = DataShape::MNIST;
            let g = cfg.generator(shape)?;
            let d = cfg.discriminator(shape)?;
            println!("{}", inspect::summary_table("Generator", &g.spec()));
            println!("{}", inspect::summary_table("Discriminator", &d.spec()));
            Ok(())
        }
        Cmd::Export(a) => cmd_export(a),
        Cmd::Inspect { file } => {
            let bytes = AlignedBytes::read(&file)?;
            let (text, ok) = inspect::describe_weights(bytes.bytes());
            print!("{text}");
            if !ok {
                bail!("{} is not a valid weights file", file.display());
            }
            Ok(())
        }
        Cmd::Sample(a) => cmd_sample(a),
        Cmd::Toy(a) => gan_train::toy::run(&a),
        Cmd::Bench(a) => gan_train::bench::run(&a),
        Cmd::Download(a) => cmd_download(a),
        Cmd::Uf2(a) => cmd_uf2(a),
        Cmd::Score(a) => gan_train::score::run_score(&a),
        Cmd::Classifier(a) => gan_train::score::run_classifier(&a),
    }
}

fn cmd_train(a: TrainArgs) -> Result<()> {
    if let Some(t) = a.threads {
        rayon::ThreadPoolBuilder::new().num_threads(t).build_global()?;
    }
    if let Some(isa) = a.isa {
        gan_core::kernels::limit_vector_isa(isa.into());
    }
    let run_dir = a.resume.clone().or(a.run.clone()).unwrap_or_else(next_run_dir);
    let mut opts = RunOptions::new(&run_dir);
    opts.data_dir = a.data.clone();
    opts.limit = a.limit;
    opts.progress = !a.quiet && std::io::stderr().is_terminal();
    let stop = opts.stop.clone();
    ctrlc::set_handler(move || {
        if stop.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\nstopping after this step and writing a checkpoint (Ctrl-C again to quit now)");
    })?;
    let team = gan_train::team::Team::with_rayon_threads().context("starting the threads")?;
    let outcome = if a.resume.is_some() {
        let allowed = ModelArgs {
            epochs: a.model.epochs,
            max_steps: a.model.max_steps,
            ..ModelArgs::default()
        };
        if a.model != allowed {
            bail!(
                "with --resume only --epochs and --max-steps may change; the rest of the configuration comes from the checkpoint"
            );
        }
        eprintln!("resuming {}", run_dir.display());
        run::resume_with(&opts, a.model.epochs, a.model.max_steps, &team)?
    } else {
        let cfg = a.model.config()?;
        let shape = DataShape::MNIST;
        eprintln!(
            "training {:?} GAN ({} generator parameters) in {}",
            cfg.arch,
            inspect::group(cfg.generator(shape)?.spec().param_len()),
            run_dir.display()
        );
        run::train(&cfg, &opts, &team)?
    };
    let r = RunDir::new(&run_dir);
    match outcome {
        Outcome::Finished { steps, images_per_sec } => {
            eprintln!("done: {steps} steps, {images_per_sec:.0} images/s");
            eprintln!("  samples:   {}", r.samples().display());
            eprintln!("  losses:    {} and {}", r.csv().display(), r.plot().display());
            eprintln!("  animation: {}", r.gif().display());
            eprintln!("  generator: {}", r.generator().display());
            if r.best().exists() {
                eprintln!(
                    "  best:      {} (scores in {})",
                    r.best().display(),
                    r.quality_csv().display()
                );
            }
            eprintln!("next: gan-train sample --model {} --ascii --n 4", r.generator().display());
        }
        Outcome::Collapsed { steps, why, best_epoch } => {
            eprintln!("stopped at step {steps}: the training collapsed: {why}");
            if best_epoch > 0 {
                eprintln!("  best generator: {} (epoch {best_epoch})", r.best().display());
            }
            eprintln!("  last generator: {}", r.generator().display());
            eprintln!("try a lower learning rate, or --on-collapse rollback");
        }
        Outcome::Interrupted { steps } => {
            eprintln!("interrupted at step {steps}; checkpoint saved");
            eprintln!("continue with: gan-train train --resume {}", run_dir.display());
        }
    }
    Ok(())
}

fn cmd_export(a: ExportArgs) -> Result<()> {
    if let Some(w) = &a.weights {
        let bytes = std::fs::read(w).with_context(|| format!("reading {}", w.display()))?;
        let bytes = run::reencode_weights(&bytes, a.dtype)?;
        let out = a.out.context("--weights needs --out")?;
        run::write_atomic(&out, &bytes)?;
        eprintln!("wrote {} ({} bytes)", out.display(), bytes.len());
        if let Some(u) = a.uf2 {
            write_weights_uf2(&bytes, a.board, None, &u)?;
        }
        return Ok(());
    }
    let (ck_path, default_out) = match (&a.checkpoint, &a.run) {
        (Some(c), _) => (c.clone(), c.with_extension("ganw")),
        (None, Some(r)) => (RunDir::new(r).checkpoint(), RunDir::new(r).generator()),
        (None, None) => bail!("give --run or --checkpoint"),
    };
    let ck = gan_train::checkpoint::load(&ck_path)?;
    let bytes = run::export_bytes_as(&ck, a.dtype)?;
    let out = a.out.unwrap_or(default_out);
    run::write_atomic(&out, &bytes)?;
    eprintln!("wrote {} ({} bytes)", out.display(), bytes.len());
    if let Some(u) = a.uf2 {
        write_weights_uf2(&bytes, a.board, None, &u)?;
    }
    Ok(())
}

/// A UF2 that flashes a weights file to `board`'s weights region (or to `addr`).
fn write_weights_uf2(bytes: &[u8], board: &Board, addr: Option<u32>, out: &Path) -> Result<()> {
    let addr = addr.unwrap_or(board.weights.origin);
    let end = addr as u64 + bytes.len() as u64;
    if board.weights.contains(addr) && end > board.weights.end() as u64 {
        bail!(
            "{} bytes do not fit {}'s weights region ({} bytes at {:#010x})",
            bytes.len(),
            board.name,
            board.weights.len,
            board.weights.origin
        );
    }
    let uf2 = gan_train::uf2::bin_to_uf2(bytes, addr, gan_train::uf2::family_of(board)?);
    run::write_atomic(out, &uf2)?;
    eprintln!("wrote {} ({} bytes, flashes to {addr:#010x})", out.display(), uf2.len());
    Ok(())
}

fn cmd_uf2(a: Uf2Args) -> Result<()> {
    match (a.elf, a.weights) {
        (Some(elf), None) => {
            let bytes =
                std::fs::read(&elf).with_context(|| format!("reading {}", elf.display()))?;
            let uf2 = gan_train::uf2::elf_to_uf2(&bytes, gan_train::uf2::family_of(a.board)?)?;
            run::write_atomic(&a.out, &uf2)?;
            eprintln!("wrote {} ({} bytes)", a.out.display(), uf2.len());
            Ok(())
        }
        (None, Some(w)) => {
            let bytes = AlignedBytes::read(&w)?;
            bytes.weights()?;
            write_weights_uf2(bytes.bytes(), a.board, a.addr, &a.out)
        }
        _ => bail!("give exactly one of --elf and --weights"),
    }
}

fn cmd_sample(a: SampleArgs) -> Result<()> {
    let bytes = AlignedBytes::read(&a.model)?;
    let w = bytes.weights()?;
    let out = w.header.output;
    let (h, wd) = (out.h as usize, out.w as usize);
    let class = match a.class {
        Some(c) => ClassChoice::Fixed(c),
        None => ClassChoice::Cycle,
    };
    if (a.class.is_some() || a.by_class) && w.header.classes == 0 {
        bail!("--class and --by-class need a conditional model; this generator is unconditional");
    }
    let (pixels, count, cols) = if a.by_class {
        let mut all = Vec::new();
        for c in 0..w.header.classes {
            all.extend(sample::generate(&w, a.seed, a.n, ClassChoice::Fixed(c))?);
        }
        (all, a.n * w.header.classes as usize, a.n)
    } else {
        let pixels = sample::generate(&w, a.seed, a.n, class)?;
        (pixels, a.n, (a.n as f64).sqrt().ceil() as usize)
    };
    let per = out.len();
    if let Some(p) = &a.png {
        gan_train::report::save_grid_png(p, &pixels, count, h, wd, cols.max(1), 4)?;
        eprintln!("wrote {}", p.display());
    }
    if let Some(p) = &a.idx {
        run::write_atomic(p, &sample::write_idx_images(&pixels, count, h, wd))?;
        eprintln!("wrote {}", p.display());
    }
    if let Some(p) = &a.raw {
        run::write_atomic(p, &pixels)?;
        eprintln!("wrote {}", p.display());
    }
    if a.ascii || (a.png.is_none() && a.idx.is_none() && a.raw.is_none()) {
        for (i, img) in pixels.chunks_exact(per).enumerate() {
            println!("digit {i} (seed {})", a.seed);
            print!("{}", sample::ascii_art(img, gan_core::art_width(out)));
        }
    }
    Ok(())
}

fn cmd_download(a: DownloadArgs) -> Result<()> {
    use gan_train::download;
    let mirror = match a.mirror {
        Some(url) => download::Mirror::new(url),
        None => download::Mirror::default(),
    };
    let mut files: Vec<&str> = vec!["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"];
    if a.test_set {
        files.extend(["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]);
    }
    download::download(&mirror, &a.dest, &files, download::known_sha256)?;
    eprintln!(
        "MNIST is in {}; train on it with: gan-train train --data {}",
        a.dest.display(),
        a.dest.display()
    );
    Ok(())
}
