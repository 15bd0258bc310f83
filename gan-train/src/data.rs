//! MNIST-format data: reading IDX files, validating them, and serving seeded, shuffled batches.
//!
//! # The IDX format
//! A big-endian header `00 00 <type> <ndims>`, then `ndims` sizes as `u32`, then the payload in
//! row-major order. Only the unsigned-byte type (`0x08`) is read, which is what MNIST and its
//! look-alikes (Fashion-MNIST, KMNIST) use: images are 3-D, magic `0x00000803` (2051),
//! `N × H × W`; labels are 1-D, magic `0x00000801` (2049), `N`. Files may be gzipped; they are
//! recognised by the gzip magic bytes, not by their name.
//!
//! Everything read from a file is validated (magic, dimensions, exact payload length, label
//! range, image/label counts) and reported as a [`DataError`]; nothing here panics on bad input.
//!
//! # Batches
//! [`Batcher`] shuffles the sample order once per epoch with a permutation that is a pure
//! function of `(seed, epoch)` ([`epoch_permutation`]), so a run resumed from a checkpoint at
//! the start of epoch `e` sees exactly the batches the uninterrupted run would have seen.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use gan_core::noise::{self, NoiseRng};
use rand_core::Rng;

/// Magic number of an unsigned-byte, 3-D IDX file (images).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an unsigned-byte, 1-D IDX file (labels).
pub const LABELS_MAGIC: u32 = 0x0000_0801;
/// Labels must be below this (MNIST-like data sets have ten classes).
pub const MAX_CLASSES: usize = 10;
/// Largest decompressed size accepted from a gzipped file (1 GiB), a guard against
/// decompression bombs. The full 60,000-image MNIST training set is 47 MB.
pub const MAX_DECOMPRESSED: u64 = 1 << 30;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// The IDX type byte for unsigned bytes.
const IDX_U8: u8 = 0x08;

/// Everything that can be wrong with a data file or a data set.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// A file or folder could not be read.
    #[error("cannot read {}: {err}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the operating system said.
        err: io::Error,
    },
    /// A parse error inside a named file.
    #[error("{}: {err}", path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        err: Box<DataError>,
    },
    /// The bytes start like gzip but do not decompress.
    #[error("corrupt gzip data: {0}")]
    Gzip(io::Error),
    /// The decompressed data would be larger than [`MAX_DECOMPRESSED`].
    #[error("decompressed data is larger than the {limit}-byte limit")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// Fewer bytes than the header needs.
    #[error("IDX header truncated: it needs {needed} bytes, the data has {found}")]
    TruncatedHeader {
        /// Bytes the header needs (4, or 4 + 4 × number of dimensions).
        needed: usize,
        /// Bytes present.
        found: usize,
    },
    /// Not the expected kind of IDX file (or not an IDX file at all).
    #[error(
        "bad IDX magic number {found:#010x} ({found}), expected {expected:#010x} ({expected}); \
         2051 = u8 images (3-D), 2049 = u8 labels (1-D)"
    )]
    BadMagic {
        /// The magic number wanted here.
        expected: u32,
        /// The first four bytes of the data, big-endian.
        found: u32,
    },
    /// Dimensions that cannot be used: zero, too large, or not the required image size.
    #[error("bad IDX dimensions {found:?}: {reason}")]
    BadDims {
        /// The dimensions found.
        found: Vec<u64>,
        /// Why they were rejected.
        reason: &'static str,
    },
    /// The payload is shorter than the dimensions promise.
    #[error(
        "IDX payload truncated: the header promises {expected_bytes} bytes, found {found_bytes}"
    )]
    Truncated {
        /// Product of the dimensions.
        expected_bytes: u64,
        /// Payload bytes present.
        found_bytes: u64,
    },
    /// The payload is longer than the dimensions promise.
    #[error(
        "IDX payload has trailing bytes: the header promises {expected_bytes} bytes, found {found_bytes}"
    )]
    TrailingBytes {
        /// Product of the dimensions.
        expected_bytes: u64,
        /// Payload bytes present.
        found_bytes: u64,
    },
    /// The image and label files disagree on the number of samples.
    #[error("{images} images but {labels} labels")]
    CountMismatch {
        /// Number of images.
        images: usize,
        /// Number of labels.
        labels: usize,
    },
    /// A label is not below [`MAX_CLASSES`].
    #[error("label {label} of sample {index} is out of range (labels must be below {limit})")]
    LabelOutOfRange {
        /// Sample index.
        index: usize,
        /// The label.
        label: u8,
        /// The exclusive upper bound.
        limit: usize,
    },
    /// A folder holds no image file under any of the known names.
    #[error("no IDX image file in {}: looked for {}", dir.display(), tried.join(", "))]
    NotFound {
        /// The folder searched.
        dir: PathBuf,
        /// The names tried, in order.
        tried: Vec<&'static str>,
    },
    /// The image buffer does not hold `n × h × w` bytes.
    #[error("image buffer has {found} bytes, expected {expected} (n × h × w)")]
    BufferSize {
        /// `n × h × w`.
        expected: usize,
        /// Actual length.
        found: usize,
    },
    /// A batch size of zero, or larger than the data set.
    #[error("batch size {batch} does not fit a data set of {n} samples")]
    BadBatch {
        /// Requested batch size.
        batch: usize,
        /// Samples in the data set.
        n: usize,
    },
}

