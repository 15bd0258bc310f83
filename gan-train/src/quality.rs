//! Quality while training: the generator scored every few epochs with `gan-train score`'s
//! measures, the best generator kept, collapse detected.
//!
//! After every `quality_every` epochs the run draws `quality_samples` digits from one fixed
//! noise batch (a stream of its own, so the scores of two epochs differ only by the
//! generator), scores them against the run's own training digits, appends a row to
//! `quality.csv`, redraws `quality.png`, and, when the classifier-FID is the best so far, writes
//! the generator to `best.ganw` and the full training state to `best.bin`.
//!
//! A score is a *collapse* ([`judge`]) when, against the best seen so far, the class entropy
//! falls sharply (the generator stops drawing some digits), the recall falls below 40 % of its
//! best while the FID worsens by a quarter (it covers much less of the real digits' variety),
//! or the FID more than doubles (the message says when the discriminator has won outright:
//! then the generator gets no useful gradient). What happens then is [`crate::config::CollapseAction`]: a warning, a rollback to
//! `best.bin` with both learning rates halved (at most [`MAX_ROLLBACKS`] times), or a stop.
//!
//! The scores need 28×28 images (the classifier's input); on other data tracking is off.
//! Numbers from a few thousand samples are for following a run; they read a little worse than
//! the 10,000-sample scores `gan-train score` reports (see docs/QUALITY.md).

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use gan_core::kernels::Exec;
use gan_core::noise;

use crate::config::TrainConfig;
use crate::data::Dataset;
use crate::report::{self, LossRow};
use crate::run::{self, RunDir};
use crate::score::{self, Classifier, Reference, Score};
use crate::trainer::{Gan, QualityState};

/// Seed offset of the scoring noise (apart from the training noise and the grid's).
const QUALITY_SEED_SALT: u64 = 0xC2B2_AE3D_27D4_EB4F;

/// Rollbacks a run may do before it stops.
pub const MAX_ROLLBACKS: u32 = 3;

/// Entropy drop (normalised, out of 1) from the best that counts as a collapse.
const ENTROPY_DROP: f64 = 0.2;
/// Share of the best recall below which recall counts as collapsed.
const RECALL_FALL: f64 = 0.4;
/// The best recall must be at least this for a recall fall to count (a few thousand samples
/// measure small recalls with much noise).
const RECALL_FLOOR: f64 = 0.1;
/// D accuracy on both real and fake (mean over the epoch) above which D has won.
const D_WINS: f32 = 0.99;
/// FID above this multiple of the best is a collapse.
const FID_RISE: f64 = 2.0;

/// One score of a run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QualityRow {
    /// Epochs done (1-based).
    pub epoch: u32,
    /// Steps done.
    pub step: u64,
    /// Classifier-FID against the run's digits.
    pub fid: f64,
    /// Improved precision.
    pub precision: f64,
    /// Improved recall.
    pub recall: f64,
    /// Normalised class entropy.
    pub entropy: f64,
    /// Mean classifier confidence.
    pub confidence: f64,
    /// Share drawn as the requested class (conditional models; NaN otherwise).
    pub class_match: f64,
    /// Rollbacks done before this score.
    pub rollbacks: u32,
}

/// First line of `quality.csv`.
pub const CSV_HEADER: &str =
    "epoch,step,fid,precision,recall,entropy,confidence,class_match,rollbacks";

impl QualityRow {
    /// The requested-class share formatted by `f`, or empty for an unconditional model.
    pub fn class_share(&self, f: impl Fn(f64) -> String) -> String {
        if self.class_match.is_nan() { String::new() } else { f(self.class_match) }
    }

    fn to_csv(self) -> String {
        format!(
            "{},{},{:.4},{:.4},{:.4},{:.4},{:.4},{},{}",
            self.epoch,
            self.step,
            self.fid,
            self.precision,
            self.recall,
            self.entropy,
            self.confidence,
            self.class_share(|m| format!("{m:.4}")),
            self.rollbacks
        )
    }

    fn from_csv(line: &str) -> Option<QualityRow> {
        let f: Vec<&str> = line.trim_end_matches('\r').split(',').map(str::trim).collect();
        if f.len() != 9 {
            return None;
        }
        let float = |s: &str| if s.is_empty() { Some(f64::NAN) } else { s.parse().ok() };
        Some(QualityRow {
            epoch: f[0].parse().ok()?,
            step: f[1].parse().ok()?,
            fid: f[2].parse().ok()?,
            precision: f[3].parse().ok()?,
            recall: f[4].parse().ok()?,
            entropy: f[5].parse().ok()?,
            confidence: f[6].parse().ok()?,
            class_match: float(f[7])?,
            rollbacks: f[8].parse().ok()?,
        })
    }
}

