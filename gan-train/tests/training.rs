//! End-to-end tests of the training pipeline through the library API: checkpoint encoding and
//! damage, resuming (at an epoch boundary and mid-epoch) with bit-identical results, determinism
//! across seeds and thread counts, the divergence guard, export and exact sampling, and data
//! errors reported through the trainer.
//!
//! Every run trains a tiny network for a few steps on a slice of the bundled digits, so the
//! whole file takes seconds.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use anyhow::Result;
use gan_core::format::{ModelKind, NoiseKind, WeightsFile};
use gan_core::kernels::{Exec, Serial};
use gan_core::{model, noise};
use gan_train::checkpoint;
use gan_train::config::{
    Arch, DataShape, HiddenAct, LossKind, Noise, OptKind, OutAct, TrainConfig,
};
use gan_train::data::{self, Dataset};
use gan_train::inspect;
use gan_train::report::LossLog;
use gan_train::run::{self, Outcome, RunDir, RunOptions};
use gan_train::sample::{self, AlignedBytes, ClassChoice};
use gan_train::team::Team;
use gan_train::trainer::{Checkpoint, Gan, NonFinite};

/// Images used by most runs: 16 batches of 16 per epoch.
const LIMIT: usize = 256;

/// A tiny unconditional GAN: G 8→16→784, D 784→16→1.
fn tiny() -> TrainConfig {
    TrainConfig {
        arch: Arch::Custom,
        latent: 8,
        g_hidden: vec![16],
        d_hidden: vec![16],
        batch: 16,
        epochs: 2,
        log_every: 4,
        grid: 4,
        seed: 7,
        // Scores every epoch, on few samples so that the tests stay quick.
        quality_every: 1,
        quality_samples: 64,
        ..TrainConfig::default()
    }
}

fn options(dir: &Path, reports: bool) -> RunOptions {
    let mut o = RunOptions::new(dir);
    o.limit = LIMIT;
    o.reports = reports;
    o
}

/// The executor `gan-train train` uses: a team of one thread per core.
fn pool() -> Team {
    Team::with_rayon_threads().unwrap()
}

/// Trains `cfg` from scratch in `dir` and expects it to finish.
fn train_fresh(cfg: &TrainConfig, dir: &Path, reports: bool, exec: &dyn Exec) -> u64 {
    match run::train(cfg, &options(dir, reports), exec).expect("training succeeds") {
        Outcome::Finished { steps, .. } => steps,
        other => panic!("expected a finished run, got {other:?}"),
    }
}

/// Writes `ck` as the checkpoint of the run in `dir`, with the `config.toml` that goes with it
/// (a run directory after `train` holds both, and resume checks that they agree).
fn save_run_state(dir: &Path, ck: &Checkpoint) {
    let r = RunDir::new(dir);
    checkpoint::save(&r.checkpoint(), ck).unwrap();
    fs::write(r.config(), toml::to_string_pretty(&ck.config).unwrap()).unwrap();
}

fn checkpoint_of(dir: &Path) -> Checkpoint {
    checkpoint::load(&RunDir::new(dir).checkpoint()).expect("checkpoint loads")
}

