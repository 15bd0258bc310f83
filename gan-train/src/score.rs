//! How good generated digits are, measured by the project itself: a small CNN digit classifier
//! (built from gan-core's layers, trained here on the bundled digits) and scores computed from
//! its outputs and its penultimate features.
//!
//! - **Classifier-FID** (Fréchet distance between Gaussians fitted to the classifier's
//!   128-dimensional penultimate features of the samples and of the real digits): lower is
//!   better, 0 for identical statistics. Like FID on Inception features, it grows as the sample
//!   count shrinks; compare scores of equal counts (10,000 is the convention).
//! - **Precision and recall** (Kynkäänniemi et al. 2019, k = 3): the share of samples that fall
//!   inside the real digits' k-nearest-neighbour balls (fidelity), and of real digits inside the
//!   samples' balls (coverage). Recall catches collapse that FID can miss.
//! - **Class distribution**: how often each digit is drawn, and its entropy normalised to 1 for
//!   uniform; **confidence**: the mean largest class probability; for a conditional model, the
//!   share of samples classified as the class they were asked for.
//!
//! Everything runs on the CPU through the training kernels (the bits may differ in the last
//! place between CPUs; the scores agree to far more digits than they are reported with).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use gan_core::format::{self, Header, ModelKind, NoiseKind};
use gan_core::kernels::{self, Exec};
use gan_core::layers::Layer;
use gan_core::loss;
use gan_core::model::{self, ForwardCtx};
use gan_core::noise::{self, NoiseRng};
use gan_core::optim::{AdamConfig, Optimizer};
use gan_core::spec::{Shape, Spec};
use rand_core::Rng;

use crate::data::{Dataset, Scale};
use crate::sample::AlignedBytes;

/// Classes the classifier tells apart.
pub const CLASSES: usize = 10;
/// Image side the classifier reads.
pub const SIDE: u32 = 28;
/// Width of the penultimate features the distances are computed on.
pub const FEATURES: usize = 128;
/// `k` of the k-nearest-neighbour balls of precision and recall.
pub const K: usize = 3;
/// The last images of the bundled digits, held out from the classifier's training to measure
/// its accuracy.
pub const HELD_OUT: usize = 1000;
/// Batch of the classifier's forward passes.
const BATCH: usize = 64;

/// The classifier: `1×28×28 → conv 32 (3×3) → ReLU → max-pool 2 → conv 64 (3×3) → ReLU →
/// max-pool 2 → conv 64 (3×3, stride 2) → ReLU → dense 128 → ReLU → dropout 0.4 → dense 10`
/// (logits). About 4.6 M multiply-accumulates and 190 K parameters.
pub const CLASSIFIER: [Layer; 14] = [
    Layer::Reshape { to: Shape::image(1, SIDE, SIDE) },
    Layer::Conv2d { out_c: 32, k: 3, stride: 1, pad: 1 },
    Layer::Relu,
    Layer::MaxPool2d { k: 2, stride: 2 },
    Layer::Conv2d { out_c: 64, k: 3, stride: 1, pad: 1 },
    Layer::Relu,
    Layer::MaxPool2d { k: 2, stride: 2 },
    Layer::Conv2d { out_c: 64, k: 3, stride: 2, pad: 1 },
    Layer::Relu,
    Layer::Flatten,
    Layer::Dense { out: FEATURES as u32 },
    Layer::Relu,
    Layer::Dropout { p: 0.4 },
    Layer::Dense { out: CLASSES as u32 },
];

/// Index of the layer whose output is the feature vector (the ReLU after the 128-wide layer).
const FEATURE_LAYER: usize = 11;

/// The classifier's network.
pub fn classifier_spec() -> Spec<'static> {
    Spec::new_const(Shape::flat(SIDE * SIDE), &CLASSIFIER)
}

/// Where the trained classifier ships: beside the sources, else `data/classifier/` under the
/// working directory (as [`crate::data::default_data_dir`]).
pub fn default_classifier_path() -> PathBuf {
    let beside_sources =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/classifier/digits.ganw");
    if beside_sources.exists() {
        beside_sources
    } else {
        Path::new("data").join("classifier").join("digits.ganw")
    }
}

/// A trained digit classifier.
#[derive(Clone, Debug)]
pub struct Classifier {
    params: Vec<f32>,
}

/// What the classifier says about a set of images.
#[derive(Clone, Debug, Default)]
pub struct Outputs {
    /// Penultimate features, N × [`FEATURES`].
    pub features: Vec<f32>,
    /// Class probabilities, N × [`CLASSES`].
    pub probs: Vec<f32>,
}

impl Outputs {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.probs.len() / CLASSES
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.probs.is_empty()
    }
    /// The most likely class of image `i`.
    pub fn class(&self, i: usize) -> usize {
        argmax(&self.probs[i * CLASSES..(i + 1) * CLASSES])
    }
}

fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

impl Classifier {
    /// A classifier with these parameters (the layout of [`classifier_spec`]).
    pub fn from_params(params: Vec<f32>) -> Result<Classifier> {
        ensure!(
            params.len() == classifier_spec().param_len(),
            "classifier parameters: {} values, the network needs {}",
            params.len(),
            classifier_spec().param_len()
        );
        Ok(Classifier { params })
    }