/// Reads `quality.csv` (rows of epochs after `epoch` dropped: a resumed or rolled-back run
/// scores them again). A missing file is an empty history.
pub fn read_csv(path: &Path, epoch: u32) -> Result<Vec<QualityRow>> {
    if !path.exists() {
        return Ok(vec![]);
    }
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines();
    match lines.next() {
        None => return Ok(vec![]),
        Some(h) if h.trim_end_matches('\r') == CSV_HEADER => {}
        Some(_) => {
            bail!("{} is not a quality log (its header is not {CSV_HEADER:?})", path.display())
        }
    }
    let mut rows = Vec::new();
    for (i, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let row = QualityRow::from_csv(line)
            .with_context(|| format!("{}: line {} is not a quality row", path.display(), i + 2))?;
        if row.epoch <= epoch {
            rows.push(row);
        }
    }
    Ok(rows)
}

/// Writes `rows` as `quality.csv` (atomically: the file is small).
pub fn write_csv(path: &Path, rows: &[QualityRow]) -> Result<()> {
    let mut s = format!("{CSV_HEADER}\n");
    for r in rows {
        let _ = writeln!(s, "{}", r.to_csv());
    }
    run::write_atomic(path, s.as_bytes())
}

/// Plots the quality curve (FID above; precision, recall, class entropy and, for conditional
/// models, the requested-class share below) against the step.
pub fn plot(path: &Path, rows: &[QualityRow], title: &str) -> Result<()> {
    ensure!(!rows.is_empty(), "no scores to plot");
    let col = |f: fn(&QualityRow) -> f64| rows.iter().map(|r| f(r) as f32).collect::<Vec<f32>>();
    let fid = col(|r| r.fid);
    let mut lower = vec![
        ("precision", col(|r| r.precision)),
        ("recall", col(|r| r.recall)),
        ("class entropy", col(|r| r.entropy)),
    ];
    if rows.iter().any(|r| !r.class_match.is_nan()) {
        lower.push(("requested class", col(|r| r.class_match)));
    }
    let steps: Vec<u64> = rows.iter().map(|r| r.step).collect();
    report::plot_scores(path, title, &steps, &fid, &lower)
}

/// What a score means for the run.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Not better than the best.
    Fine,
    /// The best so far.
    Best,
    /// A collapse, with what showed it.
    Collapse(String),
}

/// Judges `s` against the scores so far (`q`, updated: best FID, highest recall and entropy)
/// and the loss rows logged since the last score (for "D wins outright").
pub fn judge(q: &mut QualityState, s: &Score, epoch: u32, rows: &[LossRow]) -> Verdict {
    let seen = q.best_epoch > 0;
    let mut why = Vec::new();
    if seen && s.entropy < q.best_entropy - ENTROPY_DROP {
        why.push(format!(
            "class entropy fell from {:.3} to {:.3} (the generator stopped drawing some digits)",
            q.best_entropy, s.entropy
        ));
    }
    let worse = s.fid / q.best_fid;
    if seen
        && q.best_recall >= RECALL_FLOOR
        && s.recall < RECALL_FALL * q.best_recall
        && worse > 1.25
    {
        why.push(format!(
            "recall fell from {:.3} to {:.3} and FID rose from {:.1} to {:.1} (the samples cover much less of the real digits)",
            q.best_recall, s.recall, q.best_fid, s.fid
        ));
    }
    if seen && worse > FID_RISE {
        let mut msg = format!("FID rose from {:.1} to {:.1}", q.best_fid, s.fid);
        if !rows.is_empty() {
            let n = rows.len() as f32;
            let acc_real = rows.iter().map(|r| r.d_acc_real).sum::<f32>() / n;
            let acc_fake = rows.iter().map(|r| r.d_acc_fake).sum::<f32>() / n;
            if acc_real >= D_WINS && acc_fake >= D_WINS {
                let _ = write!(
                    msg,
                    " and the discriminator wins outright (right on {:.1}% of real and {:.1}% of fake samples)",
                    100.0 * acc_real,
                    100.0 * acc_fake
                );
            }
        }
        why.push(msg);
    }
    q.best_recall = q.best_recall.max(s.recall);
    q.best_entropy = q.best_entropy.max(s.entropy);
    if !why.is_empty() {
        return Verdict::Collapse(why.join("; "));
    }
    if s.fid < q.best_fid {
        q.best_fid = s.fid;
        q.best_epoch = epoch;
        Verdict::Best
    } else {
        Verdict::Fine
    }
}