fn read(path: impl AsRef<Path>) -> Vec<u8> {
    let path = path.as_ref();
    fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Bit patterns of a float buffer, for exact comparisons that also see -0.0 and NaN payloads.
fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Asserts two float buffers are bit-identical, naming the first differing element.
fn assert_bits_eq(what: &str, a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    if let Some(i) = (0..a.len()).find(|&i| a[i].to_bits() != b[i].to_bits()) {
        panic!(
            "{what}: element {i} differs: {:e} ({:#010x}) vs {:e} ({:#010x})",
            a[i],
            a[i].to_bits(),
            b[i],
            b[i].to_bits()
        );
    }
}

/// Field-by-field comparison of two checkpoints, down to the bits, then of their encodings.
fn assert_same_state(a: &Checkpoint, b: &Checkpoint) {
    assert_eq!(a.pos.step, b.pos.step, "step");
    assert_eq!(a.pos.epoch, b.pos.epoch, "epoch");
    assert_eq!(a.pos.batch_in_epoch, b.pos.batch_in_epoch, "batch_in_epoch");
    assert_eq!(a.g.opt_step, b.g.opt_step, "g_opt_step");
    assert_eq!(a.d.opt_step, b.d.opt_step, "d_opt_step");
    assert_eq!(a.rng, b.rng, "rng state");
    assert_bits_eq("g_params", &a.g.params, &b.g.params);
    assert_bits_eq("d_params", &a.d.params, &b.d.params);
    assert_bits_eq("g_opt_state", &a.g.opt_state, &b.g.opt_state);
    assert_bits_eq("d_opt_state", &a.d.opt_state, &b.d.opt_state);
    assert_eq!(a.last_g_loss.to_bits(), b.last_g_loss.to_bits(), "last_g_loss");
    assert_eq!(a.config, b.config, "config");
    assert_eq!(a.data, b.data, "data shape");
    assert_bytes_eq(
        "encoded checkpoints",
        &checkpoint::encode(a).unwrap(),
        &checkpoint::encode(b).unwrap(),
    );
}

/// Asserts two finished run directories hold the same training state and the same exported
/// generator, byte for byte.
fn assert_same_runs(a: &Path, b: &Path) {
    let (ra, rb) = (RunDir::new(a), RunDir::new(b));
    assert_same_state(&checkpoint_of(a), &checkpoint_of(b));
    assert_bytes_eq("checkpoint files", &read(ra.checkpoint()), &read(rb.checkpoint()));
    assert_bytes_eq("generator.ganw files", &read(ra.generator()), &read(rb.generator()));
}

/// A checkpoint with non-trivial optimizer state, made without touching the disk.
fn trained_checkpoint(cfg: &TrainConfig, steps: usize) -> Checkpoint {
    let mut gan = Gan::new(cfg, DataShape::MNIST).unwrap();
    let n = cfg.batch;
    let mut rng = noise::rng(99);
    let mut real = vec![0.0f32; n * 784];
    noise::fill_uniform(&mut rng, &mut real);
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    for _ in 0..steps {
        gan.train_step(&real, &labels, &Serial).unwrap();
    }
    gan.checkpoint()
}

/// Asserts two byte buffers are equal, naming the first difference instead of printing both.
#[track_caller]
fn assert_bytes_eq(what: &str, a: &[u8], b: &[u8]) {
    if let Some(i) = (0..a.len().min(b.len())).find(|&i| a[i] != b[i]) {
        panic!("{what}: byte {i} differs: {} vs {}", a[i], b[i]);
    }
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
}

fn err_text<T: std::fmt::Debug>(r: Result<T>) -> String {
    format!("{:#}", r.expect_err("expected an error"))
}

// ---------------------------------------------------------------------------------------------
// Checkpoints

#[test]
fn checkpoint_round_trips_in_memory_and_on_disk() {
    let ck = trained_checkpoint(&tiny(), 3);
    assert_eq!(ck.pos.step, 3);
    assert_eq!((ck.g.opt_step, ck.d.opt_step), (3, 3));
    assert!(ck.g.opt_state.iter().any(|&v| v != 0.0), "Adam moments moved");

    let bytes = checkpoint::encode(&ck).unwrap();
    assert_eq!(&bytes[..4], b"GANC");
    assert_eq!(u32::from_le_bytes(bytes[4..8].try_into().unwrap()), 3);
    let payload_len = u64::from_le_bytes(bytes[12..20].try_into().unwrap());
    assert_eq!(payload_len as usize, bytes.len() - 20);
    let back = checkpoint::decode(&bytes).unwrap();
    assert_same_state(&ck, &back);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub").join("ck.bin");
    checkpoint::save(&path, &ck).unwrap();
    assert_bytes_eq("the file is exactly the encoding", &read(&path), &bytes);
    assert_same_state(&ck, &checkpoint::load(&path).unwrap());
}

/// Checkpoints written before the loss-log window was saved (version 1) still load.
#[test]
fn version_1_checkpoints_still_load() {
    let mut ck = legacy_state(trained_checkpoint(&tiny(), 2));
    // Version 1 had no partial log window: the state it can describe has an empty one.
    ck.log_window = Default::default();
    let bytes = legacy_file(1, &ck);
    let back = checkpoint::decode(&bytes).unwrap();
    assert_same_state(&ck, &back);
    assert_eq!(back.log_window, Default::default());
}

/// A version 1 or 2 checkpoint file of `ck`, its payload spelled out field by field in the
/// version's order (postcard writes a tuple like a struct, its fields one after another, so
/// the nesting adds no bytes). The two versions differ only at the end: version 2 added the
/// loss-log window.
fn legacy_file(version: u32, ck: &Checkpoint) -> Vec<u8> {
    let head = (
        (gan_train::config::LegacyConfig::of(&ck.config).unwrap(), ck.data),
        (ck.g.params.clone(), ck.g.opt_state.clone(), ck.g.opt_step),
        (ck.d.params.clone(), ck.d.opt_state.clone(), ck.d.opt_step),
        gan_core::noise::rng_state(&ck.rng),
        (ck.pos.step, ck.pos.epoch, ck.pos.batch_in_epoch),
        (ck.last_g_loss, ck.source.clone()),
    );
    let payload = match version {
        1 => postcard::to_stdvec(&head),
        2 => postcard::to_stdvec(&(head, ck.log_window)),
        _ => panic!("no legacy layout for version {version}"),
    };
    container(version, &payload.unwrap())
}

/// A checkpoint file around `payload`: magic, `version`, CRC-32 and length, as the encoder
/// frames it.
fn container(version: u32, payload: &[u8]) -> Vec<u8> {
    let mut bytes = b"GANC".to_vec();
    bytes.extend_from_slice(&version.to_le_bytes());
    bytes.extend_from_slice(&gan_core::format::crc32(payload).to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

/// `ck` as far as a version 1 or 2 checkpoint can describe it: the options added since at
/// their defaults, no scores yet.
fn legacy_state(mut ck: Checkpoint) -> Checkpoint {
    let d = TrainConfig::default();
    ck.config.ema = d.ema;
    ck.config.quality_every = d.quality_every;
    ck.config.quality_samples = d.quality_samples;
    ck.config.on_collapse = d.on_collapse;
    ck.quality = Default::default();
    ck.g_ema = None;
    ck
}

/// Checkpoints of version 2 (the configuration stored field by field, no moving average or
/// quality state yet) still load, window included.
#[test]
fn version_2_checkpoints_still_load() {
    let ck = legacy_state(trained_checkpoint(&tiny(), 3));
    assert_ne!(ck.log_window, Default::default(), "the test wants a partial window");
    let bytes = legacy_file(2, &ck);
    let back = checkpoint::decode(&bytes).unwrap();
    assert_same_state(&ck, &back);
    assert_eq!(back.g_ema, None);
}

#[test]
fn damaged_checkpoints_are_rejected_with_clear_errors() {
    let ck = trained_checkpoint(&tiny(), 1);
    let good = checkpoint::encode(&ck).unwrap();
    let decode = |b: &[u8]| err_text(checkpoint::decode(b));

    for len in [0, 3, 4, 12, 19] {
        let msg = decode(&good[..len]);
        assert!(
            msg.contains("truncated") && msg.contains(&format!("({len} bytes)")),
            "{len}: {msg}"
        );
    }
    for len in [20, 21, 100, good.len() / 2, good.len() - 1] {
        let msg = decode(&good[..len]);
        assert!(msg.contains("truncated"), "{len}: {msg}");
        assert!(msg.contains(&format!("{} of {}", len - 20, good.len() - 20)), "{len}: {msg}");
    }

    let mut trailing = good.clone();
    trailing.extend_from_slice(&[0, 0, 0]);
    assert!(decode(&trailing).contains("trailing bytes"));

    for at in [20, 20 + (good.len() - 20) / 2, good.len() - 1] {
        let mut flipped = good.clone();
        flipped[at] ^= 0x40;
        let msg = decode(&flipped);
        assert!(msg.contains("CRC mismatch"), "byte {at}: {msg}");
    }
    let mut bad_crc = good.clone();
    bad_crc[8] ^= 1;
    assert!(decode(&bad_crc).contains("CRC mismatch"));

    let mut magic = good.clone();
    magic[..4].copy_from_slice(b"GANW");
    assert!(decode(&magic).contains("bad magic"));

    let mut version = good.clone();
    let future = checkpoint::VERSION + 1;
    version[4..8].copy_from_slice(&future.to_le_bytes());
    let msg = decode(&version);
    let want = format!("version {future} is not supported");
    let range = format!("reads 1 to {}", checkpoint::VERSION);
    assert!(msg.contains(&want) && msg.contains(&range), "{msg}");

    // A length field that disagrees with the data, including absurd values.
    let mut huge = good.clone();
    huge[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(decode(&huge).contains("truncated"));

    // A well-formed container whose payload is not a checkpoint.
    let payload = [0xffu8; 40];
    assert!(decode(&container(2, &payload)).contains("does not decode"));

    // Loading a file names the file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("checkpoint.bin");
    fs::write(&path, &good[..50]).unwrap();
    let msg = err_text(checkpoint::load(&path));
    assert!(msg.contains("checkpoint.bin") && msg.contains("truncated"), "{msg}");
    let msg = err_text(checkpoint::load(&dir.path().join("missing.bin")));
    assert!(msg.contains("missing.bin"), "{msg}");
}

#[test]
fn write_atomic_replaces_content_and_leaves_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested").join("file.bin");
    run::write_atomic(&path, b"first version, longer than the second").unwrap();
    assert_eq!(read(&path), b"first version, longer than the second");
    run::write_atomic(&path, b"second").unwrap();
    assert_eq!(read(&path), b"second");
    assert_eq!(names_in(path.parent().unwrap()), ["file.bin"], "only the target remains");
}

#[test]
fn failed_write_atomic_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    // A non-empty directory where the file should go: the rename cannot replace it.
    let target = dir.path().join("taken");
    fs::create_dir(&target).unwrap();
    fs::write(target.join("inside"), b"keep").unwrap();
    let msg = err_text(run::write_atomic(&target, b"new content"));
    assert!(msg.contains("taken"), "{msg}");
    assert_eq!(read(target.join("inside")), b"keep");
    assert_eq!(names_in(dir.path()), ["taken"], "no temporary file is left behind");
}

/// The names of the entries of `dir`.
fn names_in(dir: &std::path::Path) -> Vec<String> {
    let entries = fs::read_dir(dir).unwrap();
    entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

#[test]
fn checkpoint_with_wrong_buffer_sizes_is_refused_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = TrainConfig { max_steps: 2, ..tiny() };
    train_fresh(&cfg, dir.path(), false, &Serial);
    let path = RunDir::new(dir.path()).checkpoint();
    let mut ck = checkpoint::load(&path).unwrap();
    ck.d.opt_state.pop();
    checkpoint::save(&path, &ck).unwrap();
    let msg = err_text(run::resume(&options(dir.path(), false), None, &Serial));
    assert!(msg.contains("discriminator optimizer state") && msg.contains("values"), "{msg}");
    // And export refuses a generator of the wrong size.
    ck.g.params.pop();
    let msg = err_text(run::export_bytes(&ck));
    assert!(msg.contains("wrong size"), "{msg}");
}

#[test]
fn training_into_an_existing_run_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = TrainConfig { max_steps: 1, ..tiny() };
    train_fresh(&cfg, dir.path(), false, &Serial);
    let before = read(RunDir::new(dir.path()).checkpoint());
    let msg = err_text(run::train(&cfg, &options(dir.path(), false), &Serial));
    assert!(msg.contains("already holds a run") && msg.contains("--resume"), "{msg}");
    assert_bytes_eq("checkpoint", &read(RunDir::new(dir.path()).checkpoint()), &before);
}

// ---------------------------------------------------------------------------------------------
// Resume equivalence

/// Runs `cfg` three ways and checks they end in the same bits:
/// - `a`: all epochs in one call;
/// - `b`: one epoch, then `resume` extends to `cfg.epochs`;
/// - `c`: stopped by the stop flag after the very first step, resumed and stopped again
///   mid-epoch by `max_steps` (set in the checkpoint, then cleared), then resumed to the end.
fn check_resume_paths(cfg: &TrainConfig, reports: bool) {
    assert_eq!(cfg.epochs, 2);
    let root = tempfile::tempdir().unwrap();
    let (a, b, c) = (root.path().join("a"), root.path().join("b"), root.path().join("c"));

    let steps = train_fresh(cfg, &a, reports, &pool());
    assert_eq!(steps, 2 * (LIMIT / cfg.batch) as u64);

    // b: an epoch at a time.
    let one = TrainConfig { epochs: 1, ..cfg.clone() };
    assert_eq!(train_fresh(&one, &b, reports, &pool()), (LIMIT / cfg.batch) as u64);
    let mid = checkpoint_of(&b);
    assert_eq!((mid.pos.epoch, mid.pos.batch_in_epoch), (1, 0));
    match run::resume(&options(&b, reports), Some(2), &pool()).unwrap() {
        Outcome::Finished { steps: s, .. } => assert_eq!(s, steps),
        other => panic!("{other:?}"),
    }
    assert_same_runs(&a, &b);

    // c: interrupted after one step by the stop flag, set before the run starts.
    let o = options(&c, reports);
    o.stop.store(true, Ordering::SeqCst);
    assert_eq!(run::train(cfg, &o, &pool()).unwrap(), Outcome::Interrupted { steps: 1 });
    let ck = checkpoint_of(&c);
    assert_eq!((ck.pos.step, ck.pos.epoch, ck.pos.batch_in_epoch), (1, 0, 1));
    assert!(!RunDir::new(&c).generator().exists(), "no export when interrupted");
    // Resume, stopping mid-way through the second epoch with max_steps.
    let path = RunDir::new(&c).checkpoint();
    let mut ck = checkpoint::load(&path).unwrap();
    let stop_at = steps / 2 + 3;
    ck.config.max_steps = stop_at;
    save_run_state(&c, &ck);
    match run::resume(&options(&c, reports), None, &pool()).unwrap() {
        Outcome::Finished { steps: s, .. } => assert_eq!(s, stop_at),
        other => panic!("{other:?}"),
    }
    let mut ck = checkpoint::load(&path).unwrap();
    assert_eq!((ck.pos.step, ck.pos.epoch, ck.pos.batch_in_epoch), (stop_at, 1, 3));
    ck.config.max_steps = 0;
    save_run_state(&c, &ck);
    run::resume(&options(&c, reports), None, &pool()).unwrap();
    assert_same_runs(&a, &c);
}

#[test]
fn resume_gives_the_same_bits_as_an_uninterrupted_run() {
    check_resume_paths(&tiny(), false);
}

#[test]
fn resume_with_reports_gives_the_same_files() {
    check_resume_paths(&tiny(), true);
    // Separately check the report files of a split run against a straight one.
    let root = tempfile::tempdir().unwrap();
    let (a, b) = (root.path().join("a"), root.path().join("b"));
    train_fresh(&tiny(), &a, true, &pool());
    let one = TrainConfig { epochs: 1, ..tiny() };
    train_fresh(&one, &b, true, &pool());
    run::resume(&options(&b, true), Some(2), &pool()).unwrap();
    let (ra, rb) = (RunDir::new(&a), RunDir::new(&b));
    for e in [1, 2] {
        assert_bytes_eq(&format!("grid {e}"), &read(ra.grid(e)), &read(rb.grid(e)));
    }
    assert!(!ra.grid(3).exists());
    assert_bytes_eq("progress.gif", &read(ra.gif()), &read(rb.gif()));
    // log_every divides the epoch, so the loss log is the same too.
    assert_bytes_eq("losses.csv", &read(ra.csv()), &read(rb.csv()));
    let log = LossLog::read_csv(&ra.csv()).unwrap();
    let steps: Vec<u64> = log.rows().iter().map(|r| r.step).collect();
    assert_eq!(steps, (1..=8).map(|i| 4 * i).collect::<Vec<u64>>());
    assert!(ra.plot().exists());
    let (px, w, h) = run::read_gray_png(&ra.grid(2)).unwrap();
    assert_eq!(px.len(), w * h);
    assert!(w >= 2 * 28 && h >= 2 * 28, "a 2×2 grid of digits: {w}×{h}");
}

#[test]
fn resume_equivalence_conditional() {
    check_resume_paths(&TrainConfig { conditional: true, ..tiny() }, false);
}

#[test]
fn resume_equivalence_projection_discriminator() {
    let cfg = TrainConfig { conditional: true, d_projection: true, ..tiny() };
    let gan = Gan::new(&cfg, DataShape::MNIST).unwrap();
    // One unconditional output and one per class.
    assert_eq!(gan.d.def.spec().output().len(), 11);
    check_resume_paths(&cfg, false);
    let err = format!(
        "{:#}",
        Gan::new(&TrainConfig { d_projection: true, ..tiny() }, DataShape::MNIST).unwrap_err()
    );
    assert!(err.contains("projection discriminator needs a conditional model"), "{err}");
}

#[test]
fn resume_equivalence_wgan_gp_with_critic_steps_and_feature_matching() {
    check_resume_paths(
        &TrainConfig { loss: LossKind::WganGp, n_critic: 2, feature_matching: 0.1, ..tiny() },
        false,
    );
}

#[test]
fn resume_equivalence_augmentation_and_weight_average() {
    check_resume_paths(&TrainConfig { d_translate: 2, ema: 0.9, ..tiny() }, false);
    check_resume_paths(
        &TrainConfig {
            d_translate: 1,
            ema: 0.99,
            conditional: true,
            feature_matching: 0.5,
            g_out: OutAct::Sigmoid,
            ..tiny()
        },
        false,
    );
}

/// The weight average is what grids, scores and exports use, and it trails the parameters;
/// augmentation changes the training (it draws shifts) and keeps it finite.
#[test]
fn weight_average_is_exported_and_augmentation_trains() {
    let plain = trained_checkpoint(&TrainConfig { ema: 0.0, d_translate: 0, ..tiny() }, 2);
    assert!(plain.g_ema.is_none());
    let ck = trained_checkpoint(&TrainConfig { ema: 0.9, d_translate: 0, ..tiny() }, 2);
    let avg = ck.g_ema.as_ref().expect("the average is kept");
    assert_eq!(avg.len(), ck.g.params.len());
    assert_ne!(avg, &ck.g.params);
    // Same training bits as without the average: it is only read.
    assert_bits_eq("params", &plain.g.params, &ck.g.params);
    let exported = run::export_bytes(&ck).unwrap();
    let file = AlignedBytes::new(&exported);
    assert_bits_eq("exported", file.weights().unwrap().params().unwrap(), avg);

    let aug = trained_checkpoint(&TrainConfig { ema: 0.0, d_translate: 2, ..tiny() }, 2);
    assert_ne!(aug.g.params, plain.g.params);
    assert!(aug.g.params.iter().chain(&aug.d.params).all(|v| v.is_finite()));
}

#[test]
fn resume_equivalence_minibatch_discrimination() {
    check_resume_paths(&TrainConfig { minibatch_disc: vec![4, 3], ..tiny() }, false);
}

#[test]
fn resume_equivalence_other_losses_and_optimizers() {
    check_resume_paths(
        &TrainConfig {
            loss: LossKind::Lsgan,
            g_opt: OptKind::Sgd,
            d_opt: OptKind::Sgd,
            momentum: 0.9,
            g_lr: 0.01,
            d_lr: 0.01,
            g_act: HiddenAct::Relu,
            g_out: OutAct::Sigmoid,
            noise: Noise::Uniform,
            ..tiny()
        },
        false,
    );
    check_resume_paths(
        &TrainConfig { loss: LossKind::BceProb, label_smoothing: 0.1, n_critic: 3, ..tiny() },
        false,
    );
    check_resume_paths(
        &TrainConfig { loss: LossKind::Hinge, conditional: true, feature_matching: 0.5, ..tiny() },
        false,
    );
}

#[test]
fn resume_one_step_at_a_time_across_epochs() {
    // 64 images, batch 16: 4 steps per epoch, 8 in all, each invocation doing exactly one. A
    // loss-log row every 3 steps, so most interruptions fall inside a logging window.
    let cfg = TrainConfig { log_every: 3, ..tiny() };
    let root = tempfile::tempdir().unwrap();
    let (a, b) = (root.path().join("a"), root.path().join("b"));
    let opts = |dir: &Path| {
        let mut o = options(dir, false);
        o.limit = 64;
        o
    };
    match run::train(&cfg, &opts(&a), &Serial).unwrap() {
        Outcome::Finished { steps, .. } => assert_eq!(steps, 8),
        other => panic!("{other:?}"),
    }
    let o = opts(&b);
    o.stop.store(true, Ordering::SeqCst);
    assert_eq!(run::train(&cfg, &o, &Serial).unwrap(), Outcome::Interrupted { steps: 1 });
    for step in 2..=8 {
        assert_eq!(run::resume(&o, None, &Serial).unwrap(), Outcome::Interrupted { steps: step });
    }
    // The last step ended epoch 2 without closing it; the final call closes and exports it.
    let ck = checkpoint_of(&b);
    assert_eq!((ck.pos.step, ck.pos.epoch, ck.pos.batch_in_epoch), (8, 1, 4));
    match run::resume(&opts(&b), None, &Serial).unwrap() {
        Outcome::Finished { steps, .. } => assert_eq!(steps, 8),
        other => panic!("{other:?}"),
    }
    assert_same_runs(&a, &b);
    // The partial logging window is part of the checkpoint, so the loss log is the same
    // (rows at steps 3, 6 and the closing 8).
    let log = LossLog::read_csv(&RunDir::new(&b).csv()).unwrap();
    let steps: Vec<u64> = log.rows().iter().map(|r| r.step).collect();
    assert_eq!(steps, [3, 6, 8]);
    assert_bytes_eq("losses.csv", &read(RunDir::new(&a).csv()), &read(RunDir::new(&b).csv()));
}

/// Resume checks the run before it writes anything: an edited config.toml, a checkpoint copied
/// in from another run, or a broken checkpoint are reported, and every file stays as it was.
#[test]
fn resume_refuses_a_run_that_does_not_hold_together() {
    let dir = tempfile::tempdir().unwrap();
    let one = TrainConfig { epochs: 1, ..tiny() };
    train_fresh(&one, dir.path(), false, &Serial);
    let r = RunDir::new(dir.path());
    let files = |r: &RunDir| [read(r.checkpoint()), read(r.config()), read(r.csv())];
    let before = files(&r);

    // config.toml edited by hand.
    let edited = String::from_utf8(before[1].clone()).unwrap().replace("seed = 7", "seed = 8");
    fs::write(r.config(), &edited).unwrap();
    let err =
        format!("{:#}", run::resume(&options(dir.path(), false), Some(2), &Serial).unwrap_err());
    assert!(err.contains("does not match the run's checkpoint (seed differ"), "{err}");
    assert_eq!(read(r.config()), edited.as_bytes(), "the edit is kept, not overwritten");
    fs::write(r.config(), &before[1]).unwrap();

    // A checkpoint of another architecture copied into the run.
    let other = dir.path().join("other");
    train_fresh(&TrainConfig { g_hidden: vec![24], ..one.clone() }, &other, false, &Serial);
    fs::copy(RunDir::new(&other).checkpoint(), r.checkpoint()).unwrap();
    let err =
        format!("{:#}", run::resume(&options(dir.path(), false), Some(2), &Serial).unwrap_err());
    assert!(err.contains("g_hidden differ") && err.contains("another run"), "{err}");
    assert_eq!(read(r.config()), before[1]);
    fs::write(r.checkpoint(), &before[0]).unwrap();

    // A damaged checkpoint: the --epochs change is not written into config.toml.
    let mut broken = before[0].clone();
    let mid = broken.len() / 2;
    broken[mid] ^= 0xFF;
    fs::write(r.checkpoint(), &broken).unwrap();
    assert!(run::resume(&options(dir.path(), false), Some(5), &Serial).is_err());
    assert_eq!(read(r.config()), before[1], "config.toml untouched by a failed resume");
    fs::write(r.checkpoint(), &before[0]).unwrap();
    assert_eq!(files(&r), before);

    // The run, intact, resumes.
    run::resume(&options(dir.path(), false), Some(2), &Serial).unwrap();
}

#[test]
fn config_toml_matches_the_checkpoint_after_a_resume() {
    let dir = tempfile::tempdir().unwrap();
    let one = TrainConfig { epochs: 1, max_steps: 0, ..tiny() };
    train_fresh(&one, dir.path(), false, &Serial);
    run::resume(&options(dir.path(), false), Some(2), &Serial).unwrap();
    let text = fs::read_to_string(RunDir::new(dir.path()).config()).unwrap();
    let on_disk: TrainConfig = toml::from_str(&text).unwrap();
    assert_eq!(on_disk, checkpoint_of(dir.path()).config);
}

// ---------------------------------------------------------------------------------------------
// Determinism

/// An executor that claims `threads` workers and runs the tasks backwards on the calling thread:
/// the split and the order change, and the bits must not.
struct Backwards {
    threads: usize,
}

impl Exec for Backwards {
    fn threads(&self) -> usize {
        self.threads
    }
    fn for_each(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        for t in (0..tasks).rev() {
            f(t);
        }
    }
}

#[test]
fn same_seed_gives_identical_runs_and_another_seed_does_not() {
    let root = tempfile::tempdir().unwrap();
    let cfg = TrainConfig { epochs: 1, ..tiny() };
    let (a, b, c) = (root.path().join("a"), root.path().join("b"), root.path().join("c"));
    train_fresh(&cfg, &a, false, &pool());
    train_fresh(&cfg, &b, false, &pool());
    assert_same_runs(&a, &b);

    let other = TrainConfig { seed: 8, ..cfg };
    train_fresh(&other, &c, false, &pool());
    let (ka, kc) = (checkpoint_of(&a), checkpoint_of(&c));
    assert_ne!(bits(&ka.g.params), bits(&kc.g.params));
    assert_ne!(bits(&ka.d.params), bits(&kc.d.params));
    assert_ne!(ka.rng, kc.rng);
    assert_ne!(read(RunDir::new(&a).generator()), read(RunDir::new(&c).generator()));
}

#[test]
fn thread_count_and_task_order_do_not_change_bits() {
    // Wide enough that every layer splits into several column panels.
    let cfg = TrainConfig {
        g_hidden: vec![40, 48],
        d_hidden: vec![72, 40],
        conditional: true,
        feature_matching: 0.1,
        epochs: 1,
        max_steps: 6,
        ..tiny()
    };
    let root = tempfile::tempdir().unwrap();
    let reference = root.path().join("serial");
    train_fresh(&cfg, &reference, false, &Serial);

    let mut others: Vec<PathBuf> = Vec::new();
    for threads in [1, 2, 3, 4] {
        let dir = root.path().join(format!("team-{threads}"));
        let team = Team::new(threads).unwrap();
        assert_eq!(team.threads(), threads);
        train_fresh(&cfg, &dir, false, &team);
        others.push(dir);
    }
    for threads in [2, 5, 16] {
        let dir = root.path().join(format!("backwards-{threads}"));
        train_fresh(&cfg, &dir, false, &Backwards { threads });
        others.push(dir);
    }
    for dir in &others {
        eprintln!("comparing {}", dir.display());
        assert_same_runs(&reference, dir);
    }

    let wgan = TrainConfig { loss: LossKind::WganGp, n_critic: 2, ..cfg };
    let (s, p) = (root.path().join("wgan-s"), root.path().join("wgan-p"));
    train_fresh(&wgan, &s, false, &Serial);
    train_fresh(&wgan, &p, false, &Backwards { threads: 3 });
    assert_same_runs(&s, &p);
}

/// The convolutional presets split their samples, their batch-norm channels and their weight
/// gradients' columns over the threads: the bits must still not depend on it.
#[test]
fn thread_count_does_not_change_convolutional_bits() {
    let root = tempfile::tempdir().unwrap();
    let pico = TrainConfig {
        arch: Arch::Pico,
        conditional: true,
        latent: 8,
        // The preset's own widths: the smallest at which every layer splits at batch 32.
        g_hidden: vec![32, 16],
        d_hidden: vec![32, 16],
        epochs: 1,
        max_steps: 2,
        batch: 32,
        ..tiny()
    };
    // DCGAN's discriminator is convolutional too (its input gradient goes through col2im).
    let dcgan = TrainConfig {
        arch: Arch::Dcgan,
        conditional: false,
        batch: 8,
        max_steps: 2,
        ..pico.clone()
    };
    for (name, cfg) in [("pico", pico), ("dcgan", dcgan)] {
        let reference = root.path().join(format!("{name}-serial"));
        train_fresh(&cfg, &reference, false, &Serial);
        for threads in [2, 3] {
            let dir = root.path().join(format!("{name}-team-{threads}"));
            train_fresh(&cfg, &dir, false, &Team::new(threads).unwrap());
            assert_same_runs(&reference, &dir);
        }
        let dir = root.path().join(format!("{name}-backwards"));
        train_fresh(&cfg, &dir, false, &Backwards { threads: 5 });
        assert_same_runs(&reference, &dir);
    }
}

// ---------------------------------------------------------------------------------------------
// Divergence

#[test]
fn divergence_stops_with_an_error_and_keeps_the_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = RunDir::new(dir.path());
    let one = TrainConfig { epochs: 1, ..tiny() };
    train_fresh(&one, dir.path(), false, &Serial);

    // Continue with an absurd learning rate.
    let mut ck = checkpoint_of(dir.path());
    let sane = ck.clone();
    ck.config.g_lr = 1e30;
    ck.config.d_lr = 1e30;
    save_run_state(dir.path(), &ck);
    let ck_before = read(run_dir.checkpoint());
    let gen_before = read(run_dir.generator());
    let csv_before = read(run_dir.csv());

    let err = run::resume(&options(dir.path(), false), Some(2), &Serial)
        .expect_err("a learning rate of 1e30 diverges");
    let nf = err.downcast_ref::<NonFinite>().expect("the cause is NonFinite");
    assert!(nf.step > ck.pos.step && nf.step <= ck.pos.step + 16, "{nf:?}");
    let msg = format!("{err:#}");
    assert!(msg.contains("diverged"), "{msg}");
    assert!(msg.contains("NaN"), "{msg}");
    assert!(msg.contains(&run_dir.checkpoint().display().to_string()), "{msg}");
    assert!(msg.contains("lower learning rate"), "{msg}");

    assert_bytes_eq("the checkpoint is untouched", &read(run_dir.checkpoint()), &ck_before);
    assert_bytes_eq("the export is untouched", &read(run_dir.generator()), &gen_before);
    assert_bytes_eq("no rows from the bad steps", &read(run_dir.csv()), &csv_before);

    // With the learning rate restored the run continues exactly like an unbroken one.
    save_run_state(dir.path(), &sane);
    run::resume(&options(dir.path(), false), Some(2), &Serial).unwrap();
    let straight = dir.path().join("straight");
    train_fresh(&tiny(), &straight, false, &Serial);
    assert_same_state(&checkpoint_of(&straight), &checkpoint_of(dir.path()));
}

