//! One generated sample from a weights file: noise, class one-hot, exact inference, pixels.
//!
//! `gan-train sample` and the firmware both call [`Generator::generate`], so for the same seed
//! they produce the same bytes.

use crate::error::{CoreError, check_len};
use crate::format::{FormatError, ModelKind, NoiseKind, TensorEntry, WeightsFile};
use crate::kernels::{Exec, Serial};
use crate::model;
use crate::noise::{self, NoiseRng};
use crate::spec::{Layer, Spec};

/// Where a generator's parameters are.
#[derive(Clone, Copy, Debug)]
enum Weights<'a> {
    /// The flat f32 parameter buffer.
    F32(&'a [f32]),
    /// An int8 data section and its tensor table (see [`crate::quant`]).
    I8 {
        data: &'a [u8],
        tensors: &'a [TensorEntry],
    },
}

/// A generator ready to run from borrowed (possibly in-flash) parameters, f32 or int8.
#[derive(Clone, Copy, Debug)]
pub struct Generator<'a> {
    spec: Spec<'a>,
    weights: Weights<'a>,
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
            weights: match (w.params(), w.i8_data()) {
                (Some(p), _) => Weights::F32(p),
                (None, Some(data)) => Weights::I8 {
                    data,
                    tensors: &h.tensors,
                },
                (None, None) => return Err(FormatError::BadTensorTable),
            },
            latent: h.latent as usize,
            classes: h.classes as usize,
            noise: h.noise,
            // The output activation is the last layer that is not a view (a Reshape usually
            // follows it).
            sigmoid_out: matches!(
                h.layers.iter().rev().find(|l| !l.is_view()),
                Some(Layer::Sigmoid)
            ),
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
        match self.weights {
            Weights::F32(_) => self.spec.infer_scratch_len(1),
            Weights::I8 { .. } => {
                self.spec.infer_scratch_len(1) + crate::quant::extra_scratch_len(&self.spec)
            }
        }
    }

    /// Whether the weights are int8.
    pub fn is_i8(&self) -> bool {
        matches!(self.weights, Weights::I8 { .. })
    }

    /// Draws the next noise vector from `rng`, appends the one-hot `class` (ignored for an
    /// unconditional model), runs exact inference and converts the output to grey bytes.
    pub fn generate(
        &self,
        rng: &mut NoiseRng,
        class: usize,
        input: &mut [f32],
        output: &mut [f32],
        scratch: &mut [f32],
        pixels: &mut [u8],
    ) -> Result<(), CoreError> {
        self.generate_with(rng, class, input, output, scratch, pixels, &Serial)
    }

    /// [`Generator::generate`] with inference spread over the tasks of `exec`; the bytes are
    /// the same for every `exec` (see [`model::infer_with`]).
    #[allow(clippy::too_many_arguments)]
    pub fn generate_with(
        &self,
        rng: &mut NoiseRng,
        class: usize,
        input: &mut [f32],
        output: &mut [f32],
        scratch: &mut [f32],
        pixels: &mut [u8],
        exec: &dyn Exec,
    ) -> Result<(), CoreError> {
        check_len("input", input.len(), self.input_len())?;
        check_len("pixels", pixels.len(), self.output_len())?;
        if self.classes > 0 && class >= self.classes {
            return Err(CoreError::Unsupported { layer: 0 });
        }
        noise::generator_input(self.noise, rng, self.latent, class, input);
        match self.weights {
            Weights::F32(params) => {
                model::infer_with(&self.spec, params, input, output, scratch, 1, exec)?
            }
            // Integer sums are cheap and short; the int8 path runs on the calling thread.
            Weights::I8 { data, tensors } => {
                crate::quant::infer_i8(&self.spec, data, tensors, input, output, scratch, 1)?
            }
        }
        let map = if self.sigmoid_out {
            crate::to_pixel_unit
        } else {
            crate::to_pixel
        };
        for (p, &v) in pixels.iter_mut().zip(output.iter()) {
            *p = map(v);
        }
        Ok(())
    }
}
