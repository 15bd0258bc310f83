//! Smoke tests of the `gan-train` command line: each runs the real binary in a fresh temporary
//! working directory and checks exit codes, messages and the files written.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use gan_train::checkpoint;
use gan_train::run::{self, RunDir};
use gan_train::sample::{self, AlignedBytes, ClassChoice};

/// Runs the binary in `dir` with `args`.
fn gan(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gan-train"))
        .current_dir(dir)
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("the binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs and expects success, showing both streams otherwise.
#[track_caller]
fn ok(dir: &Path, args: &[&str]) -> Output {
    let o = gan(dir, args);
    assert!(o.status.success(), "{args:?} failed ({}):\n{}\n{}", o.status, stdout(&o), stderr(&o));
    o
}

/// Runs and expects failure; returns stderr.
#[track_caller]
fn fails(dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let o = gan(dir, args);
    assert!(!o.status.success(), "{args:?} should fail:\n{}\n{}", stdout(&o), stderr(&o));
    (o.status.code(), stderr(&o))
}

fn read(path: impl AsRef<Path>) -> Vec<u8> {
    let path = path.as_ref();
    fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// A tiny model on 128 digits: 8 steps per epoch.
const TINY: &[&str] = &[
    "--arch",
    "custom",
    "--latent",
    "8",
    "--g-hidden",
    "16",
    "--d-hidden",
    "16",
    "--batch",
    "16",
    "--limit",
    "128",
    "--quiet",
];

fn train_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["train"];
    v.extend_from_slice(TINY);
    v.extend_from_slice(extra);
    v
}

#[test]
fn summary_prints_both_tables_with_their_totals() {
    let dir = tempfile::tempdir().unwrap();
    // The default, pico: G z32 + class → dense 32·7·7 → … → ConvT 1; D with a projection
    // output per class.
    let out = stdout(&ok(dir.path(), &["summary"]));
    let (g, d) = out.split_once("Discriminator").expect("a discriminator table");
    for want in [
        "dense 42→1568",
        "67,424",
        "conv_transpose2d 4×4 s2 p1  16×14×14",
        "8,208",
        "Total parameters: 75,985",
    ] {
        assert!(g.contains(want), "generator table lacks {want:?}:\n{g}");
    }
    assert!(d.contains("dense 794→256") && d.contains("dense 128→11"), "{d}");

    let out = stdout(&ok(dir.path(), &["summary", "--arch", "mcu"]));
    let (g, d) = out.split_once("Discriminator").expect("a discriminator table");
    assert!(g.starts_with("Generator"), "{out}");
    // G z64→128→192→784.
    for want in [
        "dense 64→128",
        "8,320",
        "dense 128→192",
        "24,768",
        "dense 192→784",
        "151,312",
        "Total parameters: 184,400",
        "1×28×28",
    ] {
        assert!(g.contains(want), "generator table lacks {want:?}:\n{g}");
    }
    // D 784→256→128→1.
    for want in [
        "dense 784→256",
        "200,960",
        "dense 256→128",
        "32,896",
        "dense 128→1",
        "Total parameters: 233,985",
    ] {
        assert!(d.contains(want), "discriminator table lacks {want:?}:\n{d}");
    }

    let out = stdout(&ok(dir.path(), &["summary", "--arch", "classic"]));
    assert!(out.contains("Total parameters: 1,486,352"), "{out}");
    assert!(out.contains("Total parameters: 533,505"), "{out}");

    // A conditional model takes the one-hot class in both networks.
    let out = stdout(&ok(dir.path(), &["summary", "--arch", "mcu", "--conditional"]));
    assert!(out.contains("dense 74→128"), "{out}");
    assert!(out.contains("dense 794→256"), "{out}");

    // Widths alone switch to a custom model.
    let out = stdout(&ok(
        dir.path(),
        &["summary", "--latent", "8", "--g-hidden", "16", "--d-hidden", "16"],
    ));
    assert!(out.contains("Total parameters: 13,472"), "{out}");
    assert!(out.contains("Total parameters: 12,577"), "{out}");
}

#[test]
fn train_resume_export_inspect_and_sample() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let r = RunDir::new(cwd.join("R"));

    let o = ok(cwd, &train_args(&["--epochs", "1", "--run", "R"]));
    let err = stderr(&o);
    assert!(err.contains("done: 8 steps"), "{err}");
    for p in [r.checkpoint(), r.config(), r.csv(), r.grid(1), r.plot(), r.gif(), r.generator()] {
        assert!(p.is_file(), "{} is missing", p.display());
    }
    assert_eq!(&read(r.grid(1))[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(&read(r.plot())[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(&read(r.gif())[..6], b"GIF89a");
    let csv = fs::read_to_string(r.csv()).unwrap();
    assert!(csv.starts_with("step,epoch,d_loss,g_loss,"), "{csv}");
    let config = fs::read_to_string(r.config()).unwrap();
    assert!(config.contains("arch = \"custom\""), "{config}");
    assert!(config.contains("latent = 8"), "{config}");
    assert!(config.contains("epochs = 1"), "{config}");
    let ck = checkpoint::load(&r.checkpoint()).unwrap();
    assert_eq!((ck.pos.step, ck.pos.epoch, ck.pos.batch_in_epoch), (8, 1, 0));
    assert_eq!(read(r.generator()), run::export_bytes(&ck).unwrap());

    // The same run directory again is refused, and the message says how to continue it.
    let before = read(r.checkpoint());
    let (code, err) = fails(cwd, &train_args(&["--epochs", "1", "--run", "R"]));
    assert_eq!(code, Some(1));
    assert!(err.contains("already holds a run") && err.contains("--resume R"), "{err}");
    assert_eq!(read(r.checkpoint()), before, "the run is untouched");

    // Continue for a second epoch.
    let o = ok(cwd, &["train", "--resume", "R", "--epochs", "2", "--limit", "128", "--quiet"]);
    assert!(stderr(&o).contains("done: 16 steps"), "{}", stderr(&o));
    let ck = checkpoint::load(&r.checkpoint()).unwrap();
    assert_eq!((ck.pos.step, ck.pos.epoch, ck.config.epochs), (16, 2, 2));
    assert!(r.grid(2).is_file());

    // Two epochs in one go give the same checkpoint and weights, byte for byte.
    ok(cwd, &train_args(&["--epochs", "2", "--run", "R2"]));
    let r2 = RunDir::new(cwd.join("R2"));
    assert!(read(r2.checkpoint()) == read(r.checkpoint()), "checkpoints differ");
    assert!(read(r2.generator()) == read(r.generator()), "exports differ");

    // The thread count does not change a bit either.
    ok(cwd, &train_args(&["--epochs", "2", "--threads", "3", "--run", "R3"]));
    let r3 = RunDir::new(cwd.join("R3"));
    assert!(read(r3.checkpoint()) == read(r.checkpoint()), "3 threads differ");

    // Export.
    ok(cwd, &["export", "--run", "R", "--out", "X.ganw"]);
    let x = read(cwd.join("X.ganw"));
    assert!(x == read(r.generator()), "export equals the run's generator");
    // ... also straight from a checkpoint file.
    ok(cwd, &["export", "--checkpoint", "R/checkpoint.bin", "--out", "Y.ganw"]);
    assert!(read(cwd.join("Y.ganw")) == x);

    // Inspect.
    let o = ok(cwd, &["inspect", "X.ganw"]);
    let text = stdout(&o);
    assert!(text.contains("valid"), "{text}");
    assert!(!text.contains("INVALID"), "{text}");
    assert!(text.contains("latent:          8"), "{text}");
    assert!(text.contains(&format!("file size:       {} bytes", x.len())), "{text}");
    let mut bad = x.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x10;
    fs::write(cwd.join("bad.ganw"), &bad).unwrap();
    let o = gan(cwd, &["inspect", "bad.ganw"]);
    assert!(!o.status.success());
    assert!(stdout(&o).contains("INVALID"), "{}", stdout(&o));
    assert!(stderr(&o).contains("not a valid weights file"), "{}", stderr(&o));
    fs::write(cwd.join("short.ganw"), &x[..10]).unwrap();
    let o = gan(cwd, &["inspect", "short.ganw"]);
    assert!(!o.status.success());
    assert!(stdout(&o).contains("INVALID: weights file is truncated"), "{}", stdout(&o));

    // Sample.
    let args = [
        "sample", "--model", "X.ganw", "--n", "4", "--seed", "3", "--png", "S.png", "--idx",
        "S.idx", "--raw", "S.bin",
    ];
    ok(cwd, &args);
    let raw = read(cwd.join("S.bin"));
    let idx = read(cwd.join("S.idx"));
    assert_eq!(raw.len(), 4 * 784);
    assert_eq!(idx.len(), 16 + 4 * 784);
    assert_eq!(&idx[..4], &0x0803u32.to_be_bytes());
    assert_eq!(&idx[4..8], &4u32.to_be_bytes());
    assert_eq!(&idx[8..12], &28u32.to_be_bytes());
    assert_eq!(&idx[12..16], &28u32.to_be_bytes());
    assert!(idx[16..] == raw[..], "the IDX payload is the raw bytes");
    assert_eq!(&read(cwd.join("S.png"))[..8], b"\x89PNG\r\n\x1a\n");
    // The library's exact path draws the same digits.
    let aligned = AlignedBytes::new(&x);
    let lib = sample::generate(&aligned.weights().unwrap(), 3, 4, ClassChoice::Cycle).unwrap();
    assert!(lib == raw, "CLI and library samples differ");

    // Same seed, same bytes; another seed, other digits.
    let png = read(cwd.join("S.png"));
    ok(cwd, &args);
    assert!(read(cwd.join("S.bin")) == raw);
    assert!(read(cwd.join("S.idx")) == idx);
    assert!(read(cwd.join("S.png")) == png);
    ok(cwd, &["sample", "--model", "X.ganw", "--n", "4", "--seed", "4", "--raw", "T.bin"]);
    assert!(read(cwd.join("T.bin")) != raw, "seed 4 draws other digits");

    // ASCII art: one 28-line block per digit.
    let o = ok(cwd, &["sample", "--model", "X.ganw", "--n", "2", "--ascii"]);
    let text = stdout(&o);
    assert_eq!(text.matches("digit ").count(), 2, "{text}");
    assert_eq!(text.lines().count(), 2 * 29, "{text}");

    // Sampling a damaged file fails before generating anything.
    let o = gan(cwd, &["sample", "--model", "bad.ganw", "--raw", "U.bin"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("invalid weights file"), "{}", stderr(&o));
    assert!(!cwd.join("U.bin").exists());

    // Int8: from the run and by re-encoding the f32 file give the same bytes; inspect and
    // sample read it; the digits stay close to the f32 ones.
    ok(cwd, &["export", "--run", "R", "--dtype", "i8", "--out", "Q.ganw", "--uf2", "Q.uf2"]);
    ok(cwd, &["export", "--weights", "X.ganw", "--dtype", "i8", "--out", "Q2.ganw"]);
    let q = read(cwd.join("Q.ganw"));
    assert!(q == read(cwd.join("Q2.ganw")), "int8 exports differ");
    assert!(q.len() < x.len() / 2, "{} vs {}", q.len(), x.len());
    assert_eq!(&read(cwd.join("Q.uf2"))[..4], b"UF2\n");
    let text = stdout(&ok(cwd, &["inspect", "Q.ganw"]));
    assert!(text.contains("GANW v2 (int8 weights"), "{text}");
    assert!(text.contains(" i8 "), "{text}");
    assert!(!text.contains("INVALID"), "{text}");
    // Mean grey-level difference of a model's digits (seed 3) from the f32 ones.
    let off_f32 = |model: &str, out: &str| {
        ok(cwd, &["sample", "--model", model, "--n", "4", "--seed", "3", "--raw", out]);
        let px = read(cwd.join(out));
        px.iter().zip(&raw).map(|(&a, &b)| (a as f64 - b as f64).abs()).sum::<f64>()
            / raw.len() as f64
    };
    let mean_diff = off_f32("Q.ganw", "Q.bin");
    assert!(mean_diff < 4.0, "int8 digits are {mean_diff} grey levels off");
    let (code, err) =
        fails(cwd, &["export", "--weights", "Q.ganw", "--dtype", "i8", "--out", "Q3.ganw"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("already int8"), "{err}");

    // All-integer: the same from the run and from the f32 file, shown and sampled.
    ok(cwd, &["export", "--run", "R", "--dtype", "q8", "--out", "A.ganw"]);
    ok(cwd, &["export", "--weights", "X.ganw", "--dtype", "q8", "--out", "A2.ganw"]);
    assert!(read(cwd.join("A.ganw")) == read(cwd.join("A2.ganw")), "q8 exports differ");
    let text = stdout(&ok(cwd, &["inspect", "A.ganw"]));
    assert!(text.contains("GANW v4 (all-integer"), "{text}");
    assert!(text.contains("requant") && text.contains("lut"), "{text}");
    assert!(!text.contains("INVALID"), "{text}");
    let mean_diff = off_f32("A.ganw", "A.bin");
    assert!(mean_diff < 6.0, "q8 digits are {mean_diff} grey levels off");
}

#[test]
fn bad_arguments_fail_with_helpful_messages() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();

    let (code, err) = fails(cwd, &["train", "--batch", "1", "--limit", "128", "--run", "R"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("batch size must be at least 2"), "{err}");
    assert!(!cwd.join("R").exists(), "nothing is created");
    assert!(!cwd.join("runs").exists(), "nothing is created");

    let (code, err) = fails(cwd, &["train", "--loss", "nonsense"]);
    assert_eq!(code, Some(2), "a usage error");
    assert!(err.contains("nonsense") && err.contains("--loss"), "{err}");
    assert!(err.contains("wgan-gp"), "lists the possible values: {err}");

    let (_, err) = fails(cwd, &["train", "--minibatch-disc", "4", "--run", "R"]);
    assert!(err.contains("two positive numbers"), "{err}");

    let (_, err) = fails(cwd, &["train", "--g-lr=-1", "--run", "R"]);
    assert!(err.contains("learning rates"), "{err}");

    let (code, err) = fails(cwd, &["train", "--batch", "many"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("many"), "{err}");

    let (code, err) = fails(cwd, &["train", "--resume", "R", "--run", "Q"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("cannot be used with"), "{err}");

    let (code, err) = fails(cwd, &["train", "--resume", "missing", "--quiet"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("checkpoint.bin"), "{err}");

    let (code, err) = fails(cwd, &["export"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--run"), "{err}");

    let (code, err) = fails(cwd, &["sample", "--model", "missing.ganw"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("missing.ganw"), "{err}");

    fs::write(cwd.join("garbage.ganw"), b"definitely not weights").unwrap();
    let o = gan(cwd, &["inspect", "garbage.ganw"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("INVALID"), "{}", stdout(&o));

    let (code, err) = fails(cwd, &["no-such-command"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("no-such-command"), "{err}");

    let (_, err) = fails(cwd, &train_args(&["--data", "nowhere", "--run", "R"]));
    assert!(err.contains("nowhere"), "{err}");

    // Images so wide that the per-epoch grid could not be animated: refused before training.
    let wide = cwd.join("wide");
    fs::create_dir_all(&wide).unwrap();
    let mut idx = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0x9C, 0x40];
    idx.extend(vec![128u8; 2 * 40_000]);
    fs::write(wide.join("images-idx3-ubyte"), &idx).unwrap();
    let (_, err) = fails(cwd, &["train", "--arch", "custom", "--data", "wide", "--run", "W"]);
    assert!(err.contains("more than the 65535 a GIF frame allows"), "{err}");
    assert!(!cwd.join("W").exists(), "nothing is created");

    // Hyperparameters outside their meaningful range.
    let (_, err) = fails(cwd, &["train", "--beta1", "1.5", "--run", "R"]);
    assert!(err.contains("beta1 and beta2 must be in [0, 1)"), "{err}");
    let (_, err) = fails(cwd, &["train", "--loss", "wgan-gp", "--gp-lambda=-1", "--run", "R"]);
    assert!(err.contains("gradient-penalty weight must be >= 0"), "{err}");

    // The host's limits (gan_train::limits), named in the message; nothing is written.
    let (_, err) = fails(cwd, &["train", "--epochs", "1000000", "--run", "R"]);
    assert!(err.contains("at most 100000 epochs"), "{err}");
    let (_, err) =
        fails(cwd, &["train", "--arch", "custom", "--g-hidden", "9999999", "--run", "R"]);
    assert!(err.contains("widths are at most 65536"), "{err}");
    assert!(!cwd.join("R").exists(), "nothing is created");
    let model = default_model();
    let (_, err) = fails(cwd, &["sample", "--model", &model, "--n", "5000000", "--raw", "big.bin"]);
    assert!(err.contains("limit of 1000000"), "{err}");
    assert!(!cwd.join("big.bin").exists());
    let (_, err) = fails(cwd, &["sample", "--model", &model, "--n", "0", "--raw", "none.bin"]);
    assert!(err.contains("at least 1"), "{err}");
}

#[test]
fn conditional_run_samples_the_chosen_class() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    ok(cwd, &train_args(&["--conditional", "--epochs", "1", "--max-steps", "3", "--run", "C"]));
    let weights = RunDir::new(cwd.join("C")).generator();
    let text = stdout(&ok(cwd, &["inspect", weights.to_str().unwrap()]));
    assert!(text.contains("classes:         10"), "{text}");
    assert!(text.contains("dense 18→16"), "{text}");

    ok(
        cwd,
        &[
            "sample",
            "--model",
            "C/generator.ganw",
            "--n",
            "3",
            "--seed",
            "9",
            "--class",
            "7",
            "--raw",
            "c7.bin",
        ],
    );
    let aligned = AlignedBytes::read(&weights).unwrap();
    let w = aligned.weights().unwrap();
    let want = sample::generate(&w, 9, 3, ClassChoice::Fixed(7)).unwrap();
    assert!(read(cwd.join("c7.bin")) == want, "class 7 samples differ from the library's");
    let cycled = sample::generate(&w, 9, 3, ClassChoice::Cycle).unwrap();
    assert!(want != cycled, "a fixed class changes the digits");

    let (code, err) =
        fails(cwd, &["sample", "--model", "C/generator.ganw", "--class", "10", "--raw", "c10.bin"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("out of range") && err.contains("10 classes"), "{err}");
    assert!(!cwd.join("c10.bin").exists());
}

/// The `pico` preset trains conditionally by default and exports without batch normalisation,
/// as f32 and as int8; both sample the class asked for.
#[test]
fn pico_preset_trains_and_exports_folded_f32_and_int8() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    ok(
        cwd,
        &[
            "train",
            "--arch",
            "pico",
            "--batch",
            "16",
            "--limit",
            "128",
            "--epochs",
            "1",
            "--max-steps",
            "3",
            "--quality-every",
            "0",
            "--quiet",
            "--run",
            "P",
        ],
    );
    let text = stdout(&ok(cwd, &["inspect", "P/generator.ganw"]));
    assert!(text.contains("classes:         10"), "{text}");
    assert!(text.contains("conv_transpose2d 4×4 s2 p1") && !text.contains("batch_norm"), "{text}");
    ok(cwd, &["export", "--run", "P", "--dtype", "i8", "--out", "P8.ganw"]);
    let text = stdout(&ok(cwd, &["inspect", "P8.ganw"]));
    assert!(text.contains("int8") && text.contains("scale"), "{text}");
    let sample = |model: &str, out: &str| {
        ok(
            cwd,
            &["sample", "--model", model, "--seed", "4", "--n", "2", "--class", "3", "--raw", out],
        );
        read(cwd.join(out))
    };
    let f = sample("P/generator.ganw", "f.bin");
    let q = sample("P8.ganw", "q.bin");
    assert_eq!((f.len(), q.len()), (2 * 784, 2 * 784));
    let mean = f.iter().zip(&q).map(|(a, b)| f64::from(a.abs_diff(*b))).sum::<f64>() / 1568.0;
    assert!(mean < 8.0, "int8 and f32 digits differ by {mean} grey levels on average");
    // One row per class: row 3 is what `--class 3` draws for the same seed.
    ok(
        cwd,
        &[
            "sample",
            "--model",
            "P8.ganw",
            "--seed",
            "4",
            "--n",
            "2",
            "--by-class",
            "--raw",
            "rows.bin",
            "--png",
            "rows.png",
        ],
    );
    let rows = read(cwd.join("rows.bin"));
    assert_eq!(rows.len(), 10 * 2 * 784);
    assert!(rows[3 * 2 * 784..4 * 2 * 784] == q[..], "row 3 differs from --class 3");
    let (_, w, h) = run::read_gray_png(&cwd.join("rows.png")).unwrap();
    assert!(w < h, "two columns, ten rows: {w}×{h}");
}

/// Ctrl-C stops after the current step with a checkpoint; the run then resumes.
#[cfg(unix)]
#[test]
fn interrupt_writes_a_checkpoint_that_resumes() {
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let child = Command::new(env!("CARGO_BIN_EXE_gan-train"))
        .current_dir(cwd)
        .args(train_args(&["--epochs", "100000", "--run", "R"]))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let r = RunDir::new(cwd.join("R"));
    // The handler is installed before the run directory is made.
    let start = Instant::now();
    while !r.config().exists() {
        assert!(start.elapsed() < Duration::from_secs(60), "training never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{}: {err}", out.status);
    assert!(err.contains("interrupted at step"), "{err}");
    assert!(err.contains("--resume R"), "{err}");
    let step: u64 = err
        .split("interrupted at step ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no step in {err}"));
    let ck = checkpoint::load(&r.checkpoint()).unwrap();
    assert_eq!(ck.pos.step, step);
    assert!(!r.generator().exists(), "not exported when interrupted");

    // Finish the epoch it was in.
    let target = (ck.pos.epoch + 1).to_string();
    let o = ok(cwd, &["train", "--resume", "R", "--epochs", &target, "--limit", "128", "--quiet"]);
    assert!(stderr(&o).contains("done:"), "{}", stderr(&o));
    let ck = checkpoint::load(&r.checkpoint()).unwrap();
    assert_eq!((ck.pos.epoch, ck.pos.batch_in_epoch), (target.parse().unwrap(), 0));
    assert!(r.generator().is_file());
}

/// The brief's resume command has no `--limit`: the run should keep training on the data it
/// started with (128 images, 8 steps an epoch), not switch silently to all 10,000.
#[test]
fn resume_keeps_the_data_the_run_started_with() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    ok(cwd, &train_args(&["--epochs", "1", "--run", "R"]));
    let o = ok(cwd, &["train", "--resume", "R", "--epochs", "2", "--quiet"]);
    let err = stderr(&o);
    assert!(err.contains("done: 16 steps"), "{err}");
    let ck = checkpoint::load(&RunDir::new(cwd.join("R")).checkpoint()).unwrap();
    assert_eq!((ck.pos.step, ck.pos.epoch), (16, 2));
}

/// The repository's bundled default generator.
fn default_model() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../data/weights/default.ganw")
        .to_string_lossy()
        .into_owned()
}

/// The value after `key ` in a score line (`FID 12.34  precision 0.800 …`).
fn field(text: &str, key: &str) -> f64 {
    let at = text.find(&format!("{key} ")).unwrap_or_else(|| panic!("no {key} in {text}"));
    text[at + key.len() + 1..].split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn score_reads_models_idx_files_and_grids_alike() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = default_model();
    // A weights file, through the exact path: the digits `sample` draws.
    let o = ok(d, &["score", "--model", &model, "--n", "200", "--exact", "--json", "s.json"]);
    let text = stdout(&o);
    assert!(text.contains("200 samples") && text.contains("exact path"), "{text}");
    let fid = field(&text, "FID");
    assert!(fid.is_finite() && fid > 0.0, "{text}");
    let json = String::from_utf8(read(d.join("s.json"))).unwrap();
    assert!(json.contains("\"n\": 200") && json.contains("\"classes\": ["), "{json}");
    // The same 200 digits written by `sample` score the same, as IDX and as a grid PNG.
    ok(d, &["sample", "--model", &model, "--n", "200", "--idx", "s.idx", "--png", "s.png"]);
    let idx = stdout(&ok(d, &["score", "--idx", "s.idx"]));
    let png = stdout(&ok(d, &["score", "--png", "s.png", "--grid", "back.png"]));
    for other in [&idx, &png] {
        assert!(other.contains("200 samples"), "{other}");
        for key in ["FID", "precision", "recall", "entropy"] {
            assert_eq!(field(other, key), field(&text, key), "{key}: {other} vs {text}");
        }
    }
    // --grid draws what was scored: the first 100 digits, 10 by 10 at twice the size.
    let (_, w, h) = run::read_gray_png(&d.join("back.png")).unwrap();
    assert_eq!((w, h), (10 * 57 + 1, 10 * 57 + 1));
    // The fast batched path agrees closely with the exact one.
    let fast = stdout(&ok(d, &["score", "--model", &model, "--n", "200"]));
    assert!((field(&fast, "FID") - fid).abs() < 0.02 * fid, "{fast} vs {text}");

    let (_, msg) = fails(d, &["score", "--model", &model, "--n", "2"]);
    assert!(msg.contains("more than 3"), "{msg}");
    fs::write(d.join("bad.idx"), b"not an idx file").unwrap();
    let (_, msg) = fails(d, &["score", "--idx", "bad.idx"]);
    assert!(msg.to_lowercase().contains("idx"), "{msg}");
    let (_, msg) = fails(d, &["score", "--classifier", "missing.ganw", "--n", "10"]);
    assert!(msg.contains("gan-train classifier"), "{msg}");
}

#[test]
fn classifier_training_is_reproducible_and_its_output_scores() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a = stderr(&ok(d, &["classifier", "--epochs", "1", "--out", "a.ganw"]));
    ok(d, &["classifier", "--epochs", "1", "--out", "b.ganw"]);
    assert_eq!(read(d.join("a.ganw")), read(d.join("b.ganw")), "same seed, same bytes");
    assert!(a.contains("held-out accuracy"), "{a}");
    let o = ok(d, &["score", "--classifier", "a.ganw", "--model", &default_model(), "--n", "100"]);
    assert!(stdout(&o).contains("100 samples"));
}

/// A run killed at any write — half-way through a checkpoint or another file, after it and
/// before its rename, half-way through appending log rows, or after the rows and before the
/// checkpoint that owns them — and then resumed (or, killed before its first checkpoint,
/// started again) ends with every file byte-identical to an uninterrupted run's. The kills are
/// aborts at the fault-injection points of `gan_train::failpoint` (no cleanup, as `kill -9`).
#[cfg(unix)]
#[test]
fn a_run_killed_at_any_write_resumes_to_the_same_files() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    // 24 steps in 3 epochs, a log row every 5 (so the last one is a partial window), scores
    // every epoch (best.ganw and best.bin).
    fs::write(
        cwd.join("tiny.toml"),
        "arch = \"custom\"\nlatent = 8\ng_hidden = [16]\nd_hidden = [16]\nbatch = 16\n\
         epochs = 3\nlog_every = 5\ngrid = 4\nquality_samples = 64\n",
    )
    .unwrap();
    let train = |run: &str, failpoint: Option<String>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gan-train"));
        cmd.current_dir(cwd)
            .args(["train", "--config", "tiny.toml", "--limit", "128", "--quiet", "--run", run])
            .env_remove("GAN_TRAIN_FAILPOINT");
        if let Some(f) = failpoint {
            cmd.env("GAN_TRAIN_FAILPOINT", f);
        }
        cmd.output().unwrap()
    };
    let reference = train("ref", None);
    assert!(reference.status.success(), "{}", stderr(&reference));
    let files =
        ["checkpoint.bin", "losses.csv", "quality.csv", "generator.ganw", "best.ganw", "best.bin"];
    let want: Vec<Vec<u8>> = files.iter().map(|f| read(cwd.join("ref").join(f))).collect();

    let mut kills = 0;
    for point in ["write-half", "write", "append-half", "append"] {
        for n in 1.. {
            let run = format!("{point}-{n}");
            let first = train(&run, Some(format!("{point}:{n}")));
            if first.status.success() {
                assert!(n > 1, "{point} was never reached");
                break;
            }
            assert_eq!(
                first.status.signal(),
                Some(6),
                "{run}: not the injected abort: {}",
                stderr(&first)
            );
            kills += 1;
            let r = RunDir::new(cwd.join(&run));
            let again = if r.checkpoint().exists() {
                gan(cwd, &["train", "--resume", &run, "--quiet"])
            } else {
                // Killed before the first checkpoint: the run starts again.
                train(&run, None)
            };
            assert!(again.status.success(), "{run}: {}\n{}", stdout(&again), stderr(&again));
            for (f, w) in files.iter().zip(&want) {
                assert!(
                    read(cwd.join(&run).join(f)) == *w,
                    "{run}: {f} differs from the uninterrupted run's"
                );
            }
        }
    }
    eprintln!("{kills} kills, each resumed to the uninterrupted run's files");
    assert!(kills >= 20, "only {kills} kills");
}

/// The corrupt-weights matrix: each damage to a real weights file (the q8 default and its f32
/// twin) makes `sample` fail with exit code 1 and the parser's message, and `inspect` report
/// it as invalid with the firmware's error code; the damaged file is left as it was and no
/// output file appears.
#[test]
fn corrupt_weights_files_are_refused_with_their_codes_and_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let weights = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/weights");
    let q8 = read(weights.join("default-q8.ganw"));
    let f32 = read(weights.join("default.ganw"));
    let with = |bytes: &[u8], at: usize, new: &[u8]| {
        let mut b = bytes.to_vec();
        b[at..at + new.len()].copy_from_slice(new);
        b
    };
    // A NaN weight in the f32 file's data (at byte 112, past the header), checksums repaired.
    let nan = gan_train::fuzz::repair_weights(&with(&f32, 112 + 40, &f32::NAN.to_le_bytes()));
    let cases: Vec<(&str, Vec<u8>, &str, u8)> = vec![
        ("truncated", q8[..q8.len() / 2].to_vec(), "weights file is truncated", 10),
        ("ten bytes", q8[..10].to_vec(), "weights file is truncated", 10),
        ("magic", with(&q8, 0, b"XANW"), "not a weights file (magic is not GANW)", 11),
        ("future", with(&q8, 4, &9u16.to_le_bytes()), "version 9 is not supported", 12),
        ("version 3", with(&q8, 4, &3u16.to_le_bytes()), "export the model again", 12),
        ("header", with(&q8, 20, &[q8[20] ^ 1]), "weights header is corrupt", 13),
        ("data", with(&q8, q8.len() - 3, &[q8[q8.len() - 3] ^ 0x10]), "checksum mismatch", 16),
        ("nan", nan, "hold a NaN or an infinity", 22),
    ];
    for (name, bytes, message, code) in cases {
        let file = cwd.join(format!("{}.ganw", name.replace(' ', "-")));
        fs::write(&file, &bytes).unwrap();
        let model = file.to_string_lossy().into_owned();
        let (exit, err) =
            fails(cwd, &["sample", "--model", &model, "--n", "2", "--raw", "out.bin"]);
        assert_eq!(exit, Some(1), "{name}: {err}");
        assert!(err.contains("invalid weights file") && err.contains(message), "{name}: {err}");
        assert!(!cwd.join("out.bin").exists(), "{name}: no output");
        let o = gan(cwd, &["inspect", &model]);
        assert_eq!(o.status.code(), Some(1), "{name}");
        let text = stdout(&o);
        let coded = format!("(error code {code})");
        assert!(
            text.contains("INVALID") && text.contains(message) && text.contains(&coded),
            "{name}: {text}"
        );
        assert_eq!(read(&file), bytes, "{name}: the file is left as it was");
    }
}

/// Every file of a run directory (sub-folders included), with its bytes.
fn snapshot(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() { todo.push(p) } else { out.push((p.clone(), read(&p))) }
        }
    }
    out.sort();
    out
}

/// The corrupt-checkpoint matrix: each damage to a run's checkpoint makes `train --resume`
/// and `export --run` fail with exit code 1 and a message naming the file and the damage;
/// nothing in the run directory changes and no weights file appears.
#[test]
fn corrupt_checkpoints_are_refused_and_the_run_is_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    ok(cwd, &train_args(&["--epochs", "1", "--run", "R"]));
    let r = RunDir::new(cwd.join("R"));
    let good = read(r.checkpoint());
    let with = |at: usize, new: &[u8]| {
        let mut b = good.clone();
        b[at..at + new.len()].copy_from_slice(new);
        b
    };
    let mut garbage = good.clone();
    garbage[40..200].fill(0xff);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated", good[..good.len() / 2].to_vec(), "truncated or has trailing bytes"),
        ("magic", with(0, b"XANC"), "not a checkpoint file (bad magic)"),
        ("future", with(4, &99u32.to_le_bytes()), "checkpoint version 99 is not supported"),
        ("checksum", with(good.len() - 3, &[good[good.len() - 3] ^ 1]), "CRC mismatch"),
        ("payload", gan_train::fuzz::repair_checkpoint(&garbage), "payload does not decode"),
    ];
    for (name, bytes, message) in cases {
        fs::write(r.checkpoint(), &bytes).unwrap();
        let before = snapshot(&cwd.join("R"));
        let (code, err) = fails(cwd, &["train", "--resume", "R", "--quiet"]);
        assert_eq!(code, Some(1), "{name}: {err}");
        assert!(err.contains("checkpoint.bin") && err.contains(message), "{name}: {err}");
        let (code, err) = fails(cwd, &["export", "--run", "R", "--out", "X.ganw"]);
        assert_eq!(code, Some(1), "{name}: {err}");
        assert!(err.contains("checkpoint.bin") && err.contains(message), "{name}: {err}");
        assert!(!cwd.join("X.ganw").exists(), "{name}: no weights written");
        assert!(snapshot(&cwd.join("R")) == before, "{name}: the run directory changed");
    }
}
