//! Augmentation of what the discriminator sees: random translations applied alike to real and
//! generated images, differentiably (the generator's gradient is shifted back), so that a
//! discriminator on a small data set cannot simply memorise the real images.
//!
//! Each image is moved by `(dx, dy)`, both drawn uniformly from `-s..=s`; the pixels moved in
//! from outside take the background value (black: `-1` for Tanh-scaled data, `0` for
//! Sigmoid-scaled). The shift is linear in the image (plus a constant), and its adjoint moves
//! gradients the other way, dropping what falls off the edge.

use gan_core::noise::NoiseRng;
use rand_core::Rng;

/// One image's shift in pixels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shift {
    /// Columns to the right (negative: left).
    pub dx: i32,
    /// Rows down (negative: up).
    pub dy: i32,
}

/// Draws one shift per image, each coordinate uniform in `-max..=max`.
pub fn draw(shifts: &mut [Shift], max: u32, rng: &mut NoiseRng) {
    let span = 2 * max + 1;
    for s in shifts {
        s.dx = (rng.next_u32() % span) as i32 - max as i32;
        s.dy = (rng.next_u32() % span) as i32 - max as i32;
    }
}

/// Shifts the images at the start of each row of `rows` (rows of `stride` values, the first
/// `h·w` of each an image) in place: `out[y][x] = in[y − dy][x − dx]`, or `fill` where that is
/// outside the image. `tmp` holds one image.
pub fn shift_rows(
    rows: &mut [f32], stride: usize, h: usize, w: usize, shifts: &[Shift], fill: f32,
    tmp: &mut Vec<f32>,
) {
    move_rows(rows, stride, h, w, shifts, -1, fill, tmp);
}

/// The adjoint of [`shift_rows`] for gradients: `out[y][x] = in[y + dy][x + dx]`, or 0 where
/// that is outside the image (those pixels did not reach the discriminator).
pub fn unshift_rows(
    rows: &mut [f32], stride: usize, h: usize, w: usize, shifts: &[Shift], tmp: &mut Vec<f32>,
) {
    move_rows(rows, stride, h, w, shifts, 1, 0.0, tmp);
}

/// `out[y][x] = in[y + sign·dy][x + sign·dx]`, or `outside` beyond the edge, for each row's
/// image.
#[allow(clippy::too_many_arguments)]
fn move_rows(
    rows: &mut [f32], stride: usize, h: usize, w: usize, shifts: &[Shift], sign: i32, outside: f32,
    tmp: &mut Vec<f32>,
) {
    tmp.resize(h * w, 0.0);
    for (row, s) in rows.chunks_exact_mut(stride).zip(shifts) {
        if *s == Shift::default() {
            continue;
        }
        tmp.copy_from_slice(&row[..h * w]);
        for y in 0..h {
            for x in 0..w {
                let (sy, sx) = (y as i32 + sign * s.dy, x as i32 + sign * s.dx);
                let inside = (0..h as i32).contains(&sy) && (0..w as i32).contains(&sx);
                row[y * w + x] = if inside { tmp[sy as usize * w + sx as usize] } else { outside };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shift_moves_pixels_and_fills_with_the_background() {
        let (h, w) = (3, 4);
        let mut img: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let mut tmp = vec![];
        shift_rows(&mut img, 12, h, w, &[Shift { dx: 1, dy: -1 }], -1.0, &mut tmp);
        #[rustfmt::skip]
        let want = [
            -1.0, 4.0, 5.0, 6.0,
            -1.0, 8.0, 9.0, 10.0,
            -1.0, -1.0, -1.0, -1.0,
        ];
        assert_eq!(img, want);
    }

    /// `<shift(a) − shift(0), g> = <a, unshift(g)>` for every image `a` and gradient `g`: the
    /// backward pass is the exact adjoint of the (affine) forward one. Rows carry extra
    /// values after the image (a class one-hot), which neither touches.
    #[test]
    fn unshift_is_the_adjoint_of_shift() {
        let (h, w, stride) = (5, 6, 33);
        let mut rng = gan_core::noise::rng(9);
        let mut shifts = vec![Shift::default(); 4];
        draw(&mut shifts, 2, &mut rng);
        shifts[0] = Shift { dx: -2, dy: 2 };
        let rand = |rng: &mut NoiseRng, n| -> Vec<f32> {
            (0..n).map(|_| gan_core::noise::unit(rng) - 0.5).collect()
        };
        let a = rand(&mut rng, 4 * stride);
        let g = rand(&mut rng, 4 * stride);
        let mut tmp = vec![];
        let (mut sa, mut s0) = (a.clone(), vec![0.0; a.len()]);
        shift_rows(&mut sa, stride, h, w, &shifts, -1.0, &mut tmp);
        shift_rows(&mut s0, stride, h, w, &shifts, -1.0, &mut tmp);
        let mut ug = g.clone();
        unshift_rows(&mut ug, stride, h, w, &shifts, &mut tmp);
        for r in 0..4 {
            let span = r * stride..r * stride + h * w;
            let lhs: f64 = span.clone().map(|i| ((sa[i] - s0[i]) * g[i]) as f64).sum();
            let rhs: f64 = span.clone().map(|i| (a[i] * ug[i]) as f64).sum();
            assert!((lhs - rhs).abs() < 1e-5, "row {r}: {lhs} vs {rhs}");
            assert_eq!(sa[span.end..(r + 1) * stride], a[span.end..(r + 1) * stride]);
            assert_eq!(ug[span.end..(r + 1) * stride], g[span.end..(r + 1) * stride]);
        }
    }

    #[test]
    fn shifts_cover_the_range_evenly() {
        let mut rng = gan_core::noise::rng(1);
        let mut s = vec![Shift::default(); 5000];
        draw(&mut s, 2, &mut rng);
        for v in -2..=2 {
            let n = s.iter().filter(|s| s.dx == v).count();
            assert!((800..1200).contains(&n), "dx = {v}: {n} of 5000");
        }
        assert!(s.iter().all(|s| s.dy.abs() <= 2));
    }
}
