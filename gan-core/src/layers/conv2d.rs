//! 2-D convolution and transposed convolution with square kernels, zero padding and a stride.
//!
//! Shapes (one sample; a batch is `N` samples one after another, all row-major):
//! - [`conv2d_forward`]: `inp` C_in×H×W, `w` C_out×C_in×k×k, `b` C_out, `out` C_out×OH×OW with
//!   `OH = (H + 2·pad − k)/stride + 1` ([`conv_out_len`]; `OW` likewise from `W`).
//! - [`conv_transpose2d_forward`](crate::layers::conv_transpose2d::conv_transpose2d_forward): `inp` C_in×H×W, `w` C_in×C_out×k×k, `b` C_out, `out`
//!   C_out×OH×OW with `OH = (H − 1)·stride − 2·pad + k` ([`conv_transpose_out_len`]).
//!
//! # One geometry for both layers
//! A convolution reads an *image* (`c_img × ih × iw`) and produces a *grid* (`c_grid × gh × gw`)
//! of kernel positions: grid position `(gy, gx)` sees image pixel `(gy·s − p + ky, gx·s − p + kx)`
//! through tap `(ky, kx)`, or zero where that falls in the padding. For `Conv2d` the image is the
//! input and the grid the output. The transposed convolution is the adjoint of that linear map:
//! its input is the grid and its output the image. In both cases the weights form one
//! `c_grid × (c_img·k·k)` matrix, which is why the layouts above put the grid's channel first.
//!
//! `im2col` writes the *column matrix* of one sample: `(c_img·k·k) × (gh·gw)`, row
//! `(c·k + ky)·k + kx`, column `gy·gw + gx`, holding the image pixel that tap sees (zero in the
//! padding). `col2im` is its adjoint: it adds every column entry back onto its pixel.
//!
//! # Training kernels (through [`crate::kernels`])
//! Per sample the passes are:
//! - conv forward: `col = im2col(x)`, `out = W · col + b` ([`kernels::matmul`]);
//! - conv backward: `dW += dout · colᵀ` ([`kernels::matmul_nt`]), `db += Σ dout`,
//!   `dcol = Wᵀ · dout` ([`kernels::matmul_tn`]), `dx = col2im(dcol)`;
//! - transposed forward: `col = Wᵀ · x` ([`kernels::matmul_tn`]), `out = col2im(col) + b`;
//! - transposed backward: `dcol = im2col(dout)`, `dx = W · dcol` ([`kernels::matmul`]),
//!   `dW += x · dcolᵀ` ([`kernels::matmul_nt`]), `db += Σ dout`.
//!
//! One sample's grid has few positions (49 for a 7 × 7 map), too few columns for the blocked
//! product to reach its speed, so the samples go in *groups* of about 400 grid
//! positions (`group_size`): a group's column matrices lie side by side in one
//! `rows × (count·cols)` matrix, the grids it multiplies or produces are gathered into (or
//! scattered from) a *staging grid* of `c_grid × (count·cols)`, and one product serves the
//! group. Every output still sums the same terms in the same order as the per-sample product
//! (a product's sums do not depend on its column count), and the weight gradient stays one
//! product per sample, added in sample order (its sums run along the grid positions): the bits
//! are those of the per-sample passes, whatever the group size or the thread count.
//!
//! Training buffers: each sample has [`ConvDims::train_len`] (or
//! [`ConvDims::transpose_train_len`]) elements, its column matrix and its share of the
//! staging grid, laid out group after group (column matrices first, then the staging grid).
//! [`conv2d_forward`] fills the buffer of every sample (`col`) and [`conv2d_backward`] reads
//! the column matrices back for the weight gradient, so im2col runs once per step; in a
//! network that buffer is the layer's auxiliary activation storage. The transposed backward
//! needs every sample's buffer as `scratch`; the other two passes need one group's (more
//! makes room for more threads).
//!
//! # Exact inference kernels
//! [`conv2d_forward_exact`] and [`conv_transpose2d_forward_exact`](crate::layers::conv_transpose2d::conv_transpose2d_forward_exact) are direct loops with no
//! scratch. Every output is `((0 + w₀·x₀) + w₁·x₁) + …` over its taps in the order input
//! channel, `ky`, `kx` (taps that fall in the padding, or between the strided positions of the
//! transposed convolution, are skipped), each product and sum rounded to f32 with no FMA, and
//! then the bias is added: the same bits on every target. The loops keep one output row as the
//! set of accumulators, so the innermost loop runs along a row.

use core::fmt;

