//! One generated sample from a weights file: noise, class one-hot, exact inference, pixels.
//!
//! `gan-train sample` and the firmware both call [`Generator::generate`], so for the same seed
//! they produce the same bytes.

use crate::encoding::{Encoded, Encoding};
use crate::error::{CoreError, check_len};
use crate::format::{FormatError, ModelKind, NoiseKind, WeightsFile};
use crate::kernels::{Exec, Serial};
use crate::model;
use crate::noise::{self, NoiseRng};
use crate::spec::{Layer, Spec};

/// How a conditional generator's class is chosen for each sample of a run (ignored when the
/// model is unconditional). The host's `sample` command and the firmware both use it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ClassChoice {
    /// Sample `i` gets class `i % classes` (0, 1, 2, … 9, 0, …).
    Cycle,
    /// Every sample gets this class.
    Fixed(u32),
}

impl ClassChoice {
    /// The class of sample `index` for a model with `classes` classes (0 for an unconditional
    /// model in [`ClassChoice::Cycle`]). A fixed class is returned as is, in range or not:
    /// [`Generator::generate`] refuses one that is out of range.
    pub fn class_of(self, index: usize, classes: usize) -> usize {
        match self {
            ClassChoice::Cycle if classes > 0 => index % classes,
            ClassChoice::Cycle => 0,
            ClassChoice::Fixed(c) => c as usize,
        }
    }
}

/// A generator ready to run from borrowed (possibly in-flash) parameters, f32 or int8.
#[derive(Clone, Copy, Debug)]
pub struct Generator<'a> {
    spec: Spec<'a>,
    weights: Encoded<'a>,
    latent: usize,
    classes: usize,
    noise: NoiseKind,
    sigmoid_out: bool,
}

impl<'a> Generator<'a> {
    /// A generator from a validated weights file. Fails with `WrongKind` for a discriminator.
    pub fn new(w: &'a WeightsFile<'a>) -> Result<Self, FormatError> {
        let h = &w.header;
        if h.kind != ModelKind::Generator {
            return Err(FormatError::WrongKind);
        }
        let spec = Spec::new(h.input, &h.layers).map_err(FormatError::BadArchitecture)?;
        Ok(Generator {
            spec,
            weights: w.weights(),
            latent: h.latent as usize,
            classes: h.classes as usize,
            noise: h.noise,
            // The output activation is the last layer that is not a view (a Reshape usually
            // follows it).
            sigmoid_out: spec.iter().filter(|l| !l.view).last().map(|l| l.layer)
                == Some(Layer::Sigmoid),
        })
    }

    /// The network.
    pub fn spec(&self) -> &Spec<'a> {
        &self.spec
    }
    /// Classes of a conditional generator (0 when unconditional).
    pub fn classes(&self) -> usize {
        self.classes
    }
    /// Elements of the input buffer `generate` needs.
    pub fn input_len(&self) -> usize {
        self.spec.input().len()
    }
    /// Elements of the output (and pixel) buffer.
    pub fn output_len(&self) -> usize {
        self.spec.output().len()
    }
    /// Elements of the inference scratch buffer.
    pub fn scratch_len(&self) -> usize {
        self.encoding().infer_scratch_len(&self.spec, 1)
    }

    /// How the weights are stored.
    pub fn encoding(&self) -> Encoding {
        self.weights.encoding()
    }

    /// Draws the next noise vector from `rng`, appends the one-hot `class` (ignored for an
    /// unconditional model), runs exact inference and converts the output to grey bytes.
    pub fn generate(
        &self, rng: &mut NoiseRng, class: usize, input: &mut [f32], output: &mut [f32],
        scratch: &mut [f32], pixels: &mut [u8],
    ) -> Result<(), CoreError> {
        self.generate_with(rng, class, input, output, scratch, pixels, &Serial)
    }

    /// [`Generator::generate`] with inference spread over the tasks of `exec`; the bytes are
    /// the same for every `exec` (see [`model::infer_with`]).
    #[allow(clippy::too_many_arguments)]
    pub fn generate_with(
        &self, rng: &mut NoiseRng, class: usize, input: &mut [f32], output: &mut [f32],
        scratch: &mut [f32], pixels: &mut [u8], exec: &dyn Exec,
    ) -> Result<(), CoreError> {
        check_len("input", input.len(), self.input_len())?;
        check_len("pixels", pixels.len(), self.output_len())?;
        if self.classes > 0 && class >= self.classes {
            return Err(CoreError::Unsupported { layer: 0 });
        }
        noise::generator_input(self.noise, rng, self.latent, class, input);
        if let Encoded::Q8 { data, tensors } = self.weights {
            // All-integer: the pixels come straight from the output table.
            check_len("output", output.len(), self.output_len())?;
            check_len("scratch", scratch.len(), self.scratch_len())?;
            output.fill(0.0);
            return crate::encoding::q8::run(&self.spec, data, tensors, input, pixels, scratch);
        }
        model::infer_encoded(&self.spec, &self.weights, input, output, scratch, 1, exec)?;
        let map = if self.sigmoid_out { crate::to_pixel_unit } else { crate::to_pixel };
        for (p, &v) in pixels.iter_mut().zip(output.iter()) {
            *p = map(v);
        }
        Ok(())
    }
}