impl DataError {
    /// The error without the file context added by [`Dataset::load_files`].
    pub fn root(&self) -> &DataError {
        match self {
            DataError::InFile { err, .. } => err.root(),
            other => other,
        }
    }

    fn in_file(self, path: &Path) -> DataError {
        DataError::InFile { path: path.to_path_buf(), err: Box::new(self) }
    }
}

/// One parsed IDX file of unsigned bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Idx {
    /// The magic number: `0x0000_08nn` with `nn` the number of dimensions.
    pub magic: u32,
    /// The dimensions, outermost first (all non-zero).
    pub dims: Vec<usize>,
    /// The payload, row-major; exactly the product of `dims` bytes.
    pub data: Vec<u8>,
}

impl Idx {
    /// Checks that this is an image file (magic 2051, `N × H × W`) and returns
    /// `(pixels, n, h, w)`.
    pub fn into_images(self) -> Result<(Vec<u8>, usize, usize, usize), DataError> {
        self.expect_magic(IMAGES_MAGIC)?;
        // The low magic byte is the number of dimensions, so there are exactly three.
        let [n, h, w] = self.dims[..] else {
            return Err(DataError::BadMagic { expected: IMAGES_MAGIC, found: self.magic });
        };
        Ok((self.data, n, h, w))
    }

    /// Checks that this is a label file (magic 2049, `N`) and returns the labels.
    pub fn into_labels(self) -> Result<Vec<u8>, DataError> {
        self.expect_magic(LABELS_MAGIC)?;
        Ok(self.data)
    }

    fn expect_magic(&self, expected: u32) -> Result<(), DataError> {
        if self.magic == expected {
            Ok(())
        } else {
            Err(DataError::BadMagic { expected, found: self.magic })
        }
    }
}

/// Parses an IDX file of unsigned bytes held in memory, gunzipping it first when it starts with
/// the gzip magic `1f 8b`. The payload must be exactly as long as the dimensions say.
pub fn read_idx_bytes(bytes: &[u8]) -> Result<Idx, DataError> {
    if bytes.starts_with(&GZIP_MAGIC) {
        let raw = gunzip(bytes)?;
        let (magic, dims, header_len) = parse_header(&raw)?;
        let mut data = raw;
        data.drain(..header_len);
        Ok(Idx { magic, dims, data })
    } else {
        let (magic, dims, header_len) = parse_header(bytes)?;
        Ok(Idx { magic, dims, data: bytes[header_len..].to_vec() })
    }
}

/// Decompresses gzip data (all members), refusing more than [`MAX_DECOMPRESSED`] bytes.
fn gunzip(bytes: &[u8]) -> Result<Vec<u8>, DataError> {
    let decoder = flate2::read::MultiGzDecoder::new(bytes);
    let mut out = Vec::new();
    decoder.take(MAX_DECOMPRESSED + 1).read_to_end(&mut out).map_err(DataError::Gzip)?;
    if out.len() as u64 > MAX_DECOMPRESSED {
        return Err(DataError::TooLarge { limit: MAX_DECOMPRESSED });
    }
    Ok(out)
}