use crate::encoding::int8::quantize_row;
use crate::error::{CoreError, SpecError, check_len, check_min_len, check_opt_len};
use crate::kernels::split::OutPtr;
use crate::kernels::{self, Exec, Serial, par};
use crate::layers::columns::{grid_to_image, group_col, group_size, image_to_grid};
use crate::layers::{
    Backward, Channels, Forward, Infer, Kind, LayerWeights, Q8Role, Rules, Sizes, mul, mul3, size,
};
use crate::spec::{LayerInfo, Shape};

/// A convolution layer of either direction `D` ([`Direct`] here, the transposed one in
/// [`crate::layers::conv_transpose2d`]): the two share their hyper-parameters, their geometry
/// and everything their layer kind does except the kernels it calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv<D> {
    /// Output channels.
    pub out_c: u32,
    /// Kernel side.
    pub k: u32,
    /// Step between kernel positions.
    pub stride: u32,
    /// Implicit zero rows/columns on every border (cropped from it, when transposed).
    pub pad: u32,
    dir: core::marker::PhantomData<D>,
}

impl<D> Conv<D> {
    /// A layer with these hyper-parameters.
    pub const fn new(out_c: u32, k: u32, stride: u32, pad: u32) -> Self {
        Conv { out_c, k, stride, pad, dir: core::marker::PhantomData }
    }

    /// The kernel dimensions of this layer in a spec.
    pub fn dims(&self, l: &LayerInfo) -> ConvDims {
        let (in_c, in_h, in_w) = l.in_shape.chw();
        ConvDims {
            in_c,
            in_h,
            in_w,
            out_c: self.out_c as usize,
            k: self.k as usize,
            stride: self.stride as usize,
            pad: self.pad as usize,
        }
    }
}

/// The convolution layer.
pub type Conv2d = Conv<Direct>;

/// What one direction of convolution brings to [`Conv`]'s layer kind.
pub(crate) trait Direction {
    /// The kind's name.
    const NAME: &'static str;
    /// Whether backward needs the forward input (else the column matrices forward kept).
    const BACKWARD_READS_INPUT: bool;
    /// `(fan_in, fan_out)` for `C_in` and `C_out` channels, `k²` taps and stride `s` (`s2 = s²`).
    fn fans(c_in: usize, c_out: usize, kk: usize, s2: usize) -> (usize, usize);
    /// Positions each weight is used at per sample (the grid of the underlying convolution).
    fn positions(l: &LayerInfo) -> usize;
    /// Training forward ([`conv2d_forward`]'s arguments).
    const FORWARD: ForwardFn;
    /// Backward ([`conv2d_backward`]'s arguments; the sixth is the forward input or the
    /// column matrices, see [`Direction::BACKWARD_READS_INPUT`]).
    const BACKWARD: BackwardFn;
    /// Exact inference ([`conv2d_forward_exact`]'s arguments).
    const EXACT: ExactFn;
    /// Int8 inference ([`conv2d_forward_i8`]'s arguments).
    const INT8: Int8Fn;
    /// The integer sums of one sample for the all-integer encoding, as i32 bits.
    const Q8_SUMS: fn(&mut [f32], &[i8], &[u8], &Geom);
    /// Where the all-integer encoding stores weight `i` of the layer's own layout.
    const Q8_INDEX: fn(&Geom, usize) -> usize;
    /// Bytes of the weights in the all-integer encoding.
    const Q8_LEN: fn(&Geom) -> usize;
    /// The geometry of a layer with these dimensions.
    fn geom(d: &ConvDims) -> Result<Geom, CoreError>;
    /// How the weights belong to the output channels: `(out_c, inner)` of [`Channels`] for
    /// `C_in` input channels and `k²` taps.
    fn channels(c_in: usize, c_out: usize, kk: usize) -> Channels;
}

/// What a convolution kernel returns.
type Res = Result<(), CoreError>;

/// An optional gradient buffer.
type Grad<'a> = Option<&'a mut [f32]>;

/// The training forward of a convolution: `(out, aux, inp, w, b, n, dims, exec)`.
pub(crate) type ForwardFn =
    fn(&mut [f32], &mut [f32], &[f32], &[f32], &[f32], usize, &ConvDims, &dyn Exec) -> Res;

/// The backward of a convolution: `(dinp, dw, db, scratch, dout, saved, w, n, dims, exec)`.
pub(crate) type BackwardFn = fn(
    Grad<'_>,
    Grad<'_>,
    Grad<'_>,
    &mut [f32],
    &[f32],
    &[f32],
    &[f32],
    usize,
    &ConvDims,
    &dyn Exec,
) -> Res;

/// The exact inference of a convolution: `(out, inp, w, b, n, dims, exec)`.
pub(crate) type ExactFn =
    fn(&mut [f32], &[f32], &[f32], &[f32], usize, &ConvDims, &dyn Exec) -> Result<(), CoreError>;