/// The scorer of one run: the classifier, the reference statistics of the run's digits and
/// the fixed scoring noise.
pub struct Tracker {
    clf: Classifier,
    reference: Reference,
    z: Vec<f32>,
    labels: Option<Vec<u8>>,
    /// Scores so far (what `quality.csv` holds).
    pub rows: Vec<QualityRow>,
}

impl Tracker {
    /// The tracker for `gan` training on `data`, or `None` when the configuration turns
    /// tracking off or the images are not 28×28. `rows` continue a resumed run's history.
    pub fn new(
        gan: &Gan, data: &Dataset, rows: Vec<QualityRow>, exec: &dyn Exec,
    ) -> Result<Option<Tracker>> {
        let cfg = gan.cfg();
        if cfg.quality_every == 0
            || (data.h, data.w) != (score::SIDE as usize, score::SIDE as usize)
        {
            return Ok(None);
        }
        let clf = match Classifier::load_default() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("warning: training without quality scores: {e:#}");
                return Ok(None);
            }
        };
        let reference = Reference::new(&clf, &data.images, exec)?;
        let (z, labels) = scoring_noise(gan);
        Ok(Some(Tracker { clf, reference, z, labels, rows }))
    }

    /// Whether the epoch just done (1-based) is scored: every `quality_every`-th, and the
    /// last one.
    pub fn due(cfg: &TrainConfig, epoch: u32) -> bool {
        cfg.quality_every > 0 && (epoch.is_multiple_of(cfg.quality_every) || epoch == cfg.epochs)
    }

    /// Scores the generator as it would be exported.
    pub fn score(&self, gan: &Gan, exec: &dyn Exec) -> Result<Score> {
        let spec = gan.g.def.spec();
        let n = gan.cfg().quality_samples;
        let out =
            crate::sample::forward_batched(&spec, gan.state.generator_params(), &self.z, n, exec)?;
        let px = run::to_pixels(&out, gan.cfg().g_out);
        score::score_images(&self.clf, &self.reference, &px, self.labels.as_deref(), exec)
    }

    /// Records `s` for the epoch just done.
    pub fn push(&mut self, gan: &Gan, s: &Score) {
        self.rows.push(QualityRow {
            epoch: gan.state.pos.epoch,
            step: gan.state.pos.step,
            fid: s.fid,
            precision: s.precision,
            recall: s.recall,
            entropy: s.entropy,
            confidence: s.confidence,
            class_match: s.class_match.unwrap_or(f64::NAN),
            rollbacks: gan.state.quality.rollbacks,
        });
    }

    /// Writes `quality.csv` and (with `plot`) `quality.png`.
    pub fn save(&self, run: &RunDir, plot_too: bool) -> Result<()> {
        write_csv(&run.quality_csv(), &self.rows)?;
        if plot_too && !self.rows.is_empty() {
            plot(&run.quality_plot(), &self.rows, "generator quality (fixed noise)")?;
        }
        Ok(())
    }
}