/// Validates the header and the payload length of raw IDX bytes; returns
/// `(magic, dims, header length)`.
fn parse_header(bytes: &[u8]) -> Result<(u32, Vec<usize>, usize), DataError> {
    let Some(first) = bytes.first_chunk::<4>() else {
        return Err(DataError::TruncatedHeader { needed: 4, found: bytes.len() });
    };
    let magic = u32::from_be_bytes(*first);
    let ndims = first[3] as usize;
    if first[0] != 0 || first[1] != 0 || first[2] != IDX_U8 {
        // Name the u8 magic with the same number of dimensions as the one wanted.
        return Err(DataError::BadMagic {
            expected: u32::from_be_bytes([0, 0, IDX_U8, first[3]]),
            found: magic,
        });
    }
    if ndims == 0 {
        return Err(DataError::BadDims {
            found: Vec::new(),
            reason: "an IDX file needs at least one dimension",
        });
    }
    let header_len = 4 + 4 * ndims;
    if bytes.len() < header_len {
        return Err(DataError::TruncatedHeader { needed: header_len, found: bytes.len() });
    }
    let raw_dims: Vec<u64> = bytes[4..header_len]
        .chunks_exact(4)
        .map(|c| u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
        .collect();
    if raw_dims.contains(&0) {
        return Err(DataError::BadDims { found: raw_dims, reason: "a dimension is zero" });
    }
    let Some(expected_bytes) = raw_dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&p| p <= MAX_DECOMPRESSED)
    else {
        return Err(DataError::BadDims {
            found: raw_dims,
            reason: "the payload they describe is larger than 1 GiB",
        });
    };
    let found_bytes = (bytes.len() - header_len) as u64;
    if found_bytes < expected_bytes {
        return Err(DataError::Truncated { expected_bytes, found_bytes });
    }
    if found_bytes > expected_bytes {
        return Err(DataError::TrailingBytes { expected_bytes, found_bytes });
    }
    // Each dimension is at most 2^30 here, so it fits usize.
    let dims = raw_dims.iter().map(|&d| d as usize).collect();
    Ok((magic, dims, header_len))
}

/// Reads a whole file, with the path in the error.
fn read_file(path: &Path) -> Result<Vec<u8>, DataError> {
    fs::read(path).map_err(|err| DataError::Io { path: path.to_path_buf(), err })
}

/// File names looked for by [`Dataset::load_dir`], in order: for each family, the image names
/// and the label names that go with them.
const NAME_FAMILIES: &[(&[&str], &[&str])] = &[
    // The names of the bundled data set.
    (
        &["images-idx3-ubyte.gz", "images-idx3-ubyte"],
        &["labels-idx1-ubyte.gz", "labels-idx1-ubyte"],
    ),
    // The names of the published MNIST training files (and a common dotted variant).
    (
        &[
            "train-images-idx3-ubyte.gz",
            "train-images-idx3-ubyte",
            "train-images.idx3-ubyte.gz",
            "train-images.idx3-ubyte",
        ],
        &[
            "train-labels-idx1-ubyte.gz",
            "train-labels-idx1-ubyte",
            "train-labels.idx1-ubyte.gz",
            "train-labels.idx1-ubyte",
        ],
    ),
];

/// A set of grey-level images, with optional class labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dataset {
    /// Pixels, `N × H × W`, row-major, 0 = background.
    pub images: Vec<u8>,
    /// One label per image, each below [`MAX_CLASSES`], when the data set has labels.
    pub labels: Option<Vec<u8>>,
    /// Number of images (`N`).
    pub n: usize,
    /// Image height (`H`).
    pub h: usize,
    /// Image width (`W`).
    pub w: usize,
    /// Number of classes, the largest label + 1; 0 when there are no labels.
    pub classes: usize,
}

impl Dataset {
    /// Builds a data set from parts, checking that the sizes agree and the labels are in range.
    pub fn new(
        images: Vec<u8>, labels: Option<Vec<u8>>, n: usize, h: usize, w: usize,
    ) -> Result<Dataset, DataError> {
        if n == 0 || h == 0 || w == 0 {
            return Err(DataError::BadDims {
                found: vec![n as u64, h as u64, w as u64],
                reason: "a dimension is zero",
            });
        }
        let expected =
            n.checked_mul(h).and_then(|v| v.checked_mul(w)).ok_or(DataError::BadDims {
                found: vec![n as u64, h as u64, w as u64],
                reason: "the image buffer they describe does not fit in memory",
            })?;
        if images.len() != expected {
            return Err(DataError::BufferSize { expected, found: images.len() });
        }
        let mut classes = 0;
        if let Some(labels) = &labels {
            if labels.len() != n {
                return Err(DataError::CountMismatch { images: n, labels: labels.len() });
            }
            for (index, &label) in labels.iter().enumerate() {
                if label as usize >= MAX_CLASSES {
                    return Err(DataError::LabelOutOfRange { index, label, limit: MAX_CLASSES });
                }
                classes = classes.max(label as usize + 1);
            }
        }
        Ok(Dataset { images, labels, n, h, w, classes })
    }