/// Calls `f(sample, channel, plane)` for every output plane of `out` (`n` samples of `c_out`
/// planes of `plane` values), the planes spread over the threads of `exec` when the layer's
/// `macs` (per sample) are worth it. Each plane is computed on its own in a fixed order, so the
/// bits do not depend on `exec`.
pub(crate) fn for_each_plane(
    out: &mut [f32], n: usize, c_out: usize, plane: usize, macs: usize, exec: &dyn Exec,
    f: &(dyn Fn(usize, usize, &mut [f32]) + Sync),
) {
    let planes = n * c_out;
    let tasks = par::sample_tasks(exec, planes, 2 * macs / c_out.max(1));
    par::for_each_sample(exec, planes, tasks, [(out, plane)], (&mut [], 0), &|_, range, [o]| {
        for (i, p) in range.zip(o.chunks_exact_mut(plane)) {
            f(i / c_out, i % c_out, p);
        }
    });
}

/// The int8 inference of a convolution: `(out, xq, inp, q, scales, b, n, dims)`.
pub(crate) type Int8Fn = fn(
    &mut [f32],
    &mut [i8],
    &[f32],
    &[i8],
    &[f32],
    &[f32],
    usize,
    &ConvDims,
) -> Result<(), CoreError>;

/// The convolution itself: the image is the input, the grid the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Direct;

impl Direction for Direct {
    const NAME: &'static str = "conv2d";
    const BACKWARD_READS_INPUT: bool = false;
    /// Each input pixel feeds about `k²/s²` positions per output channel.
    fn fans(c_in: usize, c_out: usize, kk: usize, s2: usize) -> (usize, usize) {
        (c_in * kk, (c_out * kk / s2).max(1))
    }
    fn positions(l: &LayerInfo) -> usize {
        (l.out_shape.h as usize).saturating_mul(l.out_shape.w as usize)
    }
    const FORWARD: ForwardFn = conv2d_forward;
    const BACKWARD: BackwardFn = conv2d_backward;
    const EXACT: ExactFn = conv2d_forward_exact_with;
    const INT8: Int8Fn = conv2d_forward_i8;
    const Q8_SUMS: fn(&mut [f32], &[i8], &[u8], &Geom) = kernels::q8::reference::conv;
    const Q8_INDEX: fn(&Geom, usize) -> usize = |_, i| i;
    const Q8_LEN: fn(&Geom) -> usize = |g| g.w;
    fn geom(d: &ConvDims) -> Result<Geom, CoreError> {
        Geom::conv(d)
    }
    /// `w` is C_out × (C_in·k·k): each output channel's weights are one row.
    fn channels(c_in: usize, c_out: usize, kk: usize) -> Channels {
        Channels { n: c_out, inner: c_in * kk }
    }
}

/// An image side in `u32`, or `None` if it is zero or does not fit.
const fn side(x: Option<usize>) -> Option<u32> {
    match x {
        Some(v) if v > 0 && v <= u32::MAX as usize => Some(v as u32),
        Some(_) | None => None,
    }
}

/// The output side of a convolution (or transposed convolution) of side `len`, if valid.
const fn out_side(len: u32, k: usize, s: usize, p: usize, transposed: bool) -> Option<u32> {
    side(if transposed {
        conv_transpose_out_len(len as usize, k, s, p)
    } else {
        conv_out_len(len as usize, k, s, p)
    })
}

/// Shape rule of both convolutions: `out_c × OH × OW` ([`conv_out_len`], or
/// [`conv_transpose_out_len`] when `transposed`); the `c_grid × (c_img·k·k)` weight matrix of
/// the module docs (`out_c × C·k·k`, transposed `C × out_c·k·k`), a bias of `out_c`, and the
/// training buffer of the module docs as auxiliary storage (forward's `im2col` for the
/// convolution, its `Wᵀ·x` for the transposed one, each with its staging grid).
pub(crate) const fn rules(
    out_c: u32, k: u32, stride: u32, pad: u32, inp: Shape, index: usize, transposed: bool,
) -> Result<Rules, SpecError> {
    if out_c == 0 || k == 0 {
        return Err(SpecError::BadDimension { layer: index });
    }
    if stride == 0 || pad >= k {
        return Err(SpecError::BadParameter { layer: index });
    }
    let (kk, s, p) = (k as usize, stride as usize, pad as usize);
    let (h, w) =
        match (out_side(inp.h, kk, s, p, transposed), out_side(inp.w, kk, s, p, transposed)) {
            (Some(h), Some(w)) => (h, w),
            _ => return Err(SpecError::ShapeMismatch { layer: index }),
        };
    // The column matrix: image channels × k² rows, grid positions columns.
    let (c_grid, c_img, grid) = if transposed {
        (inp.c, out_c, inp.h as usize * inp.w as usize)
    } else {
        (out_c, inp.c, h as usize * w as usize)
    };
    let rows = size!(mul3(c_img as usize, kk, kk), index);
    // Per sample: its column matrix and a grid-sized staging area (see `group_size`).
    let aux = match (mul(rows, grid), mul(c_grid as usize, grid)) {
        (Some(col), Some(stage)) => col.checked_add(stage),
        _ => None,
    };
    Ok(Rules::new(
        Shape::image(out_c, h, w),
        Sizes {
            weight: size!(mul(c_grid as usize, rows), index),
            bias: out_c as usize,
            aux: size!(aux, index),
            stats: 0,
        },
    ))
}