#[test]
fn sgd_with_a_huge_learning_rate_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let cfg =
        TrainConfig { g_opt: OptKind::Sgd, d_opt: OptKind::Sgd, g_lr: 1e35, d_lr: 1e35, ..tiny() };
    let err = run::train(&cfg, &options(dir.path(), false), &Serial).unwrap_err();
    assert!(err.downcast_ref::<NonFinite>().is_some(), "{err:#}");
    assert!(format!("{err:#}").contains("diverged"));
    assert!(!RunDir::new(dir.path()).generator().exists());
}

#[test]
fn divergence_before_the_first_checkpoint_does_not_claim_one() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = TrainConfig { g_lr: 1e30, d_lr: 1e30, ..tiny() };
    let msg = err_text(run::train(&cfg, &options(dir.path(), false), &Serial));
    assert!(msg.contains("diverged"), "{msg}");
    assert!(!RunDir::new(dir.path()).checkpoint().exists());
    assert!(
        !msg.contains("checkpoint is kept"),
        "no checkpoint exists, yet the message says: {msg}"
    );
}

// ---------------------------------------------------------------------------------------------
// Export and sampling

/// Exact inference by hand, the way the firmware does it: noise from `noise::rng(seed)`,
/// one sample at a time, pixels through `pixel`.
fn infer_by_hand_with(
    w: &WeightsFile<'_>, seed: u64, n: usize, class_of: impl Fn(usize) -> usize,
    pixel: fn(f32) -> u8,
) -> Vec<u8> {
    let spec = w.spec();
    let mut rng = noise::rng(seed);
    let mut out = Vec::new();
    for i in 0..n {
        let mut z = vec![0.0f32; spec.input().len()];
        let latent = w.header.latent as usize;
        noise::generator_input(w.header.noise, &mut rng, latent, class_of(i), &mut z);
        let mut y = vec![0.0f32; spec.output().len()];
        let mut scratch = vec![0.0f32; spec.infer_scratch_len(1)];
        model::infer(&spec, w.params().unwrap(), &z, &mut y, &mut scratch, 1).unwrap();
        out.extend(y.iter().map(|&v| pixel(v)));
    }
    out
}