    /// Loads a classifier weights file (written by [`Classifier::to_bytes`]).
    pub fn load(path: &Path) -> Result<Classifier> {
        let bytes = AlignedBytes::read(path).with_context(|| {
            format!(
                "the digit classifier is missing: retrain it with `gan-train classifier` ({})",
                path.display()
            )
        })?;
        let w = bytes.weights().with_context(|| format!("loading {}", path.display()))?;
        ensure!(
            w.header.kind == ModelKind::Classifier
                && w.header.layers.as_slice() == CLASSIFIER.as_slice(),
            "{} is not the digit classifier this build expects",
            path.display()
        );
        let params = w.params().context("the classifier must be stored as f32")?;
        Classifier::from_params(params.to_vec())
    }

    /// Loads the shipped classifier.
    pub fn load_default() -> Result<Classifier> {
        Classifier::load(&default_classifier_path())
    }

    /// The classifier as a weights file.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let spec = classifier_spec();
        let header =
            Header::for_spec(ModelKind::Classifier, &spec, 0, CLASSES as u32, NoiseKind::Gaussian)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut buf = vec![0u8; header.file_len_bound()];
        let n =
            format::write(&mut buf, &header, &self.params).map_err(|e| anyhow::anyhow!("{e}"))?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Features and class probabilities of `n` grey 28×28 images (`images`: n × 784 bytes).
    pub fn outputs(&self, images: &[u8], exec: &dyn Exec) -> Result<Outputs> {
        let px = (SIDE * SIDE) as usize;
        ensure!(images.len().is_multiple_of(px), "images must be 28×28 ({} bytes)", images.len());
        let n = images.len() / px;
        let spec = classifier_spec();
        let info = spec.layer(FEATURE_LAYER).expect("feature layer exists");
        let mut out =
            Outputs { features: Vec::with_capacity(n * FEATURES), probs: vec![0.0; n * CLASSES] };
        let mut acts = vec![0.0; spec.act_len(BATCH)];
        let mut start = 0;
        while start < n {
            let b = BATCH.min(n - start);
            if acts.len() != spec.act_len(b) {
                acts = vec![0.0; spec.act_len(b)];
            }
            let input = model::input_mut(&spec, &mut acts, b);
            for (x, &p) in input.iter_mut().zip(&images[start * px..(start + b) * px]) {
                *x = Scale::Tanh.apply(p);
            }
            model::forward_with(&spec, &self.params, &mut acts, b, exec, &ForwardCtx::inference())?;
            out.features.extend_from_slice(&acts[info.out_range(b)]);
            let logits = model::output(&spec, &acts, b);
            loss::softmax(&mut out.probs[start * CLASSES..(start + b) * CLASSES], logits, CLASSES)?;
            start += b;
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------------
// Training the classifier

/// How the classifier is trained ([`train_classifier`]).
#[derive(Clone, Debug, PartialEq)]
pub struct ClassifierConfig {
    /// Passes over the training images.
    pub epochs: u32,
    /// Batch size.
    pub batch: usize,
    /// Adam learning rate (divided by 10 for the last third of the epochs).
    pub lr: f32,
    /// Largest random shift of a training image, in pixels, in each direction.
    pub shift: i32,
    /// Seed of the initialisation, shuffles and shifts.
    pub seed: u64,
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        ClassifierConfig { epochs: 24, batch: 64, lr: 1e-3, shift: 2, seed: 1 }
    }
}

/// A trained classifier and how well it does on the held-out digits.
#[derive(Clone, Debug)]
pub struct TrainedClassifier {
    /// The classifier.
    pub classifier: Classifier,
    /// Accuracy on the held-out digits after each epoch.
    pub held_out_accuracy: Vec<f64>,
}

/// Copies `src` (28×28) shifted by `(dx, dy)` pixels into `dst`, background elsewhere.
fn shifted(dst: &mut [u8], src: &[u8], dx: i32, dy: i32) {
    let s = SIDE as i32;
    dst.fill(0);
    for y in 0..s {
        let sy = y - dy;
        if !(0..s).contains(&sy) {
            continue;
        }
        for x in 0..s {
            let sx = x - dx;
            if (0..s).contains(&sx) {
                dst[(y * s + x) as usize] = src[(sy * s + sx) as usize];
            }
        }
    }
}

/// Trains the classifier on all but the last [`HELD_OUT`] images of `data` (which must be
/// labelled 28×28 digits) and measures it on those. `progress(epoch, accuracy)` is called after
/// every epoch. Deterministic in `cfg.seed` for a given CPU.
pub fn train_classifier(
    data: &Dataset, cfg: &ClassifierConfig, exec: &dyn Exec, mut progress: impl FnMut(u32, f64),
) -> Result<TrainedClassifier> {
    data.require_dims(SIDE as usize, SIDE as usize)?;
    let labels = data.labels.as_ref().context("training the classifier needs labels")?;
    ensure!(data.n > 2 * HELD_OUT, "need more than {} labelled digits", 2 * HELD_OUT);
    ensure!(cfg.batch >= 1 && cfg.epochs >= 1, "batch and epochs must be at least 1");
    let spec = classifier_spec();
    let px = (SIDE * SIDE) as usize;
    let train_n = data.n - HELD_OUT;
    let mut rng: NoiseRng = noise::rng(cfg.seed);
    let mut params = vec![0.0; spec.param_len()];
    gan_core::init::init_params(&spec, &mut params, gan_core::init::Init::HeNormal, &mut rng)?;
    let mut opt_state = vec![0.0; 2 * params.len()];
    let mut grads = vec![0.0; params.len()];
    let b = cfg.batch;
    let mut acts = vec![0.0; spec.act_len(b)];
    let mut scratch = vec![0.0; spec.backward_scratch_len(b)];
    let mut dlogits = vec![0.0; b * CLASSES];
    let mut img = vec![0u8; px];
    let mut batch_labels = vec![0u8; b];
    let mut step = 0u64;
    let mut accuracy = Vec::new();
    let held_out = &data.images[train_n * px..];
    for epoch in 0..cfg.epochs {
        let lr = if epoch >= cfg.epochs - cfg.epochs / 3 { cfg.lr / 10.0 } else { cfg.lr };
        let opt = Optimizer::Adam(AdamConfig { lr, ..AdamConfig::default() });
        let order = crate::data::epoch_permutation(cfg.seed, epoch, train_n as u32);
        for chunk in order.chunks_exact(b) {
            let input = model::input_mut(&spec, &mut acts, b);
            for (k, &i) in chunk.iter().enumerate() {
                let i = i as usize;
                let (dx, dy) = if cfg.shift > 0 {
                    let span = (2 * cfg.shift + 1) as u32;
                    (
                        (rng.next_u32() % span) as i32 - cfg.shift,
                        (rng.next_u32() % span) as i32 - cfg.shift,
                    )
                } else {
                    (0, 0)
                };
                shifted(&mut img, &data.images[i * px..(i + 1) * px], dx, dy);
                for (x, &p) in input[k * px..(k + 1) * px].iter_mut().zip(&img) {
                    *x = Scale::Tanh.apply(p);
                }
                batch_labels[k] = labels[i];
            }
            let ctx = ForwardCtx::with_seed(cfg.seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            model::forward_with(&spec, &params, &mut acts, b, exec, &ctx)?;
            let logits = model::output(&spec, &acts, b);
            loss::softmax_cross_entropy(&mut dlogits, &mut [], logits, &batch_labels, CLASSES)?;
            grads.fill(0.0);
            model::backward(
                &spec,
                &params,
                &acts,
                &dlogits,
                Some(&mut grads),
                None,
                &mut scratch,
                b,
                exec,
            )?;
            step += 1;
            opt.step_with(&mut params, &grads, &mut opt_state, step, exec)?;
        }
        let clf = Classifier { params: params.clone() };
        let out = clf.outputs(held_out, exec)?;
        let correct =
            (0..out.len()).filter(|&i| out.class(i) == labels[train_n + i] as usize).count();
        let acc = correct as f64 / out.len() as f64;
        progress(epoch + 1, acc);
        accuracy.push(acc);
    }
    Ok(TrainedClassifier { classifier: Classifier { params }, held_out_accuracy: accuracy })
}

// ---------------------------------------------------------------------------------------------
// Statistics

/// Mean and covariance of a set of feature vectors, in f64.
#[derive(Clone, Debug)]
pub struct Gaussian {
    /// Mean (F).
    pub mean: Vec<f64>,
    /// Covariance (F × F, unbiased).
    pub cov: Vec<f64>,
}

impl Gaussian {
    /// Fits `features` (n × [`FEATURES`], n ≥ 2).
    pub fn fit(features: &[f32]) -> Gaussian {
        let d = FEATURES;
        let n = features.len() / d;
        let mut mean = vec![0.0f64; d];
        for row in features.chunks_exact(d) {
            for (m, &x) in mean.iter_mut().zip(row) {
                *m += x as f64;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        let mut cov = vec![0.0f64; d * d];
        let mut centred = vec![0.0f64; d];
        for row in features.chunks_exact(d) {
            for ((c, &x), &m) in centred.iter_mut().zip(row).zip(&mean) {
                *c = x as f64 - m;
            }
            for i in 0..d {
                let ci = centred[i];
                if ci == 0.0 {
                    continue;
                }
                let r = &mut cov[i * d..(i + 1) * d];
                for (v, &cj) in r.iter_mut().zip(&centred) {
                    *v += ci * cj;
                }
            }
        }
        let denom = (n.max(2) - 1) as f64;
        cov.iter_mut().for_each(|v| *v /= denom);
        Gaussian { mean, cov }
    }
}

/// Eigenvalues and eigenvectors (columns of `v`, row-major n × n) of the symmetric matrix `a`
/// (n × n), by cyclic Jacobi rotations.
fn sym_eigen(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = a.to_vec();
    let mut v = vec![0.0f64; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j] * a[i * n + j])
            .sum();
        let diag: f64 = (0..n).map(|i| a[i * n + i] * a[i * n + i]).sum();
        if off <= 1e-30 * diag.max(1e-300) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                let (app, aqq) = (a[p * n + p], a[q * n + q]);
                let theta = (aqq - app) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

/// The square root of a symmetric positive semi-definite matrix (negative eigenvalues, from
/// rounding, count as 0).
fn sqrt_psd(a: &[f64], n: usize) -> Vec<f64> {
    let (w, v) = sym_eigen(a, n);
    let mut out = vec![0.0f64; n * n];
    for (k, &lambda) in w.iter().enumerate() {
        let s = lambda.max(0.0).sqrt();
        if s == 0.0 {
            continue;
        }
        for i in 0..n {
            let vik = v[i * n + k] * s;
            for j in 0..n {
                out[i * n + j] += vik * v[j * n + k];
            }
        }
    }
    out
}

fn matmul64(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let mut c = vec![0.0f64; n * n];
    for i in 0..n {
        for k in 0..n {
            let aik = a[i * n + k];
            if aik == 0.0 {
                continue;
            }
            for j in 0..n {
                c[i * n + j] += aik * b[k * n + j];
            }
        }
    }
    c
}

/// The Fréchet distance of two Gaussians:
/// `|μ₁ − μ₂|² + tr(Σ₁) + tr(Σ₂) − 2·tr((Σ₁^½ Σ₂ Σ₁^½)^½)`.
pub fn frechet_distance(a: &Gaussian, b: &Gaussian) -> f64 {
    let d = a.mean.len();
    let mean: f64 = a.mean.iter().zip(&b.mean).map(|(x, y)| (x - y) * (x - y)).sum();
    let tr = |m: &[f64]| (0..d).map(|i| m[i * d + i]).sum::<f64>();
    let s1 = sqrt_psd(&a.cov, d);
    let mut m = matmul64(&matmul64(&s1, &b.cov, d), &s1, d);
    // Symmetrise against rounding before the eigen-decomposition.
    for i in 0..d {
        for j in i + 1..d {
            let v = 0.5 * (m[i * d + j] + m[j * d + i]);
            m[i * d + j] = v;
            m[j * d + i] = v;
        }
    }
    let (w, _) = sym_eigen(&m, d);
    let tr_sqrt: f64 = w.iter().map(|&l| l.max(0.0).sqrt()).sum();
    (mean + tr(&a.cov) + tr(&b.cov) - 2.0 * tr_sqrt).max(0.0)
}

/// Squared distances between the rows of `x` (n × F) and `y` (m × F), n × m, through the
/// training kernels: `|x|² + |y|² − 2·x·yᵀ` (clamped at 0).
fn sq_distances(x: &[f32], y: &[f32], exec: &dyn Exec) -> Vec<f32> {
    let d = FEATURES;
    let (n, m) = (x.len() / d, y.len() / d);
    let norm = |v: &[f32]| {
        v.chunks_exact(d).map(|r| r.iter().map(|a| a * a).sum::<f32>()).collect::<Vec<_>>()
    };
    let (nx, ny) = (norm(x), norm(y));
    let mut dot = vec![0.0f32; n * m];
    kernels::matmul_nt(&mut dot, x, y, n, d, m, false, exec);
    for (i, row) in dot.chunks_exact_mut(m).enumerate() {
        for (v, &b) in row.iter_mut().zip(&ny) {
            *v = (nx[i] + b - 2.0 * *v).max(0.0);
        }
    }
    dot
}

/// Rows per block of the distance computations (a block of distances is rows × the other set).
const BLOCK: usize = 512;

/// The squared distance of every row of `x` to its [`K`]-th nearest other row.
pub fn knn_radii(x: &[f32], exec: &dyn Exec) -> Vec<f32> {
    let d = FEATURES;
    let n = x.len() / d;
    let mut radii = Vec::with_capacity(n);
    for start in (0..n).step_by(BLOCK) {
        let rows = BLOCK.min(n - start);
        let dist = sq_distances(&x[start * d..(start + rows) * d], x, exec);
        for (r, row) in dist.chunks_exact(n).enumerate() {
            // The K + 1 smallest, the row's distance to itself (0) among them.
            let mut best = [f32::INFINITY; K + 1];
            for (j, &v) in row.iter().enumerate() {
                if j == start + r {
                    continue;
                }
                if v < best[K - 1] {
                    let mut k = K - 1;
                    while k > 0 && best[k - 1] > v {
                        best[k] = best[k - 1];
                        k -= 1;
                    }
                    best[k] = v;
                }
            }
            radii.push(best[K - 1]);
        }
    }
    radii
}

/// Improved precision and recall: the share of `fake` rows within the k-NN ball of some `real`
/// row, and the share of `real` rows within the ball of some `fake` row.
pub fn precision_recall(
    real: &[f32], real_radii: &[f32], fake: &[f32], fake_radii: &[f32], exec: &dyn Exec,
) -> (f64, f64) {
    let d = FEATURES;
    let (n_real, n_fake) = (real.len() / d, fake.len() / d);
    let mut covered = vec![false; n_real];
    let mut inside = 0usize;
    for start in (0..n_fake).step_by(BLOCK) {
        let rows = BLOCK.min(n_fake - start);
        let dist = sq_distances(&fake[start * d..(start + rows) * d], real, exec);
        for (g, row) in dist.chunks_exact(n_real).enumerate() {
            let rg = fake_radii[start + g];
            let mut hit = false;
            for (j, &v) in row.iter().enumerate() {
                hit |= v <= real_radii[j];
                if v <= rg {
                    covered[j] = true;
                }
            }
            inside += hit as usize;
        }
    }
    let recall = covered.iter().filter(|&&c| c).count() as f64 / n_real.max(1) as f64;
    (inside as f64 / n_fake.max(1) as f64, recall)
}

// ---------------------------------------------------------------------------------------------
// Scores

/// The real digits' side of every score, computed once.
#[derive(Clone, Debug)]
pub struct Reference {
    /// The classifier's outputs on the real digits.
    pub outputs: Outputs,
    /// Their feature Gaussian.
    pub gaussian: Gaussian,
    /// Their k-NN radii.
    pub radii: Vec<f32>,
}

impl Reference {
    /// The reference statistics of real `images` (n × 784 grey bytes).
    pub fn new(clf: &Classifier, images: &[u8], exec: &dyn Exec) -> Result<Reference> {
        let outputs = clf.outputs(images, exec)?;
        ensure!(outputs.len() >= 2 * K, "the reference needs more real digits");
        let gaussian = Gaussian::fit(&outputs.features);
        let radii = knn_radii(&outputs.features, exec);
        Ok(Reference { outputs, gaussian, radii })
    }
}

/// The scores of one set of samples.
#[derive(Clone, Debug, PartialEq)]
pub struct Score {
    /// Samples scored.
    pub n: usize,
    /// Classifier-FID against the reference.
    pub fid: f64,
    /// Improved precision (k = 3).
    pub precision: f64,
    /// Improved recall (k = 3).
    pub recall: f64,
    /// Share of samples classified as each digit.
    pub classes: [f64; CLASSES],
    /// Entropy of `classes` divided by `ln 10` (1 = every digit equally often).
    pub entropy: f64,
    /// Mean largest class probability.
    pub confidence: f64,
    /// For samples drawn for a requested class: the share classified as that class.
    pub class_match: Option<f64>,
}

/// Scores grey 28×28 `images` (n × 784 bytes) against `reference`. `requested`, when given,
/// is the class each sample was drawn for.
pub fn score_images(
    clf: &Classifier, reference: &Reference, images: &[u8], requested: Option<&[u8]>,
    exec: &dyn Exec,
) -> Result<Score> {
    let out = clf.outputs(images, exec)?;
    score_outputs(reference, &out, requested, exec)
}

/// [`score_images`] from the classifier's outputs.
pub fn score_outputs(
    reference: &Reference, out: &Outputs, requested: Option<&[u8]>, exec: &dyn Exec,
) -> Result<Score> {
    let n = out.len();
    ensure!(n > K, "scoring needs more than {K} samples");
    if let Some(r) = requested {
        ensure!(r.len() == n, "{} requested classes for {n} samples", r.len());
    }
    let gaussian = Gaussian::fit(&out.features);
    let fid = frechet_distance(&gaussian, &reference.gaussian);
    let radii = knn_radii(&out.features, exec);
    let (precision, recall) = precision_recall(
        &reference.outputs.features,
        &reference.radii,
        &out.features,
        &radii,
        exec,
    );
    let mut classes = [0.0f64; CLASSES];
    let mut confidence = 0.0f64;
    let mut matched = 0usize;
    for i in 0..n {
        let c = out.class(i);
        classes[c] += 1.0;
        confidence += out.probs[i * CLASSES + c] as f64;
        if requested.is_some_and(|r| r[i] as usize == c) {
            matched += 1;
        }
    }
    classes.iter_mut().for_each(|c| *c /= n as f64);
    let entropy = 0.0
        - classes.iter().filter(|&&p| p > 0.0).map(|&p| p * p.ln()).sum::<f64>()
            / (CLASSES as f64).ln();
    Ok(Score {
        n,
        fid,
        precision,
        recall,
        classes,
        entropy,
        confidence: confidence / n as f64,
        class_match: requested.map(|_| matched as f64 / n as f64),
    })
}

impl Score {
    /// One line: `FID 12.34  precision 0.812  recall 0.734  entropy 0.998  …`.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "FID {:.2}  precision {:.3}  recall {:.3}  class entropy {:.3}  confidence {:.3}",
            self.fid, self.precision, self.recall, self.entropy, self.confidence
        );
        if let Some(m) = self.class_match {
            let _ = write!(s, "  requested class {:.1}%", 100.0 * m);
        }
        s
    }

    /// A multi-line report with the class distribution.
    pub fn report(&self) -> String {
        let mut s = format!("{} samples\n{}\nclasses:", self.n, self.summary());
        for (c, p) in self.classes.iter().enumerate() {
            let _ = write!(s, " {c}:{:.1}%", 100.0 * p);
        }
        s.push('\n');
        s
    }

    /// The score as a JSON object.
    pub fn to_json(&self) -> String {
        let classes: Vec<String> = self.classes.iter().map(|c| format!("{c:.5}")).collect();
        format!(
            "{{\"n\": {}, \"fid\": {:.4}, \"precision\": {:.4}, \"recall\": {:.4}, \"entropy\": {:.4}, \"confidence\": {:.4}, \"class_match\": {}, \"classes\": [{}]}}",
            self.n,
            self.fid,
            self.precision,
            self.recall,
            self.entropy,
            self.confidence,
            self.class_match.map_or("null".to_string(), |m| format!("{m:.4}")),
            classes.join(", ")
        )
    }
}

/// Cuts a grid PNG written by `sample --png` or the training grids (cells of `side × side`
/// images upscaled `scale` times, 1-pixel separators) back into images; empty cells (all
/// separator grey) at the end are dropped. The scale is found from the image size.
pub fn images_from_grid(grid: &[u8], width: usize, height: usize) -> Result<Vec<u8>> {
    let side = SIDE as usize;
    ensure!(
        width > 0 && height > 0 && grid.len() >= width * height,
        "the grid image is empty or short"
    );
    for scale in 1..=8 {
        let cell = side * scale + 1;
        if !(width - 1).is_multiple_of(cell) || !(height - 1).is_multiple_of(cell) {
            continue;
        }
        let (cols, rows) = ((width - 1) / cell, (height - 1) / cell);
        let mut out = Vec::new();
        for r in 0..rows {
            for c in 0..cols {
                let mut img = vec![0u8; side * side];
                for y in 0..side {
                    for x in 0..side {
                        let gy = r * cell + 1 + y * scale;
                        let gx = c * cell + 1 + x * scale;
                        img[y * side + x] = grid[gy * width + gx];
                    }
                }
                out.push(img);
            }
        }
        // Cells past the last sample are left in the separator grey.
        while out.last().is_some_and(|img| img.iter().all(|&p| p == crate::report::GRID_BACKGROUND))
        {
            out.pop();
        }
        ensure!(!out.is_empty(), "the grid holds no images");
        return Ok(out.concat());
    }
    bail!("{width}×{height} is not a grid of 28×28 cells (upscaled 1 to 8 times)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frechet_distance_of_known_gaussians() {
        let d = FEATURES;
        let eye = |s: f64| -> Vec<f64> {
            (0..d * d).map(|i| if i % (d + 1) == 0 { s } else { 0.0 }).collect()
        };
        let a = Gaussian { mean: vec![0.0; d], cov: eye(1.0) };
        assert!(frechet_distance(&a, &a).abs() < 1e-9);
        // Shifted means: |Δμ|².
        let mut b = a.clone();
        b.mean[3] = 2.0;
        assert!((frechet_distance(&a, &b) - 4.0).abs() < 1e-9);
        // Scaled isotropic covariances: d·(σ₁ − σ₂)².
        let c = Gaussian { mean: vec![0.0; d], cov: eye(4.0) };
        assert!((frechet_distance(&a, &c) - d as f64 * (2.0 - 1.0f64).powi(2)).abs() < 1e-6);
        // A non-diagonal pair against the 2×2 closed form, embedded: Σ₁ = [[2, 1], [1, 2]],
        // Σ₂ = I: tr Σ₁ + 2 − 2·tr(Σ₁^½) with eigenvalues 3 and 1 → 4 + 2 − 2·(√3 + 1).
        let mut e = a.clone();
        e.cov[0] = 2.0;
        e.cov[1] = 1.0;
        e.cov[d] = 1.0;
        e.cov[d + 1] = 2.0;
        let want = 6.0 - 2.0 * (3.0f64.sqrt() + 1.0);
        assert!((frechet_distance(&e, &a) - want).abs() < 1e-9, "{}", frechet_distance(&e, &a));
        assert!((frechet_distance(&a, &e) - want).abs() < 1e-9);
    }

    #[test]
    fn precision_and_recall_of_simple_sets() {
        let d = FEATURES;
        // Real points on a line 0, 1, …, 9 (first coordinate); radii to the 3rd neighbour.
        let pts = |xs: &[f32]| -> Vec<f32> {
            xs.iter().flat_map(|&x| (0..d).map(move |k| if k == 0 { x } else { 0.0 })).collect()
        };
        let real = pts(&(0..10).map(|i| i as f32).collect::<Vec<_>>());
        let rr = knn_radii(&real, &kernels::Serial);
        assert_eq!(rr[0], 9.0); // 0 → 3 is the third nearest
        assert_eq!(rr[5], 4.0); // 5 → {4, 6, 3 or 7}: distance 2
        // Samples on top of the real points: precision and recall 1.
        let (p, r) = precision_recall(&real, &rr, &real, &rr, &kernels::Serial);
        assert_eq!((p, r), (1.0, 1.0));
        // Samples collapsed near 2: all inside the real balls (precision 1), covering little.
        let fake = pts(&[2.0, 2.1, 2.2, 1.9, 2.05]);
        let fr = knn_radii(&fake, &kernels::Serial);
        let (p, r) = precision_recall(&real, &rr, &fake, &fr, &kernels::Serial);
        assert_eq!(p, 1.0);
        assert!(r <= 0.2, "{r}");
        // Samples far away: precision 0.
        let far = pts(&[100.0, 101.0, 102.0, 103.0, 104.0]);
        let farr = knn_radii(&far, &kernels::Serial);
        assert_eq!(precision_recall(&real, &rr, &far, &farr, &kernels::Serial), (0.0, 0.0));
    }

    #[test]
    fn grids_cut_back_into_images() {
        let imgs: Vec<u8> = (0..5 * 784).map(|i| (i % 251) as u8).collect();
        for scale in [1, 2, 4] {
            let (g, w, h) = crate::report::grid_image(&imgs, 5, 28, 28, 3, scale);
            assert_eq!(images_from_grid(&g, w, h).unwrap(), imgs, "scale {scale}");
        }
        assert!(images_from_grid(&[0; 100], 10, 10).is_err());
    }

    #[test]
    fn shifts_move_pixels_and_fill_with_background() {
        let mut src = vec![0u8; 784];
        src[28 * 10 + 10] = 200;
        let mut dst = vec![1u8; 784];
        shifted(&mut dst, &src, 2, -1);
        assert_eq!(dst[28 * 9 + 12], 200);
        assert_eq!(dst.iter().filter(|&&p| p != 0).count(), 1);
    }
}

// ---------------------------------------------------------------------------------------------
// Commands

/// `gan-train score` options.
#[derive(Clone, Debug, clap::Args)]
pub struct ScoreArgs {
    /// A generator weights file to draw the samples from (default: the bundled default
    /// generator, unless --idx, --png, --run or --calibrate is given).
    #[arg(long, conflicts_with_all = ["idx", "png", "run"])]
    pub model: Option<PathBuf>,
    /// A run directory: scores its generator.ganw.
    #[arg(long, conflicts_with_all = ["idx", "png"])]
    pub run: Option<PathBuf>,
    /// An IDX image file (e.g. written by `sample --idx`) to score.
    #[arg(long, conflicts_with = "png")]
    pub idx: Option<PathBuf>,
    /// A grid PNG (from `sample --png` or a run's samples/) to score.
    #[arg(long)]
    pub png: Option<PathBuf>,
    /// Samples to draw from a model.
    #[arg(long, default_value_t = 10_000)]
    pub n: usize,
    /// Noise seed of the samples (as `sample --seed`).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Class for a conditional model (default: cycle through all; the score then includes how
    /// often each sample is the class it was drawn for).
    #[arg(long)]
    pub class: Option<u32>,
    /// Draw the samples through the exact path (what `sample` and the firmware produce) instead
    /// of the batched training forward.
    #[arg(long)]
    pub exact: bool,
    /// Real digits to compare with (a directory of MNIST-format files; default: the bundled 10k).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// The digit classifier (default: data/classifier/digits.ganw).
    #[arg(long)]
    pub classifier: Option<PathBuf>,
    /// Print the calibration table (known sets of images, and the models given with --models).
    #[arg(long)]
    pub calibrate: bool,
    /// With --calibrate: weights files to add as rows (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub models: Vec<PathBuf>,
    /// Also write the score as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also draw the first 100 scored images as a 10×10 grid PNG (to look at what was scored).
    #[arg(long)]
    pub grid: Option<PathBuf>,
}

/// The real digits: the bundled ones or `dir`'s.
fn real_digits(dir: Option<&Path>) -> Result<Dataset> {
    let dir = dir.map(Path::to_path_buf).unwrap_or_else(crate::data::default_data_dir);
    let d = Dataset::load_dir(&dir)
        .with_context(|| format!("loading digits from {}", dir.display()))?;
    d.require_dims(SIDE as usize, SIDE as usize)?;
    Ok(d)
}

/// Samples drawn from a weights file: grey bytes and their requested classes (for a
/// conditional model drawing every class).
fn model_samples(
    path: &Path, args: &ScoreArgs, exec: &dyn Exec,
) -> Result<(Vec<u8>, Option<Vec<u8>>)> {
    let bytes = AlignedBytes::read(path)?;
    let w = bytes.weights()?;
    ensure!(
        w.header.output.len() == (SIDE * SIDE) as usize,
        "{}: not a generator of 28×28 images",
        path.display()
    );
    let class = match args.class {
        Some(c) => crate::sample::ClassChoice::Fixed(c),
        None => crate::sample::ClassChoice::Cycle,
    };
    let (px, labels) = if args.exact {
        let px = crate::sample::generate(&w, args.seed, args.n, class)?;
        let g = gan_core::generate::Generator::new(&w).map_err(|e| anyhow::anyhow!("{e}"))?;
        let labels = (0..args.n).map(|i| class.class_of(i, g.classes()) as u8).collect();
        (px, labels)
    } else {
        crate::sample::generate_batched(&w, args.seed, args.n, class, exec)?
    };
    Ok((px, (w.header.classes > 0).then_some(labels)))
}

/// Runs `gan-train score`.
pub fn run_score(args: &ScoreArgs) -> Result<()> {
    let team = crate::team::Team::with_rayon_threads().context("starting the threads")?;
    let exec = &team;
    let started = std::time::Instant::now();
    let clf = match &args.classifier {
        Some(p) => Classifier::load(p)?,
        None => Classifier::load_default()?,
    };
    let real = real_digits(args.data.as_deref())?;
    let reference = Reference::new(&clf, &real.images, exec)?;
    if args.calibrate {
        print!("{}", calibration_table(&clf, &reference, &real, &args.models, exec)?);
        return Ok(());
    }
    ensure!(args.n > K, "--n must be more than {K}");
    let (what, images, requested) = if let Some(p) = &args.idx {
        let idx = crate::data::read_idx_bytes(
            &std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
        )?;
        let (images, _, h, w) = idx.into_images()?;
        ensure!(
            (h, w) == (SIDE as usize, SIDE as usize),
            "{}: {h}×{w} images, the classifier reads 28×28",
            p.display()
        );
        (p.display().to_string(), images, None)
    } else if let Some(p) = &args.png {
        let (grid, w, h) = crate::run::read_gray_png(p)?;
        (p.display().to_string(), images_from_grid(&grid, w, h)?, None)
    } else {
        let path = match (&args.model, &args.run) {
            (Some(m), _) => m.clone(),
            (None, Some(r)) => crate::run::RunDir::new(r).generator(),
            (None, None) => {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/weights/default.ganw")
            }
        };
        let (images, requested) = model_samples(&path, args, exec)?;
        (
            format!(
                "{} (seed {}, {} path)",
                path.display(),
                args.seed,
                if args.exact { "exact" } else { "fast" }
            ),
            images,
            requested,
        )
    };
    let score = score_images(&clf, &reference, &images, requested.as_deref(), exec)?;
    println!("{what}");
    print!("{}", score.report());
    println!("({} real digits as reference; {:.1} s)", real.n, started.elapsed().as_secs_f64());
    if let Some(p) = &args.json {
        crate::run::write_atomic(p, format!("{}\n", score.to_json()).as_bytes())?;
    }
    if let Some(p) = &args.grid {
        let n = (images.len() / 784).min(100);
        let side = SIDE as usize;
        crate::report::save_grid_png(p, &images[..n * 784], n, side, side, 10, 2)?;
    }
    Ok(())
}

/// Box blur of radius 1 (3×3) of each 28×28 image.
fn blurred(images: &[u8]) -> Vec<u8> {
    let s = SIDE as i32;
    let mut out = vec![0u8; images.len()];
    for (src, dst) in images.chunks_exact(784).zip(out.chunks_exact_mut(784)) {
        for y in 0..s {
            for x in 0..s {
                let (mut sum, mut cnt) = (0u32, 0u32);
                for dy in -1..=1 {
                    for dx in -1..=1 {
                        let (yy, xx) = (y + dy, x + dx);
                        if (0..s).contains(&yy) && (0..s).contains(&xx) {
                            sum += src[(yy * s + xx) as usize] as u32;
                            cnt += 1;
                        }
                    }
                }
                dst[(y * s + x) as usize] = (sum / cnt) as u8;
            }
        }
    }
    out
}

/// The calibration table (Markdown): how the scores read on sets of known quality, each of
/// [`CALIBRATION_N`] images unless said otherwise.
pub fn calibration_table(
    clf: &Classifier, reference: &Reference, real: &Dataset, models: &[PathBuf], exec: &dyn Exec,
) -> Result<String> {
    let px = 784;
    let n = real.n;
    let labels = real.labels.as_deref();
    let mut rows: Vec<(String, Score)> = Vec::new();
    let score = |imgs: &[u8], req: Option<&[u8]>| score_images(clf, reference, imgs, req, exec);
    // Half the real digits against the other half: the floor at that count.
    let half = n / 2;
    let first = Reference::new(clf, &real.images[..half * px], exec)?;
    let second = score_images(clf, &first, &real.images[half * px..2 * half * px], None, exec)?;
    rows.push((format!("real digits, second half vs first half ({half} vs {half})"), second));
    rows.push(("real digits themselves (the reference)".into(), score(&real.images, labels)?));
    rows.push(("real digits blurred (3×3 box)".into(), score(&blurred(&real.images), labels)?));
    let mut rng = noise::rng(7);
    let uniform: Vec<u8> = (0..n * px).map(|_| (rng.next_u32() >> 24) as u8).collect();
    rows.push(("uniform noise".into(), score(&uniform, None)?));
    let one: Vec<u8> = real.images[..px].repeat(n);
    rows.push(("one real digit repeated".into(), score(&one, None)?));
    if let Some(l) = labels {
        let mut means = vec![0.0f64; CLASSES * px];
        let mut counts = [0usize; CLASSES];
        for (img, &c) in real.images.chunks_exact(px).zip(l) {
            counts[c as usize] += 1;
            for (m, &p) in means[c as usize * px..(c as usize + 1) * px].iter_mut().zip(img) {
                *m += p as f64;
            }
        }
        let class_means: Vec<u8> = (0..CLASSES)
            .flat_map(|c| (0..px).map(move |k| (c, k)))
            .map(|(c, k)| (means[c * px + k] / counts[c].max(1) as f64).round() as u8)
            .collect();
        let cycled: Vec<u8> = (0..n)
            .flat_map(|i| class_means[(i % CLASSES) * px..(i % CLASSES + 1) * px].to_vec())
            .collect();
        rows.push(("the ten class-mean images, repeated".into(), score(&cycled, None)?));
    }
    for m in models {
        let args = ScoreArgs {
            model: Some(m.clone()),
            run: None,
            idx: None,
            png: None,
            n: CALIBRATION_N,
            seed: 0,
            class: None,
            exact: false,
            data: None,
            classifier: None,
            calibrate: false,
            models: vec![],
            json: None,
            grid: None,
        };
        let (imgs, req) = model_samples(m, &args, exec)?;
        rows.push((format!("`{}`", m.display()), score(&imgs, req.as_deref())?));
    }
    let mut s = String::from(
        "| images | n | FID | precision | recall | class entropy | confidence | requested class |\n|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (name, sc) in rows {
        let m = sc.class_match.map_or("".to_string(), |m| format!("{:.1}%", 100.0 * m));
        let _ = writeln!(
            s,
            "| {name} | {} | {:.2} | {:.3} | {:.3} | {:.3} | {:.3} | {m} |",
            sc.n, sc.fid, sc.precision, sc.recall, sc.entropy, sc.confidence
        );
    }
    Ok(s)
}

/// Samples per model row of the calibration table.
pub const CALIBRATION_N: usize = 10_000;

/// `gan-train classifier` options.
#[derive(Clone, Debug, clap::Args)]
pub struct ClassifierArgs {
    /// Where to write the classifier.
    #[arg(long, default_value = "data/classifier/digits.ganw")]
    pub out: PathBuf,
    /// Labelled digits to train on (default: the bundled 10k; the last 1,000 are held out).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Epochs.
    #[arg(long, default_value_t = ClassifierConfig::default().epochs)]
    pub epochs: u32,
    /// Seed.
    #[arg(long, default_value_t = ClassifierConfig::default().seed)]
    pub seed: u64,
}

/// Runs `gan-train classifier`: trains the digit classifier and writes it.
pub fn run_classifier(args: &ClassifierArgs) -> Result<()> {
    let data = real_digits(args.data.as_deref())?;
    let cfg =
        ClassifierConfig { epochs: args.epochs, seed: args.seed, ..ClassifierConfig::default() };
    let started = std::time::Instant::now();
    let team = crate::team::Team::with_rayon_threads().context("starting the threads")?;
    let trained = train_classifier(&data, &cfg, &team, |e, acc| {
        eprintln!(
            "epoch {e:>2}/{}: held-out accuracy {:.2}% ({:.0} s)",
            cfg.epochs,
            100.0 * acc,
            started.elapsed().as_secs_f64()
        );
    })?;
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    crate::run::write_atomic(&args.out, &trained.classifier.to_bytes()?)?;
    let acc = trained.held_out_accuracy.last().copied().unwrap_or(0.0);
    eprintln!(
        "wrote {}: {:.2}% of the {HELD_OUT} held-out digits right after {} epochs",
        args.out.display(),
        100.0 * acc,
        cfg.epochs
    );
    Ok(())
}