    /// Loads an image IDX file and, optionally, its label IDX file (each raw or gzipped).
    pub fn load_files(images: &Path, labels: Option<&Path>) -> Result<Dataset, DataError> {
        let (pixels, n, h, w) = read_idx_bytes(&read_file(images)?)
            .and_then(Idx::into_images)
            .map_err(|e| e.in_file(images))?;
        let labels = match labels {
            Some(path) => Some(
                read_idx_bytes(&read_file(path)?)
                    .and_then(Idx::into_labels)
                    .map_err(|e| e.in_file(path))?,
            ),
            None => None,
        };
        Dataset::new(pixels, labels, n, h, w)
    }

    /// Loads the data set in `dir`. It looks, in order, for the bundled names
    /// `images-idx3-ubyte[.gz]` / `labels-idx1-ubyte[.gz]`, then for the published MNIST
    /// training names `train-images-idx3-ubyte[.gz]` / `train-labels-idx1-ubyte[.gz]` (also
    /// `train-images.idx3-ubyte`). The first image file found is used with the label file of
    /// the same naming family, if there is one; without it the data set has no labels.
    pub fn load_dir(dir: &Path) -> Result<Dataset, DataError> {
        fs::metadata(dir).map_err(|err| DataError::Io { path: dir.to_path_buf(), err })?;
        let first_existing =
            |names: &[&str]| names.iter().map(|name| dir.join(name)).find(|path| path.is_file());
        for (image_names, label_names) in NAME_FAMILIES {
            if let Some(images) = first_existing(image_names) {
                let labels = first_existing(label_names);
                return Dataset::load_files(&images, labels.as_deref());
            }
        }
        Err(DataError::NotFound {
            dir: dir.to_path_buf(),
            tried: NAME_FAMILIES.iter().flat_map(|(images, _)| images.iter().copied()).collect(),
        })
    }

    /// Pixels per image (`H × W`).
    pub fn pixels_per_image(&self) -> usize {
        self.h * self.w
    }

    /// Image `i` (`H × W` bytes), or `None` when out of range.
    pub fn image(&self, i: usize) -> Option<&[u8]> {
        let size = self.pixels_per_image();
        self.images.get(i.checked_mul(size)?..(i + 1).checked_mul(size)?)
    }

    /// Label of image `i`, when the data set has labels and `i` is in range.
    pub fn label(&self, i: usize) -> Option<u8> {
        self.labels.as_ref()?.get(i).copied()
    }

    /// How many images each class has (empty without labels).
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes];
        for &label in self.labels.iter().flatten() {
            counts[label as usize] += 1;
        }
        counts
    }

    /// Checks that the images are `h × w` (the models are built for one image size).
    pub fn require_dims(&self, h: usize, w: usize) -> Result<(), DataError> {
        if (self.h, self.w) == (h, w) {
            Ok(())
        } else {
            Err(DataError::BadDims {
                found: vec![self.n as u64, self.h as u64, self.w as u64],
                reason: if (h, w) == (28, 28) {
                    "images must be 28 × 28"
                } else {
                    "images do not have the size the model needs"
                },
            })
        }
    }

    /// Keeps only the first `n` images (no change when `n` is 0 or not smaller than `self.n`).
    pub fn truncate(&mut self, n: usize) {
        if n == 0 || n >= self.n {
            return;
        }
        self.images.truncate(n * self.pixels_per_image());
        if let Some(labels) = &mut self.labels {
            labels.truncate(n);
        }
        self.n = n;
    }
}

/// The bundled data set folder, `data/mnist-10k` in the workspace: found next to this crate's
/// sources when they are still where it was built, otherwise relative to the working directory.
pub fn default_data_dir() -> PathBuf {
    let beside_sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/mnist-10k");
    if beside_sources.is_dir() { beside_sources } else { PathBuf::from("data").join("mnist-10k") }
}

/// How grey levels `0..=255` map to network inputs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Scale {
    /// `p / 127.5 - 1`, onto `[-1, 1]`, to match a Tanh generator output.
    #[default]
    Tanh,
    /// `p / 255`, onto `[0, 1]`, to match a Sigmoid generator output.
    Sigmoid,
}

impl Scale {
    /// The network value of grey level `p`.
    #[inline]
    pub fn apply(self, p: u8) -> f32 {
        match self {
            Scale::Tanh => f32::from(p) / 127.5 - 1.0,
            Scale::Sigmoid => f32::from(p) / 255.0,
        }
    }
}