/// [`infer_by_hand_with`] with the Tanh pixel map.
fn infer_by_hand(
    w: &WeightsFile<'_>, seed: u64, n: usize, class_of: impl Fn(usize) -> usize,
) -> Vec<u8> {
    infer_by_hand_with(w, seed, n, class_of, gan_core::to_pixel)
}

#[test]
fn export_parses_and_matches_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = TrainConfig { max_steps: 5, ..tiny() };
    train_fresh(&cfg, dir.path(), false, &pool());
    let ck = checkpoint_of(dir.path());
    let bytes = run::export_bytes(&ck).unwrap();
    assert_bytes_eq(
        "the run's export is the checkpoint's",
        &read(RunDir::new(dir.path()).generator()),
        &bytes,
    );

    let aligned = AlignedBytes::new(&bytes);
    let w = WeightsFile::parse(aligned.bytes()).unwrap();
    let h = &w.header;
    assert_eq!(h.kind, ModelKind::Generator);
    assert_eq!((h.latent, h.classes), (8, 0));
    assert_eq!(h.noise, NoiseKind::Gaussian);
    assert_eq!(h.input.len(), 8);
    assert_eq!((h.output.c, h.output.h, h.output.w), (1, 28, 28));
    assert_eq!(w.file_len, bytes.len());
    assert_eq!(h.data_len as usize, 4 * ck.g.params.len(), "data is the flat buffer");
    assert_bits_eq("exported params", w.params().unwrap(), ck.generator_params());

    let (text, ok) = inspect::describe_weights(aligned.bytes());
    assert!(ok, "{text}");
    assert!(text.contains("valid:"), "{text}");
    assert!(text.contains("latent:          8"), "{text}");
    // 8·16 + 16 + 16·784 + 784 parameters.
    assert!(text.contains("Total parameters: 13,472"), "{text}");

    // Damage in the data section is found by inspect.
    let mut bad = bytes.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x01;
    let (text, ok) = inspect::describe_weights(AlignedBytes::new(&bad).bytes());
    assert!(!ok);
    assert!(text.contains("INVALID") && text.contains("checksum"), "{text}");
}

