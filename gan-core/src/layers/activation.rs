//! Element-wise activations (`Relu`, `LeakyRelu`, `Tanh`, `Sigmoid` layers): forward, in-place
//! forward (inference) and backward.
//!
//! Every function works on slices of equal length (any shape). Transcendentals via `libm`; Tanh
//! through [`crate::kernels::vtanh`], which gives `libm::tanhf`'s bits but vectorises. The
//! network passes split the slices over threads, which cannot change a bit.

use core::fmt;

use crate::error::{CoreError, SpecError};
use crate::kernels::par;
use crate::layers::{Backward, Forward, Infer, Kind, Q8Role, Rules, Tangent};
use crate::spec::{LayerInfo, Shape};

/// Shape rule of `LeakyRelu`: the input shape; `alpha` finite, in `[0, 10⁶]`.
pub(crate) const fn leaky_rules(alpha: f32, inp: Shape, index: usize) -> Result<Rules, SpecError> {
    // Written so NaN fails too.
    if alpha >= 0.0 && alpha <= 1.0e6 {
        Ok(Rules::same(inp))
    } else {
        Err(SpecError::BadParameter { layer: index })
    }
}

/// An element-wise activation.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Activation {
    /// `max(x, 0)`.
    Relu,
    /// `x` for `x > 0`, else `alpha·x`.
    LeakyRelu(f32),
    /// `tanh(x)` (bit-identical to `libm::tanhf`).
    Tanh,
    /// `1 / (1 + e^-x)`.
    Sigmoid,
}

impl Activation {
    /// Smallest slice worth splitting over threads: Sigmoid (scalar `libm::expf`) costs tens of
    /// nanoseconds per element, so one 28×28 image is worth splitting; vectorised Tanh and the
    /// ReLU family cost a few instructions per element.
    pub fn par_min_elems(self) -> usize {
        match self {
            Activation::Relu | Activation::LeakyRelu(_) => par::PAR_MIN_ELEMS,
            Activation::Tanh => 4096,
            Activation::Sigmoid => 256,
        }
    }

    /// `f(x)` for one value.
    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::Relu => relu(x),
            Activation::LeakyRelu(a) => leaky_relu(x, a),
            Activation::Tanh => libm::tanhf(x),
            Activation::Sigmoid => sigmoid(x),
        }
    }

    /// `out = f(inp)`. Lengths must match (checked with a debug assertion; the shorter wins).
    pub fn forward(self, out: &mut [f32], inp: &[f32]) {
        debug_assert_eq!(out.len(), inp.len());
        // One loop per variant so the branch is outside and the loop vectorises.
        match self {
            Activation::Relu => out.iter_mut().zip(inp).for_each(|(o, &x)| *o = relu(x)),
            Activation::LeakyRelu(a) => {
                out.iter_mut().zip(inp).for_each(|(o, &x)| *o = leaky_relu(x, a));
            }
            Activation::Tanh => crate::kernels::vtanh::tanh_map(out, inp),
            Activation::Sigmoid => out.iter_mut().zip(inp).for_each(|(o, &x)| *o = sigmoid(x)),
        }
    }

    /// `x = f(x)` in place (inference).
    pub fn forward_inplace(self, x: &mut [f32]) {
        match self {
            Activation::Relu => x.iter_mut().for_each(|v| *v = relu(*v)),
            Activation::LeakyRelu(a) => x.iter_mut().for_each(|v| *v = leaky_relu(*v, a)),
            Activation::Tanh => crate::kernels::vtanh::tanh_inplace(x),
            Activation::Sigmoid => x.iter_mut().for_each(|v| *v = sigmoid(*v)),
        }
    }

    /// `dinp = dout ⊙ f'(·)`, overwriting `dinp`. `inp` and `out` are the forward input and
    /// output (ReLU family uses the input's sign, Tanh and Sigmoid use the output).
    pub fn backward(self, dinp: &mut [f32], dout: &[f32], inp: &[f32], out: &[f32]) {
        debug_assert!(
            dinp.len() == dout.len() && dout.len() == inp.len() && inp.len() == out.len()
        );
        match self {
            Activation::Relu => dinp
                .iter_mut()
                .zip(dout.iter().zip(inp))
                .for_each(|(d, (&g, &x))| *d = if x > 0.0 { g } else { 0.0 }),
            Activation::LeakyRelu(a) => dinp
                .iter_mut()
                .zip(dout.iter().zip(inp))
                .for_each(|(d, (&g, &x))| *d = if x > 0.0 { g } else { a * g }),
            Activation::Tanh => dinp
                .iter_mut()
                .zip(dout.iter().zip(out))
                .for_each(|(d, (&g, &y))| *d = g * (1.0 - y * y)),
            Activation::Sigmoid => dinp
                .iter_mut()
                .zip(dout.iter().zip(out))
                .for_each(|(d, (&g, &y))| *d = g * y * (1.0 - y)),
        }
    }
}

