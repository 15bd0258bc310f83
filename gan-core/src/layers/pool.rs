//! Max pooling over square windows, without padding.
//!
//! Shapes: `inp` N×C×H×W, `out` N×C×OH×OW with `OH = (H − k)/stride + 1` (`OW` likewise),
//! `argmax` N×C×OH×OW. Every output is the largest input of its `k × k` window; on ties the
//! first in row-major window order wins (a NaN in the first position wins over everything,
//! elsewhere it never does), so the result is exact and the same on every target.
//!
//! Backward routes each output gradient to the input that won its window. Forward records the
//! winner's position inside the window (`ky·k + kx`, stored as f32, exact because `k·k <= 2²⁴`)
//! in `argmax`; in a network that buffer is the layer's auxiliary activation storage. Storing
//! it costs one value per output and saves re-scanning every window in backward. Overlapping
//! windows (`stride < k`) may route several gradients to the same input; they are added.

use core::fmt;

use crate::error::{CoreError, SpecError, check_len, check_opt_len};
use crate::kernels::{Exec, par};
use crate::layers::{Backward, Forward, Infer, Kind, Rules, Sizes};
use crate::spec::{LayerInfo, Shape};

/// A max-pooling layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxPool2d {
    /// Window side.
    pub k: u32,
    /// Step between windows.
    pub stride: u32,
}

/// Shape rule: `C × ((H − k)/stride + 1) × ((W − k)/stride + 1)`; auxiliary storage for the
/// winners' positions (one per output).
pub(crate) const fn rules(
    k: u32, stride: u32, inp: Shape, index: usize,
) -> Result<Rules, SpecError> {
    if k == 0 {
        return Err(SpecError::BadDimension { layer: index });
    }
    // The argmax is stored as an f32 window position, exact below 2^24.
    if stride == 0 || k as u64 * k as u64 > 1 << 24 {
        return Err(SpecError::BadParameter { layer: index });
    }
    if k > inp.h || k > inp.w {
        return Err(SpecError::ShapeMismatch { layer: index });
    }
    let out = Shape::image(inp.c, (inp.h - k) / stride + 1, (inp.w - k) / stride + 1);
    Ok(Rules::new(out, Sizes { aux: out.len(), ..Sizes::NONE }))
}

impl MaxPool2d {
    /// The kernel dimensions of this layer in a spec.
    fn dims(&self, l: &LayerInfo) -> PoolDims {
        let (c, h, w) = l.in_shape.chw();
        PoolDims { c, h, w, k: self.k as usize, stride: self.stride as usize }
    }
}

impl Kind for MaxPool2d {
    fn name(&self) -> &'static str {
        "max_pool2d"
    }
    fn label(&self, _: &LayerInfo, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "max_pool2d({}, stride {})", self.k, self.stride)
    }
    fn forward(&self, a: Forward<'_>) -> Result<(), CoreError> {
        maxpool2d_forward(a.out, Some(a.aux), a.inp, a.n, &self.dims(a.l), a.exec)
    }
    fn backward(&self, a: Backward<'_>) -> Result<(), CoreError> {
        let (argmax, d) = (a.aux(), self.dims(a.l));
        match a.dinp {
            Some(dinp) => maxpool2d_backward(dinp, a.dout, argmax, a.n, &d),
            None => Ok(()),
        }
    }
    fn infer(&self, a: Infer<'_, '_, '_>) -> Result<(), CoreError> {
        let (n, d) = (a.n, self.dims(a.l));
        let exec = a.exec;
        a.pp.map(n * a.l.out_shape.len(), |out, inp| maxpool2d_forward(out, None, inp, n, &d, exec))
    }
}

/// Dimensions of one pooling layer, per sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PoolDims {
    /// Channels.
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Window side.
    pub k: usize,
    /// Step between windows.
    pub stride: usize,
}

impl PoolDims {
    /// Output `(height, width)`, `None` if `k` or `stride` is zero, `k` exceeds a side or
    /// `k·k > 2²⁴`.
    pub const fn out_hw(&self) -> Option<(usize, usize)> {
        if self.k == 0 || self.stride == 0 || self.k > self.h || self.k > self.w {
            return None;
        }
        match self.k.checked_mul(self.k) {
            Some(kk) if kk <= 1 << 24 => {}
            _ => return None,
        }
        Some(((self.h - self.k) / self.stride + 1, (self.w - self.k) / self.stride + 1))
    }
}