#[test]
fn export_of_a_conditional_uniform_model_describes_it() {
    let cfg = TrainConfig { conditional: true, noise: Noise::Uniform, ..tiny() };
    let ck = trained_checkpoint(&cfg, 2);
    let bytes = run::export_bytes(&ck).unwrap();
    let aligned = AlignedBytes::new(&bytes);
    let w = aligned.weights().unwrap();
    assert_eq!((w.header.latent, w.header.classes), (8, 10));
    assert_eq!(w.header.noise, NoiseKind::Uniform);
    assert_eq!(w.header.input.len(), 18);
    assert_bits_eq("exported params", w.params().unwrap(), ck.generator_params());
    let (text, ok) = inspect::describe_weights(aligned.bytes());
    assert!(ok, "{text}");
    assert!(text.contains("classes:         10"), "{text}");
    assert!(text.contains("Uniform"), "{text}");

    // Cycling classes 0..9 equals exact inference by hand.
    let px = sample::generate(&w, 11, 12, ClassChoice::Cycle).unwrap();
    assert_bytes_eq("cycled classes", &px, &infer_by_hand(&w, 11, 12, |i| i % 10));
    let fixed = sample::generate(&w, 11, 3, ClassChoice::Fixed(4)).unwrap();
    assert_bytes_eq("fixed class", &fixed, &infer_by_hand(&w, 11, 3, |_| 4));
    assert_ne!(&fixed[..784], &px[..784], "class 4 vs class 0 from the same noise");
    let msg = format!("{:#}", sample::generate(&w, 11, 1, ClassChoice::Fixed(10)).unwrap_err());
    assert!(msg.contains("out of range"), "{msg}");
}

