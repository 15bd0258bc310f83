//! Element-wise activations: forward, in-place forward (inference) and backward.
//!
//! Every function works on slices of equal length (any shape). Transcendentals via `libm`; Tanh
//! through [`crate::vtanh`], which gives `libm::tanhf`'s bits but vectorises.

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
    /// The activation of a layer, or `None` if the layer is not element-wise.
    pub fn of(layer: &crate::spec::Layer) -> Option<Self> {
        use crate::spec::Layer;
        match *layer {
            Layer::Relu => Some(Activation::Relu),
            Layer::LeakyRelu { alpha } => Some(Activation::LeakyRelu(alpha)),
            Layer::Tanh => Some(Activation::Tanh),
            Layer::Sigmoid => Some(Activation::Sigmoid),
            _ => None,
        }
    }

    /// Smallest slice worth splitting over threads: Sigmoid (scalar `libm::expf`) costs tens of
    /// nanoseconds per element, so one 28×28 image is worth splitting; vectorised Tanh and the
    /// ReLU family cost a few instructions per element.
    pub fn par_min_elems(self) -> usize {
        match self {
            Activation::Relu | Activation::LeakyRelu(_) => crate::par::PAR_MIN_ELEMS,
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
            Activation::LeakyRelu(a) => out
                .iter_mut()
                .zip(inp)
                .for_each(|(o, &x)| *o = leaky_relu(x, a)),
            Activation::Tanh => crate::vtanh::tanh_map(out, inp),
            Activation::Sigmoid => out.iter_mut().zip(inp).for_each(|(o, &x)| *o = sigmoid(x)),
        }
    }

    /// `x = f(x)` in place (inference).
    pub fn forward_inplace(self, x: &mut [f32]) {
        match self {
            Activation::Relu => x.iter_mut().for_each(|v| *v = relu(*v)),
            Activation::LeakyRelu(a) => x.iter_mut().for_each(|v| *v = leaky_relu(*v, a)),
            Activation::Tanh => crate::vtanh::tanh_inplace(x),
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

/// `max(x, 0)`.
#[inline]
pub fn relu(x: f32) -> f32 {
    if x > 0.0 { x } else { 0.0 }
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
    use crate::testutil::{Lcg, grad_check};

    const ALL: [Activation; 4] = [
        Activation::Relu,
        Activation::LeakyRelu(0.2),
        Activation::Tanh,
        Activation::Sigmoid,
    ];

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