impl<D: Direction> Kind for Conv<D> {
    fn name(&self) -> &'static str {
        D::NAME
    }
    fn label(&self, _: &LayerInfo, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (k, s, p) = (self.k, self.stride, self.pad);
        write!(f, "{} {k}×{k} s{s} p{p}", D::NAME)
    }
    fn macs(&self, l: &LayerInfo) -> usize {
        l.weight_len.saturating_mul(D::positions(l))
    }
    fn fans(&self, l: &LayerInfo) -> Option<(usize, usize)> {
        let (c_in, kk) = (l.in_shape.c as usize, (self.k as usize).pow(2));
        let s2 = (self.stride as usize).pow(2);
        Some(D::fans(c_in, self.out_c as usize, kk, s2))
    }
    fn forward(&self, a: Forward<'_>) -> Result<(), CoreError> {
        let (w, b) = (a.w(), a.b());
        (D::FORWARD)(a.out, a.aux, a.inp, w, b, a.n, &self.dims(a.l), a.exec)
    }
    fn backward(&self, mut a: Backward<'_>) -> Result<(), CoreError> {
        let saved = if D::BACKWARD_READS_INPUT { a.inp() } else { a.aux() };
        let (w, dout, d) = (a.w(), a.dout, self.dims(a.l));
        let (gw, gb) = a.param_grads();
        (D::BACKWARD)(a.dinp, gw, gb, a.scratch, dout, saved, w, a.n, &d, a.exec)
    }
    fn infer(&self, a: Infer<'_, '_, '_>) -> Result<(), CoreError> {
        let (n, d) = (a.n, self.dims(a.l));
        match a.w {
            LayerWeights::F32 { w, b, .. } => {
                let exec = a.exec;
                a.pp.map(n * a.l.out_shape.len(), |out, inp| {
                    (D::EXACT)(out, inp, w, b, n, &d, exec)
                })
            }
            LayerWeights::I8 { q, scales, b } => {
                let xq = a.xq;
                a.pp.map(n * a.l.out_shape.len(), |out, inp| {
                    (D::INT8)(out, xq, inp, q, scales, b, n, &d)
                })
            }
        }
    }
    fn q8(&self) -> Q8Role {
        Q8Role::Weighted
    }
    fn q8_sums(
        &self, l: &LayerInfo, acc: &mut [f32], xq: &[i8], u: &[u8],
    ) -> Result<(), CoreError> {
        let g = D::geom(&self.dims(l))?;
        let (i, o, _) = g.io_lens();
        check_len("acc", acc.len(), o)?;
        check_len("xq", xq.len(), i)?;
        check_len("u", u.len(), (D::Q8_LEN)(&g))?;
        (D::Q8_SUMS)(acc, xq, u, &g);
        Ok(())
    }
    fn q8_len(&self, l: &LayerInfo) -> usize {
        D::geom(&self.dims(l)).map_or(l.weight_len, |g| (D::Q8_LEN)(&g))
    }
    fn q8_index(&self, l: &LayerInfo, i: usize) -> usize {
        match D::geom(&self.dims(l)) {
            Ok(g) => (D::Q8_INDEX)(&g, i),
            Err(_) => i,
        }
    }
    fn channels(&self, l: &LayerInfo) -> Option<Channels> {
        let kk = (self.k as usize).pow(2);
        Some(D::channels(l.in_shape.c as usize, self.out_c as usize, kk))
    }
}

/// Output side of a convolution: `(len + 2·pad − k)/stride + 1`, or `None` if `len`, `k` or
/// `stride` is zero, `pad >= k`, the kernel does not fit the padded input, or on overflow.
pub const fn conv_out_len(len: usize, k: usize, stride: usize, pad: usize) -> Option<usize> {
    if len == 0 || k == 0 || stride == 0 || pad >= k {
        return None;
    }
    let padded = match pad.checked_mul(2) {
        Some(p2) => match len.checked_add(p2) {
            Some(v) => v,
            None => return None,
        },
        None => return None,
    };
    if padded < k { None } else { Some((padded - k) / stride + 1) }
}