#[test]
fn sigmoid_generator_samples_use_the_unit_pixel_map() {
    let cfg = TrainConfig { g_out: OutAct::Sigmoid, ..tiny() };
    let ck = trained_checkpoint(&cfg, 2);
    let bytes = run::export_bytes(&ck).unwrap();
    let aligned = AlignedBytes::new(&bytes);
    let w = aligned.weights().unwrap();
    let px = sample::generate(&w, 5, 3, ClassChoice::Cycle).unwrap();
    assert_bytes_eq("sigmoid samples", &px, &infer_by_hand_unit(&w, 5, 3, 0));
    // The same outputs through the trainer's own pixel conversion.
    let grid_px = training_pixels(ck, 5, 3, OutAct::Sigmoid);
    let worst = worst_diff(&grid_px, &px);
    assert!(worst <= 1, "sample and training grids differ by {worst} grey levels");
}

/// `n` digits of noise seed `seed` through the trainer's training forward (unconditional,
/// latent 8) and its pixel map for `act`.
fn training_pixels(ck: Checkpoint, seed: u64, n: usize, act: OutAct) -> Vec<u8> {
    let mut gan = Gan::from_checkpoint(ck).unwrap();
    let mut rng = noise::rng(seed);
    let mut z = vec![0.0f32; n * 8];
    for row in z.chunks_exact_mut(8) {
        noise::generator_input(NoiseKind::Gaussian, &mut rng, 8, 0, row);
    }
    let out = gan.generate_batch(&z, n, &Serial).unwrap();
    run::to_pixels(&out, act)
}