/// `(input, output)` elements per sample, after validating the dimensions and `n`.
fn sizes(n: usize, d: &PoolDims) -> Result<(usize, usize, usize, usize), CoreError> {
    if n == 0 || d.c == 0 || d.h == 0 || d.w == 0 {
        return Err(CoreError::ZeroSize);
    }
    let bad = CoreError::Spec(SpecError::BadParameter { layer: usize::MAX });
    let (oh, ow) = d.out_hw().ok_or(bad)?;
    let per = |a: usize, b: usize| -> Result<usize, CoreError> {
        d.c.checked_mul(a).and_then(|v| v.checked_mul(b)).and_then(|v| v.checked_mul(n)).ok_or(bad)
    };
    Ok((per(d.h, d.w)?, per(oh, ow)?, oh, ow))
}

/// Forward: `out` (N×C×OH×OW) = window maxima of `inp` (N×C×H×W). With `argmax` (N×C×OH×OW),
/// also records each winner's window position for [`maxpool2d_backward`]; inference passes
/// `None`. Planes are independent and spread over the threads of `exec`.
pub fn maxpool2d_forward(
    out: &mut [f32], argmax: Option<&mut [f32]>, inp: &[f32], n: usize, d: &PoolDims,
    exec: &dyn Exec,
) -> Result<(), CoreError> {
    let (in_len, out_len, oh, ow) = sizes(n, d)?;
    check_len("out", out.len(), out_len)?;
    check_len("inp", inp.len(), in_len)?;
    check_opt_len("argmax", argmax.as_deref(), out_len)?;
    let (planes, plane_in, plane_out) = (n * d.c, d.h * d.w, oh * ow);
    let tasks = par::elem_tasks(exec, in_len, planes);
    let x = |p: core::ops::Range<usize>| &inp[p.start * plane_in..p.end * plane_in];
    match argmax {
        Some(a) => {
            let bufs = [(out, plane_out), (a, plane_out)];
            par::for_each_sample(exec, planes, tasks, bufs, (&mut [], 0), &|_, p, [o, a]| {
                pool_planes(o, Some(a), x(p), d, oh, ow);
            });
        }
        None => par::for_each_sample(
            exec,
            planes,
            tasks,
            [(out, plane_out)],
            (&mut [], 0),
            &|_, p, [o]| pool_planes(o, None, x(p), d, oh, ow),
        ),
    }
    Ok(())
}

/// [`maxpool2d_forward`] over whole planes: `inp` holds `H×W` planes, `out` (and `argmax`)
/// as many `OH×OW` ones.
fn pool_planes(
    out: &mut [f32], mut argmax: Option<&mut [f32]>, inp: &[f32], d: &PoolDims, oh: usize,
    ow: usize,
) {
    let (k, s, w) = (d.k, d.stride, d.w);
    for (plane_i, (x, o)) in
        inp.chunks_exact(d.h * w).zip(out.chunks_exact_mut(oh * ow)).enumerate()
    {
        let mut a =
            argmax.as_deref_mut().map(|a| &mut a[plane_i * oh * ow..(plane_i + 1) * oh * ow]);
        for oy in 0..oh {
            for ox in 0..ow {
                let top = oy * s * w + ox * s;
                let (best, at) = if k == 2 {
                    // The common 2×2 window, compared in the same order as below.
                    let (r0, r1) = (&x[top..top + 2], &x[top + w..top + w + 2]);
                    let (mut best, mut at) = (r0[0], 0usize);
                    for (i, v) in [(1, r0[1]), (2, r1[0]), (3, r1[1])] {
                        if v > best {
                            (best, at) = (v, i);
                        }
                    }
                    (best, at)
                } else {
                    let (mut best, mut at) = (x[top], 0usize);
                    for ky in 0..k {
                        let row = &x[top + ky * w..top + ky * w + k];
                        for (kx, &v) in row.iter().enumerate() {
                            if v > best {
                                (best, at) = (v, ky * k + kx);
                            }
                        }
                    }
                    (best, at)
                };
                let i = oy * ow + ox;
                o[i] = best;
                if let Some(a) = a.as_deref_mut() {
                    a[i] = at as f32;
                }
            }
        }
    }
}