/// Output side of a transposed convolution: `(len − 1)·stride − 2·pad + k`, or `None` if `len`,
/// `k` or `stride` is zero, `pad >= k`, the result is not positive, or on overflow.
pub const fn conv_transpose_out_len(
    len: usize, k: usize, stride: usize, pad: usize,
) -> Option<usize> {
    if len == 0 || k == 0 || stride == 0 || pad >= k {
        return None;
    }
    let full = match (len - 1).checked_mul(stride) {
        Some(v) => match v.checked_add(k) {
            Some(v) => v,
            None => return None,
        },
        None => return None,
    };
    // pad < k, so 2·pad cannot overflow when k fits.
    let crop = 2 * pad;
    if full <= crop { None } else { Some(full - crop) }
}

/// Dimensions of one convolution layer, per sample. The same struct describes a
/// [`conv2d_forward`] and a [`conv_transpose2d_forward`](crate::layers::conv_transpose2d::conv_transpose2d_forward) with these hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ConvDims {
    /// Input channels.
    pub in_c: usize,
    /// Input height.
    pub in_h: usize,
    /// Input width.
    pub in_w: usize,
    /// Output channels.
    pub out_c: usize,
    /// Kernel side.
    pub k: usize,
    /// Stride.
    pub stride: usize,
    /// Padding on every border.
    pub pad: usize,
}

impl ConvDims {
    /// Output `(height, width)` of the convolution, `None` if the geometry is invalid.
    pub const fn out_hw(&self) -> Option<(usize, usize)> {
        self.hw(false)
    }

    /// Output `(height, width)` of the transposed convolution, `None` if invalid.
    pub const fn transpose_out_hw(&self) -> Option<(usize, usize)> {
        self.hw(true)
    }

    /// [`Self::out_hw`] or, `transposed`, [`Self::transpose_out_hw`].
    const fn hw(&self, transposed: bool) -> Option<(usize, usize)> {
        match (self.side(self.in_h, transposed), self.side(self.in_w, transposed)) {
            (Some(h), Some(w)) => Some((h, w)),
            _ => None,
        }
    }

    /// One output side for an input side of `len`.
    const fn side(&self, len: usize, transposed: bool) -> Option<usize> {
        let (k, s, p) = (self.k, self.stride, self.pad);
        if transposed { conv_transpose_out_len(len, k, s, p) } else { conv_out_len(len, k, s, p) }
    }

    /// Elements per sample of the convolution's training buffer (module docs): its column
    /// matrix, `in_c·k·k·OH·OW`, and its staging grid, `out_c·OH·OW`.
    pub fn train_len(&self) -> Result<usize, CoreError> {
        Ok(Geom::conv(self)?.aux)
    }

    /// Elements per sample of the transposed convolution's training buffer: its column
    /// matrix, `out_c·k·k·in_h·in_w`, and its staging grid, `in_c·in_h·in_w`.
    pub fn transpose_train_len(&self) -> Result<usize, CoreError> {
        Ok(Geom::transpose(self)?.aux)
    }
}

/// The error for dimensions that describe no valid convolution (not tied to a spec layer).
const fn bad_geometry() -> CoreError {
    CoreError::Spec(SpecError::BadParameter { layer: usize::MAX })
}

/// The image/grid geometry of the module docs, with every size precomputed and checked.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geom {
    /// Image channels, height, width.
    pub(crate) ci: usize,
    pub(crate) ih: usize,
    pub(crate) iw: usize,
    /// Grid channels, height, width.
    pub(crate) cg: usize,
    pub(crate) gh: usize,
    pub(crate) gw: usize,
    pub(crate) k: usize,
    pub(crate) s: usize,
    pub(crate) p: usize,
    /// Rows of the column matrix: `ci·k·k`.
    pub(crate) rows: usize,
    /// Columns of the column matrix: `gh·gw`.
    pub(crate) cols: usize,
    /// `rows·cols`.
    pub(crate) col: usize,
    /// `ci·ih·iw`.
    pub(crate) img: usize,
    /// `cg·gh·gw`.
    pub(crate) grid: usize,
    /// `cg·rows`.
    pub(crate) w: usize,
    /// `col + grid`: one sample's share of a training buffer (column matrix and staging grid).
    pub(crate) aux: usize,
    /// The transposed convolution (the grid is the input).
    pub(crate) transposed: bool,
}