/// The generator seed for one epoch's shuffle: `seed` mixed with a SplitMix64 hash of the epoch.
/// It never equals `seed` itself, so the shuffle does not replay a noise stream seeded with
/// `seed` directly.
pub fn epoch_seed(seed: u64, epoch: u32) -> u64 {
    // SplitMix64 finaliser over (epoch + 1); a bijection, and non-zero for every epoch.
    let mut z = (u64::from(epoch) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    seed ^ z
}

/// A uniform integer in `0..bound` (`bound > 0`) without modulo bias (Lemire's multiply and
/// reject), using only `next_u32`, so it is the same on every platform.
fn below<R: Rng + ?Sized>(r: &mut R, bound: u32) -> u32 {
    let mut m = u64::from(r.next_u32()) * u64::from(bound);
    if (m as u32) < bound {
        let threshold = bound.wrapping_neg() % bound;
        while (m as u32) < threshold {
            m = u64::from(r.next_u32()) * u64::from(bound);
        }
    }
    (m >> 32) as u32
}

/// The sample order of one epoch: a Fisher–Yates shuffle of `0..n` driven by
/// `noise::rng(epoch_seed(seed, epoch))`. A pure function of `(seed, epoch, n)`.
pub fn epoch_permutation(seed: u64, epoch: u32, n: u32) -> Vec<u32> {
    let mut rng: NoiseRng = noise::rng(epoch_seed(seed, epoch));
    let mut perm: Vec<u32> = (0..n).collect();
    for i in (1..n).rev() {
        let j = below(&mut rng, i + 1);
        perm.swap(i as usize, j as usize);
    }
    perm
}

/// Serves shuffled mini-batches of a [`Dataset`], scaled for the network.
///
/// An epoch is `n / batch` full batches in the order of [`Batcher::permutation`]; the last
/// `n % batch` samples of each epoch's order are dropped, so every batch has the same size
/// (they are different samples each epoch, so none is left out for good).
#[derive(Clone, Debug)]
pub struct Batcher {
    data: Dataset,
    batch: usize,
    seed: u64,
    scale: Scale,
    /// `scale` applied to every grey level.
    lut: [f32; 256],
}

impl Batcher {
    /// A batcher over `data` with `batch` samples per batch, shuffled from `seed`.
    /// Fails when `batch` is 0 or larger than the data set, or the data set has more than
    /// `u32::MAX` samples.
    pub fn new(data: Dataset, batch: usize, seed: u64, scale: Scale) -> Result<Batcher, DataError> {
        if batch == 0 || batch > data.n || u32::try_from(data.n).is_err() {
            return Err(DataError::BadBatch { batch, n: data.n });
        }
        let lut = std::array::from_fn(|p| scale.apply(p as u8));
        Ok(Batcher { data, batch, seed, scale, lut })
    }

    /// The data set.
    pub fn dataset(&self) -> &Dataset {
        &self.data
    }

    /// Gives the data set back.
    pub fn into_dataset(self) -> Dataset {
        self.data
    }

    /// Samples per batch.
    pub fn batch_size(&self) -> usize {
        self.batch
    }

    /// The shuffle seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The pixel scaling.
    pub fn scale(&self) -> Scale {
        self.scale
    }

    /// Full batches per epoch (`n / batch`; the partial remainder is dropped).
    pub fn batches_per_epoch(&self) -> usize {
        self.data.n / self.batch
    }

    /// The `start` argument of [`Batcher::fill_batch`] for each batch of an epoch.
    pub fn batch_starts(&self) -> impl Iterator<Item = usize> + use<> {
        let batch = self.batch;
        (0..self.batches_per_epoch()).map(move |b| b * batch)
    }

    /// The sample order of `epoch` (see [`epoch_permutation`]).
    pub fn permutation(&self, epoch: u32) -> Vec<u32> {
        // `new` checked that n fits u32.
        epoch_permutation(self.seed, epoch, self.data.n as u32)
    }

    /// Writes the batch made of samples `epoch_perm[start..start + batch]`:
    /// `out_pixels` (`batch × H × W`) gets the scaled pixels, `out_labels` (`batch`) the labels
    /// (0 when the data set has none); pass an empty `out_labels` to skip labels.
    ///
    /// # Panics
    /// When the buffers do not have those sizes, `start + batch` is past the end of
    /// `epoch_perm`, or `epoch_perm` holds an index out of range: these are caller bugs, not
    /// data errors.
    pub fn fill_batch(
        &self, epoch_perm: &[u32], start: usize, out_pixels: &mut [f32], out_labels: &mut [u8],
    ) {
        let size = self.data.pixels_per_image();
        assert_eq!(out_pixels.len(), self.batch * size, "pixel buffer size");
        assert!(out_labels.is_empty() || out_labels.len() == self.batch, "label buffer size");
        let indices = &epoch_perm[start..start + self.batch];
        for (out, &i) in out_pixels.chunks_exact_mut(size).zip(indices) {
            let i = i as usize;
            let src = &self.data.images[i * size..(i + 1) * size];
            for (o, &p) in out.iter_mut().zip(src) {
                *o = self.lut[p as usize];
            }
        }
        if !out_labels.is_empty() {
            match &self.data.labels {
                Some(labels) => {
                    for (o, &i) in out_labels.iter_mut().zip(indices) {
                        *o = labels[i as usize];
                    }
                }
                None => out_labels.fill(0),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Raw IDX bytes: `magic`, `dims`, then `payload`.
    fn idx(magic: u32, dims: &[u32], payload: &[u8]) -> Vec<u8> {
        let mut v = magic.to_be_bytes().to_vec();
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(payload);
        v
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    /// Two 2×3 images and their labels.
    fn tiny() -> (Vec<u8>, Vec<u8>) {
        let pixels: Vec<u8> = (0..12).map(|v| v * 20).collect();
        (idx(IMAGES_MAGIC, &[2, 2, 3], &pixels), idx(LABELS_MAGIC, &[2], &[3, 7]))
    }

    #[test]
    fn bundled_data_loads() {
        let data = Dataset::load_dir(&default_data_dir()).unwrap();
        assert_eq!((data.n, data.h, data.w), (10_000, 28, 28));
        assert_eq!(data.images.len(), 10_000 * 28 * 28);
        assert_eq!(data.classes, 10);
        let counts = data.class_counts();
        assert_eq!(counts.len(), 10);
        assert!(counts.iter().all(|&c| c > 500), "{counts:?}");
        assert_eq!(counts.iter().sum::<usize>(), 10_000);
        data.require_dims(28, 28).unwrap();
        assert!(matches!(data.require_dims(32, 32), Err(DataError::BadDims { .. })));
        // Real digits: dark background, some bright strokes.
        let first = data.image(0).unwrap();
        assert_eq!(first[0], 0);
        assert!(first.iter().any(|&p| p > 200));
        assert!(data.image(10_000).is_none());
    }

    #[test]
    fn raw_and_gzipped_parse_the_same() {
        let (images, labels) = tiny();
        for bytes in [images.clone(), gzip(&images)] {
            let parsed = read_idx_bytes(&bytes).unwrap();
            assert_eq!(parsed.magic, IMAGES_MAGIC);
            assert_eq!(parsed.dims, vec![2, 2, 3]);
            let (px, n, h, w) = parsed.into_images().unwrap();
            assert_eq!((n, h, w), (2, 2, 3));
            assert_eq!(px, (0..12).map(|v| v * 20).collect::<Vec<u8>>());
        }
        assert_eq!(read_idx_bytes(&gzip(&labels)).unwrap().into_labels().unwrap(), vec![3, 7]);
    }

    #[test]
    fn truncated_header() {
        let (images, _) = tiny();
        assert!(matches!(
            read_idx_bytes(&images[..3]),
            Err(DataError::TruncatedHeader { needed: 4, found: 3 })
        ));
        // Magic fine, dimensions cut short.
        assert!(matches!(
            read_idx_bytes(&images[..10]),
            Err(DataError::TruncatedHeader { needed: 16, found: 10 })
        ));
        assert!(matches!(read_idx_bytes(&[]), Err(DataError::TruncatedHeader { .. })));
    }

    #[test]
    fn truncated_payload_and_trailing_bytes() {
        let (images, _) = tiny();
        let err = read_idx_bytes(&images[..images.len() - 1]).unwrap_err();
        assert!(matches!(err, DataError::Truncated { expected_bytes: 12, found_bytes: 11 }));
        assert!(err.to_string().contains("truncated"), "{err}");
        let mut long = images.clone();
        long.push(0);
        assert!(matches!(
            read_idx_bytes(&gzip(&long)),
            Err(DataError::TrailingBytes { expected_bytes: 12, found_bytes: 13 })
        ));
    }

    #[test]
    fn corrupt_gzip() {
        let (images, _) = tiny();
        let gz = gzip(&images);
        assert!(matches!(read_idx_bytes(&gz[..gz.len() / 2]), Err(DataError::Gzip(_))));
    }

    #[test]
    fn wrong_magic() {
        let (images, labels) = tiny();
        // A label file where images are expected and the other way round.
        let err = read_idx_bytes(&labels).unwrap().into_images().unwrap_err();
        assert!(matches!(err, DataError::BadMagic { expected: 2051, found: 2049 }));
        assert!(err.to_string().contains("2051"), "{err}");
        assert!(matches!(
            read_idx_bytes(&images).unwrap().into_labels(),
            Err(DataError::BadMagic { expected: 2049, found: 2051 })
        ));
        // Not an IDX file of bytes at all (a float IDX type, and text).
        assert!(matches!(
            read_idx_bytes(&idx(0x0000_0D01, &[1], &[0; 4])),
            Err(DataError::BadMagic { expected: 0x0801, .. })
        ));
        assert!(matches!(read_idx_bytes(b"hello world"), Err(DataError::BadMagic { .. })));
    }

    #[test]
    fn zero_dims() {
        assert!(matches!(
            read_idx_bytes(&idx(IMAGES_MAGIC, &[2, 0, 3], &[])),
            Err(DataError::BadDims { ref found, .. }) if found == &[2, 0, 3]
        ));
        assert!(matches!(
            read_idx_bytes(&idx(0x0000_0800, &[], &[])),
            Err(DataError::BadDims { .. })
        ));
        // Dimensions whose product overflows, with no payload: rejected before any allocation.
        assert!(matches!(
            read_idx_bytes(&idx(IMAGES_MAGIC, &[u32::MAX, u32::MAX, u32::MAX], &[])),
            Err(DataError::BadDims { .. })
        ));
    }

    #[test]
    fn files_and_label_checks() {
        let dir = tempfile::tempdir().unwrap();
        let (images, labels) = tiny();
        let img_path = dir.path().join("train-images-idx3-ubyte");
        let lbl_path = dir.path().join("train-labels-idx1-ubyte.gz");
        fs::write(&img_path, &images).unwrap();
        fs::write(&lbl_path, gzip(&labels)).unwrap();
        let data = Dataset::load_dir(dir.path()).unwrap();
        assert_eq!((data.n, data.h, data.w, data.classes), (2, 2, 3, 8));
        assert_eq!(data.labels, Some(vec![3, 7]));
        assert_eq!(data.label(1), Some(7));
        assert_eq!(data.image(1).unwrap(), &images[16 + 6..]);

        // Labels are optional.
        let unlabelled = Dataset::load_files(&img_path, None).unwrap();
        assert_eq!((unlabelled.labels, unlabelled.classes), (None, 0));

        // Count mismatch.
        fs::write(&lbl_path, idx(LABELS_MAGIC, &[3], &[1, 2, 3])).unwrap();
        assert!(matches!(
            Dataset::load_dir(dir.path()),
            Err(DataError::CountMismatch { images: 2, labels: 3 })
        ));
        // Label out of range.
        fs::write(&lbl_path, idx(LABELS_MAGIC, &[2], &[1, 10])).unwrap();
        assert!(matches!(
            Dataset::load_dir(dir.path()),
            Err(DataError::LabelOutOfRange { index: 1, label: 10, .. })
        ));
        // A parse error names its file.
        fs::write(&lbl_path, &images).unwrap();
        let err = Dataset::load_dir(dir.path()).unwrap_err();
        assert!(matches!(err.root(), DataError::BadMagic { .. }));
        assert!(err.to_string().contains("train-labels-idx1-ubyte.gz"), "{err}");

        // Bundled names take precedence over the published ones.
        let other = idx(IMAGES_MAGIC, &[1, 1, 1], &[9]);
        fs::write(dir.path().join("images-idx3-ubyte.gz"), gzip(&other)).unwrap();
        let data = Dataset::load_dir(dir.path()).unwrap();
        assert_eq!((data.n, data.labels), (1, None));

        // Dotted variant of the published name.
        let dotted = tempfile::tempdir().unwrap();
        fs::write(dotted.path().join("train-images.idx3-ubyte"), &images).unwrap();
        assert_eq!(Dataset::load_dir(dotted.path()).unwrap().n, 2);

        // Nothing there, and no folder at all.
        let empty = tempfile::tempdir().unwrap();
        let err = Dataset::load_dir(empty.path()).unwrap_err();
        assert!(matches!(err, DataError::NotFound { .. }));
        assert!(err.to_string().contains("images-idx3-ubyte.gz"), "{err}");
        assert!(matches!(
            Dataset::load_dir(&empty.path().join("missing")),
            Err(DataError::Io { .. })
        ));
    }

    #[test]
    fn dataset_new_checks_sizes() {
        assert!(matches!(
            Dataset::new(vec![0; 5], None, 1, 2, 3),
            Err(DataError::BufferSize { expected: 6, found: 5 })
        ));
        assert!(matches!(Dataset::new(vec![], None, 0, 2, 3), Err(DataError::BadDims { .. })));
        let mut d = Dataset::new(vec![1, 2, 3, 4], Some(vec![0, 1, 1, 0]), 4, 1, 1).unwrap();
        d.truncate(3);
        assert_eq!((d.n, d.images.len(), d.labels.as_ref().unwrap().len()), (3, 3, 3));
    }

    #[test]
    fn shuffle_is_deterministic_per_seed_and_epoch() {
        let a = epoch_permutation(7, 0, 1000);
        assert_eq!(a, epoch_permutation(7, 0, 1000));
        assert_ne!(a, epoch_permutation(7, 1, 1000));
        assert_ne!(a, epoch_permutation(8, 0, 1000));
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1000).collect::<Vec<u32>>());
        // Actually shuffled, not close to the identity.
        let fixed = a.iter().enumerate().filter(|&(i, &v)| i as u32 == v).count();
        assert!(fixed < 10, "{fixed} fixed points");
        assert!(epoch_permutation(1, 0, 0).is_empty());
        assert_eq!(epoch_permutation(1, 0, 1), vec![0]);
        // Pinned: checkpoints resume on these exact orders.
        assert_eq!(epoch_permutation(42, 3, 8), PINNED_PERM_42_3);
    }

    const PINNED_PERM_42_3: [u32; 8] = [5, 6, 7, 4, 0, 2, 1, 3];

    #[test]
    fn unbiased_below_covers_range() {
        let mut r = noise::rng(5);
        let mut seen = [0u32; 7];
        for _ in 0..7000 {
            seen[below(&mut r, 7) as usize] += 1;
        }
        assert!(seen.iter().all(|&c| (850..1150).contains(&c)), "{seen:?}");
    }

    #[test]
    fn scaling_is_exact() {
        assert_eq!(Scale::Tanh.apply(0), -1.0);
        assert_eq!(Scale::Tanh.apply(255), 1.0);
        assert_eq!(Scale::Tanh.apply(128), 128.0 / 127.5 - 1.0);
        assert!((Scale::Tanh.apply(128) - 1.0 / 255.0).abs() < 1e-7);
        assert_eq!(Scale::Sigmoid.apply(0), 0.0);
        assert_eq!(Scale::Sigmoid.apply(255), 1.0);
        assert!((Scale::Sigmoid.apply(128) - 128.0 / 255.0).abs() < 1e-7);
        // Every grey level survives the trip to the network range and back.
        for p in 0..=255u8 {
            assert_eq!(gan_core::to_pixel(Scale::Tanh.apply(p)), p);
            assert_eq!(gan_core::to_pixel_unit(Scale::Sigmoid.apply(p)), p);
        }
    }

    #[test]
    fn batches_follow_the_permutation() {
        // Five 1×2 images whose pixels name them; labels 0..5 mod 3.
        let images: Vec<u8> = (0..5u8).flat_map(|i| [i, 255 - i]).collect();
        let data = Dataset::new(images, Some(vec![0, 1, 2, 0, 1]), 5, 1, 2).unwrap();
        assert!(matches!(
            Batcher::new(data.clone(), 6, 1, Scale::Tanh),
            Err(DataError::BadBatch { batch: 6, n: 5 })
        ));
        assert!(Batcher::new(data.clone(), 0, 1, Scale::Tanh).is_err());
        let b = Batcher::new(data, 2, 99, Scale::Sigmoid).unwrap();
        assert_eq!(b.batches_per_epoch(), 2);
        assert_eq!(b.batch_starts().collect::<Vec<_>>(), vec![0, 2]);
        let perm = b.permutation(4);
        assert_eq!(perm, epoch_permutation(99, 4, 5));
        let mut px = [0.0f32; 4];
        let mut lb = [0u8; 2];
        b.fill_batch(&perm, 2, &mut px, &mut lb);
        for k in 0..2 {
            let i = perm[2 + k] as u8;
            assert_eq!(px[2 * k], Scale::Sigmoid.apply(i));
            assert_eq!(px[2 * k + 1], Scale::Sigmoid.apply(255 - i));
            assert_eq!(lb[k], i % 3);
        }
        // Labels may be skipped.
        b.fill_batch(&perm, 0, &mut px, &mut []);
    }
}