impl Kind for Activation {
    fn q8(&self) -> Q8Role {
        Q8Role::Act(*self)
    }
    fn name(&self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::LeakyRelu(_) => "leaky_relu",
            Activation::Tanh => "tanh",
            Activation::Sigmoid => "sigmoid",
        }
    }
    fn label(&self, _: &LayerInfo, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Activation::LeakyRelu(alpha) => write!(f, "leaky_relu({alpha})"),
            Activation::Relu | Activation::Tanh | Activation::Sigmoid => f.write_str(self.name()),
        }
    }
    fn forward(&self, a: Forward<'_>) -> Result<(), CoreError> {
        let inp = a.inp;
        par::for_each_chunk_min(a.exec, a.out, self.par_min_elems(), &|off, o| {
            Activation::forward(*self, o, &inp[off..off + o.len()]);
        });
        Ok(())
    }
    fn backward(&self, a: Backward<'_>) -> Result<(), CoreError> {
        let (dout, inp, y) = (a.dout, a.inp(), a.out());
        if let Some(d) = a.dinp {
            par::for_each_chunk(a.exec, d, &|off, dc| {
                let r = off..off + dc.len();
                Activation::backward(*self, dc, &dout[r.clone()], &inp[r.clone()], &y[r]);
            });
        }
        Ok(())
    }
    fn infer(&self, a: Infer<'_, '_, '_>) -> Result<(), CoreError> {
        par::for_each_chunk_min(a.exec, a.pp.in_place(), self.par_min_elems(), &|_, x| {
            self.forward_inplace(x);
        });
        Ok(())
    }
    fn tangent(&self) -> Option<Tangent> {
        match self {
            Activation::Relu => Some(Tangent::Slope(0.0)),
            Activation::LeakyRelu(alpha) => Some(Tangent::Slope(*alpha)),
            // Smooth: the penalty's gradient would need second derivatives.
            Activation::Tanh | Activation::Sigmoid => None,
        }
    }
}

/// `max(x, 0)`: `x` if `x > 0`, else `+0.0` (also for NaN).
///
/// Decided on the bit pattern instead of with a float compare, which is a soft-float call on
/// cores without an FPU: the positive numbers (`+inf` included, NaN excluded) are exactly the
/// patterns `1..=0x7F80_0000`. The result is the same as `if x > 0.0 { x } else { 0.0 }`.
#[inline]
pub fn relu(x: f32) -> f32 {
    if x.to_bits().wrapping_sub(1) < 0x7F80_0000 { x } else { 0.0 }
}

/// `x` for `x > 0`, else `alpha·x`.
#[inline]
pub fn leaky_relu(x: f32, alpha: f32) -> f32 {
    if x > 0.0 { x } else { alpha * x }
}

/// Logistic sigmoid, stable for large `|x|`.
#[inline]
pub fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + libm::expf(-x))
    } else {
        let e = libm::expf(x);
        e / (1.0 + e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relu_on_bits_is_the_float_definition() {
        let specials = [
            0.0f32,
            -0.0,
            1.0,
            -1.0,
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
            1e-45,
            -1e-45,
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
        ];
        let mut bits = 0x9E37_79B9u32;
        let random = (0..100_000).map(|_| {
            bits ^= bits << 13;
            bits ^= bits >> 17;
            bits ^= bits << 5;
            f32::from_bits(bits)
        });
        for x in specials.into_iter().chain(random) {
            let want = if x > 0.0 { x } else { 0.0 };
            assert_eq!(relu(x).to_bits(), want.to_bits(), "{x:?}");
        }
    }
    use crate::testutil::{Lcg, grad_check};

    const ALL: [Activation; 4] =
        [Activation::Relu, Activation::LeakyRelu(0.2), Activation::Tanh, Activation::Sigmoid];

    #[test]
    fn known_values() {
        assert_eq!(relu(-1.0), 0.0);
        assert_eq!(relu(2.0), 2.0);
        assert_eq!(leaky_relu(-1.0, 0.2), -0.2);
        assert_eq!(sigmoid(0.0), 0.5);
        assert!((sigmoid(2.0) - 0.880_797_1).abs() < 1e-7);
        assert!((sigmoid(-2.0) - 0.119_202_92).abs() < 1e-7);
        assert_eq!(sigmoid(-200.0), 0.0);
        assert_eq!(sigmoid(200.0), 1.0);
        assert!((Activation::Tanh.apply(0.5) - 0.462_117_16).abs() < 1e-7);
    }

    #[test]
    fn inplace_equals_out_of_place() {
        let mut r = Lcg::new(3);
        let x = r.vec::<33>();
        for a in ALL {
            let mut out = [0.0; 33];
            a.forward(&mut out, &x);
            let mut y = x;
            a.forward_inplace(&mut y);
            assert_eq!(out, y);
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        let mut r = Lcg::new(11);
        let mut x = r.vec::<16>();
        // Keep ReLU inputs away from the kink so the finite difference is well defined.
        for v in &mut x {
            if v.abs() < 0.05 {
                *v += 0.1;
            }
        }
        let g = r.vec::<16>();
        for a in ALL {
            let mut y = [0.0; 16];
            a.forward(&mut y, &x);
            let mut dx = [0.0; 16];
            a.backward(&mut dx, &g, &x, &y);
            grad_check(
                &x,
                &dx,
                |xp| {
                    let mut yp = [0.0; 16];
                    a.forward(&mut yp, xp);
                    yp.iter().zip(&g).map(|(&y, &g)| y as f64 * g as f64).sum()
                },
                1e-3,
                1e-3,
            );
        }
    }
}
