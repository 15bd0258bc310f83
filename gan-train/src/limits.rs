//! The host's limits, in one place: what `gan-train` refuses up front with a message that names
//! the limit, instead of aborting on an allocation, overflowing a size or running for ever. They
//! are far above anything the presets need (the firmware has its own, much smaller ones, in
//! `gan-embedded/src/limits.rs`).

use anyhow::{Result, bail};
use gan_core::spec::Spec;

/// Samples one `sample` or `score` command draws (a million digits are 784 MB of pixels).
pub const MAX_SAMPLES: usize = 1_000_000;
/// Parameters of one network (256 MiB as f32).
pub const MAX_PARAMS: usize = 64 << 20;
/// Values of the widest activation of one sample (16 MiB as f32).
pub const MAX_FEATURES: usize = 4 << 20;
/// Noise size, hidden width or channel count in a configuration.
pub const MAX_WIDTH: u32 = 65_536;
/// Hidden layers of a configured MLP.
pub const MAX_HIDDEN_LAYERS: usize = 16;
/// Epochs of one run.
pub const MAX_EPOCHS: u32 = 100_000;
/// Samples per training batch.
pub const MAX_BATCH: usize = 65_536;
/// Images in the per-epoch sample grid (and samples in one quality score).
pub const MAX_GRID: usize = 4_096;

/// Refuses a sample count above [`MAX_SAMPLES`] (and 0).
pub fn check_samples(n: usize) -> Result<()> {
    if n == 0 {
        bail!("the number of samples must be at least 1");
    }
    if n > MAX_SAMPLES {
        bail!("{n} samples is more than the limit of {MAX_SAMPLES} per command");
    }
    Ok(())
}

/// Refuses a network whose parameters or widest activation exceed [`MAX_PARAMS`] or
/// [`MAX_FEATURES`] (`what` names it in the message, e.g. "the generator").
pub fn check_network(spec: &Spec<'_>, what: &str) -> Result<()> {
    if spec.param_len() > MAX_PARAMS {
        bail!(
            "{what} has {} parameters, more than this program's limit of {MAX_PARAMS}",
            spec.param_len()
        );
    }
    if spec.max_features() > MAX_FEATURES {
        bail!(
            "{what} has an activation of {} values per sample, more than this program's limit of \
             {MAX_FEATURES}",
            spec.max_features()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use gan_core::spec::{Layer, Shape};

    #[test]
    fn limits_name_themselves() {
        assert!(check_samples(MAX_SAMPLES).is_ok());
        let e = check_samples(MAX_SAMPLES + 1).unwrap_err().to_string();
        assert!(e.contains("1000000"), "{e}");
        assert!(check_samples(0).is_err());
        let wide = [Layer::Dense { out: 1 << 23 }];
        let spec = Spec::new(Shape::flat(1), &wide).unwrap();
        let e = check_network(&spec, "the generator").unwrap_err().to_string();
        assert!(e.contains("the generator") && e.contains("activation"), "{e}");
        let big = [Layer::Dense { out: 1 << 14 }];
        let spec = Spec::new(Shape::flat(1 << 13), &big).unwrap();
        let e = check_network(&spec, "the generator").unwrap_err().to_string();
        assert!(e.contains("parameters"), "{e}");
    }
}