/// The largest difference between two grey images.
fn worst_diff(a: &[u8], b: &[u8]) -> i32 {
    a.iter().zip(b).map(|(&x, &y)| (x as i32 - y as i32).abs()).max().unwrap()
}

/// [`infer_by_hand`] with one class for all samples, and the sigmoid pixel map.
fn infer_by_hand_unit(w: &WeightsFile<'_>, seed: u64, n: usize, class: usize) -> Vec<u8> {
    infer_by_hand_with(w, seed, n, |_| class, gan_core::to_pixel_unit)
}

#[test]
fn sampling_is_exact_deterministic_and_seeded() {
    let cfg = tiny();
    let ck = trained_checkpoint(&cfg, 4);
    let bytes = run::export_bytes(&ck).unwrap();
    let aligned = AlignedBytes::new(&bytes);
    let w = aligned.weights().unwrap();

    let a = sample::generate(&w, 3, 5, ClassChoice::Cycle).unwrap();
    assert_eq!(a.len(), 5 * 784);
    assert_bytes_eq("same seed", &a, &sample::generate(&w, 3, 5, ClassChoice::Cycle).unwrap());
    let b = sample::generate(&w, 4, 5, ClassChoice::Cycle).unwrap();
    assert_ne!(a, b, "another seed draws other digits");
    // Each sample gets fresh noise.
    assert_ne!(&a[..784], &a[784..2 * 784]);
    // The first samples of a longer run are the same digits.
    assert_bytes_eq(
        "prefix of a longer run",
        &sample::generate(&w, 3, 8, ClassChoice::Cycle).unwrap()[..5 * 784],
        &a,
    );
    assert_bytes_eq("sample vs by hand", &a, &infer_by_hand(&w, 3, 5, |_| 0));

    // The training kernels agree with the exact path to within rounding (±1 grey level).
    let worst = worst_diff(&training_pixels(ck, 3, 5, OutAct::Tanh), &a);
    assert!(worst <= 1, "training and exact paths differ by {worst} grey levels");
}

// ---------------------------------------------------------------------------------------------
// Data errors through the trainer

/// Writes raw IDX image (and optionally label) files for the first `n` bundled digits.
fn write_idx_dir(dir: &Path, n: usize, labels: bool) -> (Vec<u8>, Vec<u8>) {
    let mut set = Dataset::load_dir(&data::default_data_dir()).unwrap();
    set.truncate(n);
    fs::create_dir_all(dir).unwrap();
    let images = sample::write_idx_images(&set.images, n, 28, 28);
    fs::write(dir.join("images-idx3-ubyte"), &images).unwrap();
    let mut lab = Vec::new();
    lab.extend_from_slice(&data::LABELS_MAGIC.to_be_bytes());
    lab.extend_from_slice(&(n as u32).to_be_bytes());
    lab.extend_from_slice(set.labels.as_ref().unwrap());
    if labels {
        fs::write(dir.join("labels-idx1-ubyte"), &lab).unwrap();
    }
    (images, lab)
}

/// Trains the tiny config on `data_dir` and returns the error text; checks nothing was left
/// behind that looks like a run.
fn train_error(cfg: &TrainConfig, data_dir: &Path) -> String {
    let run = tempfile::tempdir().unwrap();
    let mut o = options(&run.path().join("r"), false);
    o.data_dir = Some(data_dir.to_path_buf());
    let msg = err_text(run::train(cfg, &o, &Serial));
    assert!(!RunDir::new(run.path().join("r")).checkpoint().exists());
    msg
}

#[test]
fn data_errors_are_reported_by_the_trainer() {
    let root = tempfile::tempdir().unwrap();
    let cfg = TrainConfig { max_steps: 1, ..tiny() };

    // A directory without data files.
    let empty = root.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let msg = train_error(&cfg, &empty);
    assert!(msg.contains("no IDX image file") && msg.contains("images-idx3-ubyte"), "{msg}");
    assert!(msg.contains("loading data from"), "{msg}");

    // A directory that does not exist.
    let msg = train_error(&cfg, &root.path().join("nowhere"));
    assert!(msg.contains("cannot read") && msg.contains("nowhere"), "{msg}");

    // Truncated image payload.
    let trunc = root.path().join("trunc");
    let (images, labels) = write_idx_dir(&trunc, 64, true);
    fs::write(trunc.join("images-idx3-ubyte"), &images[..images.len() - 100]).unwrap();
    let msg = train_error(&cfg, &trunc);
    assert!(
        msg.contains("IDX payload truncated")
            && msg.contains(&format!("{}", 64 * 784))
            && msg.contains("images-idx3-ubyte"),
        "{msg}"
    );

    // Truncated header.
    fs::write(trunc.join("images-idx3-ubyte"), &images[..10]).unwrap();
    let msg = train_error(&cfg, &trunc);
    assert!(msg.contains("IDX header truncated"), "{msg}");

    // Bad magic: the label file where the images should be.
    fs::write(trunc.join("images-idx3-ubyte"), &labels).unwrap();
    let msg = train_error(&cfg, &trunc);
    assert!(msg.contains("bad IDX magic"), "{msg}");

    // Trailing bytes.
    let mut long = images.clone();
    long.extend_from_slice(&[0; 5]);
    fs::write(trunc.join("images-idx3-ubyte"), &long).unwrap();
    let msg = train_error(&cfg, &trunc);
    assert!(msg.contains("trailing bytes"), "{msg}");

    // A cut gzip file.
    let gz = root.path().join("gz");
    fs::create_dir(&gz).unwrap();
    let bundled = read(data::default_data_dir().join("images-idx3-ubyte.gz"));
    fs::write(gz.join("images-idx3-ubyte.gz"), &bundled[..bundled.len() / 3]).unwrap();
    let msg = train_error(&cfg, &gz);
    assert!(msg.contains("gzip"), "{msg}");

    // Images and labels that disagree on the count.
    let mism = root.path().join("mismatch");
    let (_, mut labels) = write_idx_dir(&mism, 64, false);
    labels.truncate(labels.len() - 4);
    labels[4..8].copy_from_slice(&60u32.to_be_bytes());
    fs::write(mism.join("labels-idx1-ubyte"), &labels).unwrap();
    let msg = train_error(&cfg, &mism);
    assert!(msg.contains("64 images but 60 labels"), "{msg}");

    // A conditional model on data without labels.
    let unlabelled = root.path().join("unlabelled");
    write_idx_dir(&unlabelled, 64, false);
    let cond = TrainConfig { conditional: true, ..cfg.clone() };
    let msg = train_error(&cond, &unlabelled);
    assert!(msg.contains("needs labels"), "{msg}");
    // ... while an unconditional one trains on it.
    let ok_run = root.path().join("ok");
    let mut o = options(&ok_run, false);
    o.data_dir = Some(unlabelled.clone());
    assert!(matches!(run::train(&cfg, &o, &Serial).unwrap(), Outcome::Finished { steps: 1, .. }));

    // Fewer images than one batch.
    let small = root.path().join("small");
    write_idx_dir(&small, 10, true);
    let msg = train_error(&cfg, &small);
    assert!(msg.contains("batch size 16") && msg.contains("10 samples"), "{msg}");
}