impl Geom {
    /// Checks the dimensions and computes every size.
    #[allow(clippy::too_many_arguments)]
    fn new(
        (ci, ih, iw): (usize, usize, usize), (cg, gh, gw): (usize, usize, usize), k: usize,
        s: usize, p: usize,
    ) -> Result<Self, CoreError> {
        let m = |a: usize, b: usize| a.checked_mul(b).ok_or(bad_geometry());
        let rows = m(m(ci, k)?, k)?;
        let cols = m(gh, gw)?;
        let (col, grid) = (m(rows, cols)?, m(cg, cols)?);
        Ok(Geom {
            ci,
            ih,
            iw,
            cg,
            gh,
            gw,
            k,
            s,
            p,
            rows,
            cols,
            col,
            img: m(m(ci, ih)?, iw)?,
            grid,
            w: m(cg, rows)?,
            aux: col.checked_add(grid).ok_or(bad_geometry())?,
            transposed: false,
        })
    }

    /// Per sample: (input, output) elements, and the output channels.
    pub(crate) fn io_lens(&self) -> (usize, usize, usize) {
        let (o, i, c) = self.io();
        (i, o, c)
    }

    /// Per sample: (output, input) elements, and the bias length (output channels).
    fn io(&self) -> (usize, usize, usize) {
        if self.transposed {
            (self.img, self.grid, self.ci)
        } else {
            (self.grid, self.img, self.cg)
        }
    }

    /// Checks a forward pass's buffers: `out` and `inp` of `n` samples, `w` and `b` of the
    /// layer.
    pub(crate) fn check_forward(
        &self, n: usize, out: &[f32], inp: &[f32], w: &[f32], b: &[f32],
    ) -> Result<(), CoreError> {
        let (o, i, c) = self.io();
        check_len("out", out.len(), batch(n, o)?)?;
        check_len("inp", inp.len(), batch(n, i)?)?;
        check_len("w", w.len(), self.w)?;
        check_len("b", b.len(), c)
    }

    /// Checks what every backward pass takes: `dout` of `n` samples, `w`, and the gradients
    /// asked for (`dinp` of `n` samples, `dw`, `db`).
    pub(crate) fn check_backward(
        &self, n: usize, dout: &[f32], w: &[f32], dinp: Option<&[f32]>, dw: Option<&[f32]>,
        db: Option<&[f32]>,
    ) -> Result<(), CoreError> {
        let (o, i, c) = self.io();
        check_len("dout", dout.len(), batch(n, o)?)?;
        check_len("w", w.len(), self.w)?;
        check_opt_len("dw", dw, self.w)?;
        check_opt_len("db", db, c)?;
        check_opt_len("dinp", dinp, batch(n, i)?)
    }

    fn check_nonzero(d: &ConvDims) -> Result<(), CoreError> {
        if d.in_c == 0 || d.in_h == 0 || d.in_w == 0 || d.out_c == 0 || d.k == 0 || d.stride == 0 {
            Err(CoreError::ZeroSize)
        } else {
            Ok(())
        }
    }

    /// `Conv2d`: the image is the input, the grid the output.
    pub(crate) fn conv(d: &ConvDims) -> Result<Self, CoreError> {
        Self::check_nonzero(d)?;
        let (oh, ow) = d.out_hw().ok_or(bad_geometry())?;
        Self::new((d.in_c, d.in_h, d.in_w), (d.out_c, oh, ow), d.k, d.stride, d.pad)
    }

    /// `ConvTranspose2d`: the grid is the input, the image the output.
    pub(crate) fn transpose(d: &ConvDims) -> Result<Self, CoreError> {
        Self::check_nonzero(d)?;
        let (oh, ow) = d.transpose_out_hw().ok_or(bad_geometry())?;
        let g = Self::new((d.out_c, oh, ow), (d.in_c, d.in_h, d.in_w), d.k, d.stride, d.pad)?;
        Ok(Geom { transposed: true, ..g })
    }
}

/// `n·per`, `ZeroSize` for `n = 0`, an error on overflow.
pub(crate) fn batch(n: usize, per: usize) -> Result<usize, CoreError> {
    if n == 0 {
        return Err(CoreError::ZeroSize);
    }
    n.checked_mul(per).ok_or(bad_geometry())
}

/// Grid positions `g` in `lo..hi` whose image coordinate `g·s + tap − p` lies in `0..n_img`,
/// clipped to `0..n_grid`. Returns an empty range (`lo == hi`) when there is none.
#[inline]
pub(crate) fn span(n_grid: usize, n_img: usize, s: usize, tap: usize, p: usize) -> (usize, usize) {
    // g·s + tap − p >= 0  ⇔  g >= ⌈(p − tap)/s⌉
    let lo = if tap >= p { 0 } else { (p - tap).div_ceil(s) };
    // g·s + tap − p < n_img  ⇔  g < ⌈(n_img + p − tap)/s⌉
    let hi = if n_img + p <= tap { 0 } else { (n_img + p - tap).div_ceil(s).min(n_grid) };
    (lo.min(hi), hi)
}