/// Backward: `dinp` (N×C×H×W) is overwritten with zeros, then every `dout` element is added to
/// the input position recorded in `argmax` by [`maxpool2d_forward`]. A recorded position
/// outside the window (a corrupted buffer) is an error, never an out-of-bounds write.
pub fn maxpool2d_backward(
    dinp: &mut [f32], dout: &[f32], argmax: &[f32], n: usize, d: &PoolDims,
) -> Result<(), CoreError> {
    let (in_len, out_len, oh, ow) = sizes(n, d)?;
    check_len("dinp", dinp.len(), in_len)?;
    check_len("dout", dout.len(), out_len)?;
    check_len("argmax", argmax.len(), out_len)?;
    dinp.fill(0.0);
    let (k, s) = (d.k, d.stride);
    for ((dx, g), a) in dinp
        .chunks_exact_mut(d.h * d.w)
        .zip(dout.chunks_exact(oh * ow))
        .zip(argmax.chunks_exact(oh * ow))
    {
        for oy in 0..oh {
            for ox in 0..ow {
                let i = oy * ow + ox;
                let at = a[i];
                // Written so NaN fails too.
                if !(at >= 0.0 && at < (k * k) as f32) {
                    return Err(CoreError::BufferLen {
                        what: "argmax",
                        expected: out_len,
                        got: argmax.len(),
                    });
                }
                let at = at as usize;
                let (ky, kx) = (at / k, at % k);
                dx[(oy * s + ky) * d.w + ox * s + kx] += g[i];
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Serial;
    use crate::testutil::{Lcg, Threads, Twice, grad_check};
    use std::vec;
    use std::vec::Vec;

    /// Distinct values (no ties, gaps much larger than the finite-difference step).
    fn distinct(r: &mut Lcg, len: usize) -> Vec<f32> {
        let mut v: Vec<f32> = (0..len).map(|i| i as f32 * 0.1 - len as f32 * 0.05).collect();
        // Shuffle with the generator.
        for i in (1..len).rev() {
            let j = ((r.next_f32() + 1.0) * 0.5 * (i + 1) as f32) as usize % (i + 1);
            v.swap(i, j);
        }
        v
    }

    #[test]
    fn forward_matches_definition_and_records_winners() {
        let d = PoolDims { c: 1, h: 4, w: 5, k: 2, stride: 2 };
        #[rustfmt::skip]
        let x = [
            1.0, 2.0, 0.0, 9.0, 7.0,
            3.0, 0.5, 8.0, 1.0, 7.5,
            -1.0, -2.0, 4.0, 4.0, 0.0,
            -3.0, -0.5, 4.0, 2.0, 0.0,
        ];
        assert_eq!(d.out_hw(), Some((2, 2)));
        let mut out = [0.0; 4];
        let mut arg = [0.0; 4];
        maxpool2d_forward(&mut out, Some(&mut arg), &x, 1, &d, &Serial).unwrap();
        assert_eq!(out, [3.0, 9.0, -0.5, 4.0]);
        // Ties go to the first in window order.
        assert_eq!(arg, [2.0, 1.0, 3.0, 0.0]);
        let mut dx = [f32::NAN; 20];
        maxpool2d_backward(&mut dx, &[1.0, 2.0, 3.0, 4.0], &arg, 1, &d).unwrap();
        #[rustfmt::skip]
        let want = [
            0.0, 0.0, 0.0, 2.0, 0.0,
            1.0, 0.0, 0.0, 0.0, 0.0,
            0.0, 0.0, 4.0, 0.0, 0.0,
            0.0, 3.0, 0.0, 0.0, 0.0,
        ];
        assert_eq!(dx, want);
    }

    #[test]
    fn backward_matches_finite_differences() {
        let mut r = Lcg::new(31);
        // Non-overlapping and overlapping windows.
        for d in [
            PoolDims { c: 2, h: 6, w: 4, k: 2, stride: 2 },
            PoolDims { c: 3, h: 5, w: 5, k: 3, stride: 1 },
        ] {
            let n = 2;
            let (oh, ow) = d.out_hw().unwrap();
            let x = distinct(&mut r, n * d.c * d.h * d.w);
            let g = r.filled(n * d.c * oh * ow);
            let loss = |x: &[f32]| -> f64 {
                let mut out = vec![0.0; g.len()];
                maxpool2d_forward(&mut out, None, x, n, &d, &Serial).unwrap();
                out.iter().zip(&g).map(|(&o, &g)| o as f64 * g as f64).sum()
            };
            let mut out = vec![0.0; g.len()];
            let mut arg = vec![0.0; g.len()];
            maxpool2d_forward(&mut out, Some(&mut arg), &x, n, &d, &Serial).unwrap();
            let mut dx = vec![0.0; x.len()];
            maxpool2d_backward(&mut dx, &g, &arg, n, &d).unwrap();
            // Step 1e-3 of values spaced 0.1 apart: no window changes its winner.
            grad_check(&x, &dx, loss, 1e-3, 1e-3);
        }
    }

    /// The 2×2 fast path and the general loop agree with a plain scan (ties and NaN
    /// included), and threads do not change anything.
    #[test]
    fn every_path_and_executor_gives_the_plain_scan() {
        let mut r = Lcg::new(32);
        for d in [
            PoolDims { c: 16, h: 28, w: 28, k: 2, stride: 2 },
            PoolDims { c: 8, h: 9, w: 7, k: 3, stride: 2 },
            PoolDims { c: 5, h: 6, w: 6, k: 2, stride: 1 },
        ] {
            let n = 12;
            let (oh, ow) = d.out_hw().unwrap();
            let mut x = r.filled(n * d.c * d.h * d.w);
            // Quantise for ties, and sprinkle NaNs.
            for (i, v) in x.iter_mut().enumerate() {
                *v = if i % 37 == 0 { f32::NAN } else { (*v * 4.0).round() };
            }
            let mut want = vec![0.0f32; n * d.c * oh * ow];
            let mut want_at = vec![0.0f32; want.len()];
            for (p, plane) in x.chunks_exact(d.h * d.w).enumerate() {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut best = plane[oy * d.stride * d.w + ox * d.stride];
                        let mut at = 0;
                        for i in 0..d.k * d.k {
                            let v =
                                plane[(oy * d.stride + i / d.k) * d.w + ox * d.stride + i % d.k];
                            if v > best {
                                (best, at) = (v, i);
                            }
                        }
                        want[p * oh * ow + oy * ow + ox] = best;
                        want_at[p * oh * ow + oy * ow + ox] = at as f32;
                    }
                }
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            for exec in [&Serial as &dyn Exec, &Threads(3), &Twice] {
                let mut out = vec![0.0; want.len()];
                let mut arg = vec![0.0; want.len()];
                maxpool2d_forward(&mut out, Some(&mut arg), &x, n, &d, exec).unwrap();
                assert_eq!((bits(&out), bits(&arg)), (bits(&want), bits(&want_at)), "{d:?}");
                let mut out = vec![0.0; want.len()];
                maxpool2d_forward(&mut out, None, &x, n, &d, exec).unwrap();
                assert_eq!(bits(&out), bits(&want));
            }
        }
    }

    #[test]
    fn rejects_bad_input() {
        let d = PoolDims { c: 1, h: 2, w: 2, k: 3, stride: 1 };
        assert!(maxpool2d_forward(&mut [0.0], None, &[0.0; 4], 1, &d, &Serial).is_err());
        let d = PoolDims { k: 2, ..d };
        assert_eq!(
            maxpool2d_forward(&mut [0.0], None, &[0.0; 4], 0, &d, &Serial),
            Err(CoreError::ZeroSize)
        );
        assert!(matches!(
            maxpool2d_forward(&mut [0.0; 2], None, &[0.0; 4], 1, &d, &Serial),
            Err(CoreError::BufferLen { what: "out", .. })
        ));
        // A corrupted argmax is rejected, not followed.
        for bad in [4.0, -1.0, f32::NAN] {
            assert!(maxpool2d_backward(&mut [0.0; 4], &[1.0], &[bad], 1, &d).is_err());
        }
    }
}
