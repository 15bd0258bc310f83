//! Plain loops that define each kernel. Slow; used by tests and as the semantic reference.

/// `C (m×n) (+)= Σ_p A(i, p)·B(p, j)`, summed from 0.0 in order `p = 0, 1, …`.
#[allow(clippy::too_many_arguments)]
fn product(
    c: &mut [f32], m: usize, k: usize, n: usize, accumulate: bool, a: impl Fn(usize, usize) -> f32,
    b: impl Fn(usize, usize) -> f32, bias: impl Fn(usize) -> f32,
) {
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0f32;
            for p in 0..k {
                s += a(i, p) * b(p, j);
            }
            let dst = &mut c[i * n + j];
            *dst = if accumulate { *dst + s } else { s + bias(j) };
        }
    }
}

/// The training products' definitions, by where `A(i, p)` and `B(p, j)` are stored.
macro_rules! reference_products {
    ($($(#[$doc:meta])* $name:ident: a $a:expr, b $b:expr;)*) => {$(
        $(#[$doc])*
        pub fn $name(
            c: &mut [f32], a: &[f32], b: &[f32], m: usize, k: usize, n: usize, accumulate: bool,
        ) {
            let at: [fn(usize, usize, usize, usize, usize) -> usize; 2] = [$a, $b];
            let (ia, ib) = (at[0], at[1]);
            let (at_a, at_b) = (|i, p| a[ia(i, p, m, k, n)], |p, j| b[ib(p, j, m, k, n)]);
            product(c, m, k, n, accumulate, at_a, at_b, |_| 0.0);
        }
    )*};
}

reference_products! {
    /// `C = A·B` (`+=` when `accumulate`), A `m×k`, B `k×n`.
    matmul: a |i, p, _, k, _| i * k + p, b |p, j, _, _, n| p * n + j;
    /// `C = Aᵀ·B` (`+=` when `accumulate`), A stored `k×m`, B `k×n`.
    matmul_tn: a |i, p, m, _, _| p * m + i, b |p, j, _, _, n| p * n + j;
    /// `C = A·Bᵀ` (`+=` when `accumulate`), A `m×k`, B stored `n×k`.
    matmul_nt: a |i, p, _, k, _| i * k + p, b |p, j, _, k, _| j * k + p;
}

/// The exact kernel's definition: sequential sum from 0.0, then `+ bias[j]`.
pub fn matmul_exact(
    c: &mut [f32], a: &[f32], b: &[f32], bias: &[f32], m: usize, k: usize, n: usize,
) {
    let (ak, bn) = (|i: usize, p: usize| a[i * k + p], |p: usize, j: usize| b[p * n + j]);
    product(c, m, k, n, false, ak, bn, |j| bias[j]);
}