/// Fills every channel plane of one sample with its bias.
pub(crate) fn fill_bias(out: &mut [f32], b: &[f32], plane: usize) {
    for (o, &v) in out.chunks_exact_mut(plane).zip(b) {
        o.fill(v);
    }
}

/// `db[c] += Σ` over the batch and the plane of channel `c` of `dout` (N × C × plane): for
/// each sample in turn, the plane's sum (left to right) is added. Channels are independent,
/// so they are spread over `exec` without changing a bit.
pub(crate) fn add_bias_grad(db: &mut [f32], dout: &[f32], plane: usize, exec: &dyn Exec) {
    let c = db.len();
    let tasks = par::elem_tasks(exec, dout.len(), c);
    let out = OutPtr::new(db);
    par::for_each_range(exec, c, tasks, &|c0, c1| {
        // SAFETY: the channel ranges handed out are disjoint, each to one call (`OutPtr`).
        let db = unsafe { out.range(c0, c1) };
        for sample in dout.chunks_exact(plane * c) {
            let planes = sample[c0 * plane..c1 * plane].chunks_exact(plane);
            for (acc, p) in db.iter_mut().zip(planes) {
                *acc += p.iter().sum::<f32>();
            }
        }
    });
}

/// Training forward of a convolution (see the module docs for shapes).
///
/// `out` N×C_out×OH×OW; `col` N×[`ConvDims::train_len`] receives every sample's column matrix
/// (keep it for [`conv2d_backward`]); `inp` N×C_in×H×W; `w` C_out×C_in×k×k; `b` C_out.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_forward(
    out: &mut [f32], col: &mut [f32], inp: &[f32], w: &[f32], b: &[f32], n: usize, d: &ConvDims,
    exec: &dyn Exec,
) -> Result<(), CoreError> {
    let g = Geom::conv(d)?;
    g.check_forward(n, out, inp, w, b)?;
    check_len("col", col.len(), batch(n, g.aux)?)?;
    // Groups are independent: spread over the threads (see `image_to_grid`).
    image_to_grid(Some(out), col, inp, w, Some(b), n, &g, exec);
    Ok(())
}

/// Backward of [`conv2d_forward`], from `dout` (N×C_out×OH×OW) and the forward's `col`.
///
/// - `dw` (C_out×C_in×k×k) `+= Σₙ doutₙ · colₙᵀ`, `db` (C_out) `+= Σ dout`: skipped when `None`;
/// - `dinp` (N×C_in×H×W) `= col2im(Wᵀ · doutₙ)`, overwritten; skipped when `None`. Needs
///   `scratch` of at least one group's training buffer ([`ConvDims::train_len`] times the
///   group's samples, at most N; more makes room for more threads; ignored otherwise).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward(
    dinp: Option<&mut [f32]>, dw: Option<&mut [f32]>, db: Option<&mut [f32]>, scratch: &mut [f32],
    dout: &[f32], col: &[f32], w: &[f32], n: usize, d: &ConvDims, exec: &dyn Exec,
) -> Result<(), CoreError> {
    let g = Geom::conv(d)?;
    g.check_backward(n, dout, w, dinp.as_deref(), dw.as_deref(), db.as_deref())?;
    check_len("col", col.len(), batch(n, g.aux)?)?;
    let group = group_size(n, g.cols);
    if dinp.is_some() {
        check_min_len("scratch", scratch.len(), batch(group, g.aux)?)?;
    }
    if let Some(db) = db {
        add_bias_grad(db, dout, g.cols, exec);
    }
    if let Some(dw) = dw {
        // dW (C_out × C_in·k·k) += Σₙ doutₙ (C_out × P) · colₙᵀ (P × C_in·k·k), sample by sample
        let at = |s: usize| group_col(s, n, group, &g);
        kernels::matmul_nt_sum_in(dw, dout, g.grid, col, &at, n, g.cg, g.cols, g.rows, exec);
    }
    if let Some(dinp) = dinp {
        // One group's buffer per task, as many tasks as `scratch` holds buffers.
        grid_to_image(dinp, scratch, dout, w, &|dx| dx.fill(0.0), n, &g, exec);
    }
    Ok(())
}

/// Exact inference forward of a convolution: same shapes as [`conv2d_forward`], no scratch,
/// fixed summation order (module docs), bit-identical on every target.
pub fn conv2d_forward_exact(
    out: &mut [f32], inp: &[f32], w: &[f32], b: &[f32], n: usize, d: &ConvDims,
) -> Result<(), CoreError> {
    conv2d_forward_exact_with(out, inp, w, b, n, d, &Serial)
}