#[test]
fn resume_refuses_data_of_another_shape() {
    let root = tempfile::tempdir().unwrap();
    let run_dir = root.path().join("run");
    let cfg = TrainConfig { max_steps: 1, ..tiny() };
    train_fresh(&cfg, &run_dir, false, &Serial);
    // 14×14 images.
    let other = root.path().join("small-images");
    fs::create_dir(&other).unwrap();
    let px: Vec<u8> = (0..32 * 14 * 14).map(|i| (i % 251) as u8).collect();
    fs::write(other.join("images-idx3-ubyte"), sample::write_idx_images(&px, 32, 14, 14)).unwrap();
    let mut o = options(&run_dir, false);
    o.data_dir = Some(other);
    let msg = err_text(run::resume(&o, Some(2), &Serial));
    assert!(msg.contains("does not match"), "{msg}");
    assert!(msg.contains("14×14") && msg.contains("28×28"), "{msg}");
}

#[test]
fn invalid_configs_are_refused_before_anything_is_written() {
    let root = tempfile::tempdir().unwrap();
    let cases: [(TrainConfig, &str); 5] = [
        (TrainConfig { batch: 1, ..tiny() }, "batch size must be at least 2"),
        (TrainConfig { g_lr: f32::NAN, ..tiny() }, "learning rates"),
        (TrainConfig { n_critic: 0, ..tiny() }, "n_critic"),
        (
            TrainConfig { loss: LossKind::WganGp, minibatch_disc: vec![4, 3], ..tiny() },
            "minibatch discrimination",
        ),
        (TrainConfig { minibatch_disc: vec![4], ..tiny() }, "two positive numbers"),
    ];
    for (i, (cfg, want)) in cases.iter().enumerate() {
        let dir = root.path().join(format!("r{i}"));
        let msg = err_text(run::train(cfg, &options(&dir, false), &Serial));
        assert!(msg.contains(want), "case {i}: {msg}");
        assert!(!dir.exists(), "case {i}: nothing is created");
    }
}

#[test]
fn an_empty_sample_grid_does_not_break_training() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = TrainConfig { grid: 0, epochs: 1, ..tiny() };
    let r = run::train(&cfg, &options(dir.path(), true), &Serial);
    // Either the config is refused up front, or the run finishes (without a grid).
    match r {
        Ok(_) => assert!(RunDir::new(dir.path()).generator().exists()),
        Err(e) => {
            let msg = format!("{e:#}");
            assert!(msg.contains("grid"), "{msg}");
            assert!(!RunDir::new(dir.path()).checkpoint().exists(), "{msg}");
        }
    }
}

/// A run that scores its generator keeps the scores, the best generator and its state; an
/// absurd learning rate then collapses it, which is detected and rolled back (halving the
/// rates each time) until the rollbacks run out and the run stops with the best kept.
#[test]
fn quality_is_tracked_and_a_collapse_is_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        arch: Arch::Custom,
        latent: 16,
        g_hidden: vec![128],
        d_hidden: vec![128],
        // The classic recipe at a high learning rate gets the small model past its first
        // blobs within a few epochs.
        loss: LossKind::Bce,
        ema: 0.0,
        d_translate: 0,
        g_lr: 2e-3,
        d_lr: 2e-3,
        batch: 32,
        epochs: 4,
        seed: 3,
        grid: 4,
        quality_every: 1,
        quality_samples: 200,
        ..TrainConfig::default()
    };
    let mut o = RunOptions::new(dir.path());
    o.limit = 2048;
    o.reports = true;
    assert!(matches!(run::train(&cfg, &o, &pool()).unwrap(), Outcome::Finished { .. }));
    let r = RunDir::new(dir.path());
    let rows = gan_train::quality::read_csv(&r.quality_csv(), u32::MAX).unwrap();
    assert_eq!(rows.iter().map(|q| q.epoch).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert!(rows.iter().all(|q| q.fid.is_finite() && q.fid > 0.0 && q.rollbacks == 0));
    assert!(r.quality_plot().exists());
    let ck = checkpoint::load(&r.checkpoint()).unwrap();
    let best = ck.quality.best_epoch;
    let best_row = rows.iter().min_by(|a, b| a.fid.total_cmp(&b.fid)).unwrap();
    assert_eq!(best, best_row.epoch);
    assert!((ck.quality.best_fid - best_row.fid).abs() < 1e-3);
    // best.ganw is the generator of the best epoch, best.bin its full state.
    let best_ck = checkpoint::load(&r.best_checkpoint()).unwrap();
    assert_eq!(best_ck.pos.epoch, best);
    let best_file = fs::read(r.best()).unwrap();
    assert_eq!(best_file, run::export_bytes(&best_ck).unwrap());

    // Make the learning rates absurd and go on for four more epochs.
    let mut wild = ck.clone();
    wild.config.g_lr = 4.0;
    wild.config.d_lr = 4.0;
    wild.config.epochs = 8;
    save_run_state(r.root(), &wild);
    let outcome = run::resume(&o, None, &pool()).unwrap();
    let Outcome::Collapsed { why, best_epoch, .. } = outcome else {
        let scores = fs::read_to_string(r.quality_csv()).unwrap();
        panic!("the collapse was not detected: {outcome:?}\n{scores}");
    };
    assert!(why.contains("after 3 rollbacks"), "{why}");
    assert_eq!(best_epoch, best);
    let end = checkpoint::load(&r.checkpoint()).unwrap();
    assert_eq!(end.quality.rollbacks, 3);
    assert_eq!((end.config.g_lr, end.config.d_lr), (0.5, 0.5));
    let written: TrainConfig = toml::from_str(&fs::read_to_string(r.config()).unwrap()).unwrap();
    assert_eq!(written.g_lr, 0.5);
    // Each rollback went back to the best epoch: the scores after it are of the rolled-back
    // runs, counted in the last column, and the loss log holds one history.
    let rows = gan_train::quality::read_csv(&r.quality_csv(), u32::MAX).unwrap();
    assert!(rows.iter().take_while(|q| q.epoch <= best).all(|q| q.rollbacks == 0));
    assert_eq!(rows.last().unwrap().rollbacks, 3);
    assert!(rows.windows(2).all(|w| w[0].epoch < w[1].epoch));
    let log = gan_train::report::LossLog::read_csv(&r.csv()).unwrap();
    assert!(log.rows().windows(2).all(|w| w[0].step < w[1].step));
    // The best generator is unchanged; the last one was exported too.
    assert_eq!(fs::read(r.best()).unwrap(), best_file);
    assert!(r.generator().exists());

    // With `on_collapse = "stop"` the first collapse ends the run.
    let mut stop = best_ck.clone();
    stop.config.g_lr = 0.5;
    stop.config.d_lr = 0.5;
    stop.config.epochs = 8;
    stop.config.on_collapse = gan_train::config::CollapseAction::Stop;
    save_run_state(r.root(), &stop);
    let Outcome::Collapsed { why, .. } = run::resume(&o, None, &pool()).unwrap() else {
        panic!("not stopped");
    };
    assert!(!why.contains("rollbacks"), "{why}");
    assert_eq!(checkpoint::load(&r.checkpoint()).unwrap().quality.rollbacks, 0);
}