/// The fixed scoring batch: `quality_samples` generator inputs, classes cycling for a
/// conditional model (whose requested classes are returned).
fn scoring_noise(gan: &Gan) -> (Vec<f32>, Option<Vec<u8>>) {
    let cfg = gan.cfg();
    let gin = gan.g.def.input.len();
    let n = cfg.quality_samples;
    let mut z = vec![0.0; n * gin];
    let mut rng = noise::rng(cfg.seed ^ QUALITY_SEED_SALT);
    let classes = gan.classes();
    for (i, row) in z.chunks_exact_mut(gin).enumerate() {
        let c = if classes > 0 { i % classes } else { 0 };
        noise::generator_input(cfg.noise.into(), &mut rng, cfg.latent as usize, c, row);
    }
    let labels = (classes > 0).then(|| (0..n).map(|i| (i % classes) as u8).collect());
    (z, labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(fid: f64, recall: f64, entropy: f64) -> Score {
        Score {
            n: 100,
            fid,
            precision: 0.8,
            recall,
            classes: [0.1; 10],
            entropy,
            confidence: 0.9,
            class_match: None,
        }
    }

    fn loss_row(acc: f32) -> LossRow {
        LossRow { d_acc_real: acc, d_acc_fake: acc, ..LossRow::default() }
    }

    #[test]
    fn judge_keeps_the_best_and_names_each_kind_of_collapse() {
        let mut q = QualityState::default();
        assert_eq!(judge(&mut q, &score(90.0, 0.3, 0.99), 1, &[]), Verdict::Best);
        assert_eq!(judge(&mut q, &score(60.0, 0.4, 0.98), 2, &[]), Verdict::Best);
        assert_eq!((q.best_fid, q.best_epoch), (60.0, 2));
        assert_eq!(judge(&mut q, &score(70.0, 0.35, 0.97), 3, &[]), Verdict::Fine);
        assert_eq!((q.best_recall, q.best_entropy), (0.4, 0.99));

        let e = judge(&mut q.clone(), &score(65.0, 0.4, 0.70), 4, &[]);
        assert!(matches!(&e, Verdict::Collapse(m) if m.contains("entropy")), "{e:?}");
        // Recall alone is noisy: its fall counts only with a worse FID.
        assert_eq!(judge(&mut q.clone(), &score(65.0, 0.1, 0.99), 4, &[]), Verdict::Fine);
        let r = judge(&mut q.clone(), &score(80.0, 0.1, 0.99), 4, &[]);
        assert!(matches!(&r, Verdict::Collapse(m) if m.contains("recall")), "{r:?}");
        // A doubled FID is a collapse; the message says when D has won outright.
        let won = [loss_row(1.0), loss_row(0.995)];
        let d = judge(&mut q.clone(), &score(130.0, 0.4, 0.99), 4, &won);
        assert!(matches!(&d, Verdict::Collapse(m) if m.contains("wins outright")), "{d:?}");
        assert_eq!(judge(&mut q.clone(), &score(110.0, 0.4, 0.99), 4, &won), Verdict::Fine);
        let close = [loss_row(0.9)];
        let f = judge(&mut q.clone(), &score(130.0, 0.4, 0.99), 4, &close);
        assert!(matches!(&f, Verdict::Collapse(m) if !m.contains("wins")), "{f:?}");
        // A collapse is never the best, even at a lower FID.
        let mut q2 = q.clone();
        assert!(matches!(judge(&mut q2, &score(10.0, 0.4, 0.5), 4, &[]), Verdict::Collapse(_)));
        assert_eq!(q2.best_fid, 60.0);
    }

    #[test]
    fn every_nth_epoch_and_the_last_are_scored() {
        let cfg = TrainConfig { epochs: 12, quality_every: 5, ..TrainConfig::default() };
        let due: Vec<u32> = (1..=12).filter(|&e| Tracker::due(&cfg, e)).collect();
        assert_eq!(due, [5, 10, 12]);
        let never = TrainConfig { quality_every: 0, ..cfg };
        assert!((1..=12).all(|e| !Tracker::due(&never, e)));
    }

    #[test]
    fn nothing_counts_as_a_collapse_before_the_first_score() {
        let mut q = QualityState::default();
        assert_eq!(judge(&mut q, &score(400.0, 0.0, 0.1), 1, &[loss_row(1.0)]), Verdict::Best);
    }

    #[test]
    fn quality_csv_round_trips_and_drops_later_epochs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("quality.csv");
        let row = |epoch, class_match| QualityRow {
            epoch,
            step: 10 * epoch as u64,
            fid: 12.5,
            precision: 0.75,
            recall: 0.5,
            entropy: 0.99,
            confidence: 0.9,
            class_match,
            rollbacks: 1,
        };
        let rows = vec![row(1, f64::NAN), row(2, 0.96), row(3, 0.97)];
        write_csv(&path, &rows).unwrap();
        let back = read_csv(&path, 2).unwrap();
        assert_eq!(back.len(), 2);
        assert!(back[0].class_match.is_nan());
        assert_eq!(back[1], rows[1]);
        assert!(read_csv(&dir.path().join("none.csv"), 9).unwrap().is_empty());
        fs::write(&path, "epoch,loss\n1,2\n").unwrap();
        assert!(read_csv(&path, 9).unwrap_err().to_string().contains("not a quality log"));
        fs::write(&path, format!("{CSV_HEADER}\n1,2,3\n")).unwrap();
        assert!(format!("{:#}", read_csv(&path, 9).unwrap_err()).contains("line 2"));
    }
}