/// [`conv2d_forward_exact`] with the output planes spread over the threads of `exec` (the
/// same bits for every `exec`).
pub fn conv2d_forward_exact_with(
    out: &mut [f32], inp: &[f32], w: &[f32], b: &[f32], n: usize, d: &ConvDims, exec: &dyn Exec,
) -> Result<(), CoreError> {
    let g = Geom::conv(d)?;
    g.check_forward(n, out, inp, w, b)?;
    let plane = g.ih * g.iw;
    let macs = g.w * g.cols;
    for_each_plane(out, n, g.cg, g.cols, macs, exec, &|sample, co, oplane| {
        let x = &inp[sample * g.img..(sample + 1) * g.img];
        let (wrow, bias) = (&w[co * g.rows..(co + 1) * g.rows], b[co]);
        {
            for (gy, orow) in oplane.chunks_exact_mut(g.gw).enumerate() {
                orow.fill(0.0);
                for (ci, xplane) in x.chunks_exact(plane).enumerate() {
                    for ky in 0..g.k {
                        let iy = gy * g.s + ky;
                        if iy < g.p || iy - g.p >= g.ih {
                            continue;
                        }
                        let xrow = &xplane[(iy - g.p) * g.iw..(iy - g.p + 1) * g.iw];
                        for kx in 0..g.k {
                            let (lo, hi) = span(g.gw, g.iw, g.s, kx, g.p);
                            if lo == hi {
                                continue;
                            }
                            let wv = wrow[(ci * g.k + ky) * g.k + kx];
                            let xs = xrow[lo * g.s + kx - g.p..].iter().step_by(g.s);
                            for (acc, &xv) in orow[lo..hi].iter_mut().zip(xs) {
                                *acc += wv * xv;
                            }
                        }
                    }
                }
                for acc in orow.iter_mut() {
                    *acc += bias;
                }
            }
        }
    });
    Ok(())
}

/// One sample of an int8 kernel of [`crate::kernels::int8`]: `(out, xq, q, scales, bias, sx,
/// geometry)`.
pub(crate) type SampleI8 = fn(&mut [f32], &[i8], &[i8], &[f32], &[f32], f32, &Geom);

/// The int8 inference of both convolutions (`transposed`: the transposed one): checks the
/// buffers, then quantises each sample's input into `xq` and runs `kernel` on it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_i8(
    out: &mut [f32], xq: &mut [i8], inp: &[f32], q: &[i8], scales: &[f32], bias: &[f32], n: usize,
    d: &ConvDims, transposed: bool, kernel: SampleI8,
) -> Result<(), CoreError> {
    let g = if transposed { Geom::transpose(d)? } else { Geom::conv(d)? };
    let (in_len, out_len) = if transposed { (g.grid, g.img) } else { (g.img, g.grid) };
    check_len("out", out.len(), batch(n, out_len)?)?;
    check_len("inp", inp.len(), batch(n, in_len)?)?;
    check_len("q", q.len(), g.w)?;
    check_len("scales", scales.len(), d.out_c)?;
    check_len("bias", bias.len(), d.out_c)?;
    if xq.len() < in_len {
        return Err(CoreError::BufferLen { what: "xq", got: xq.len(), expected: in_len });
    }
    let xq = &mut xq[..in_len];
    for (o, x) in out.chunks_exact_mut(out_len).zip(inp.chunks_exact(in_len)) {
        let sx = quantize_row(xq, x);
        kernel(o, xq, q, scales, bias, sx, &g);
    }
    Ok(())
}

/// Int8 inference of a convolution: same shapes as [`conv2d_forward_exact`], weights `q` as i8
/// with one scale per output channel (`scales`, see [`crate::encoding::int8`]); `xq` (at least
/// `C_in·H·W`) holds each sample's input, quantised with one scale for the sample.
///
/// `out[c][y][x] = (Σ q·xq) as f32 · (sx · scales[c]) + bias[c]`, the integer sum over every
/// tap that falls inside the image. Integer sums are exact in any order, so every target gets
/// the same bits (exactly as [`crate::layers::dense::dense_forward_i8`], whose bounds on the
/// sum apply with `C_in·k²` terms).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_forward_i8(
    out: &mut [f32], xq: &mut [i8], inp: &[f32], q: &[i8], scales: &[f32], bias: &[f32], n: usize,
    d: &ConvDims,
) -> Result<(), CoreError> {
    forward_i8(out, xq, inp, q, scales, bias, n, d, false, kernels::int8::conv2d_i8)
}

#[cfg(test)]
#[path = "conv2d_tests.rs"]
pub(crate) mod tests;
