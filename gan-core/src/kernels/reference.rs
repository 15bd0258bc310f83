//! Plain loops that define each kernel. Slow; used by tests and as the semantic reference.

/// `C = A·B` (`+=` when `accumulate`), A `m×k`, B `k×n`.
pub fn matmul(c: &mut [f32], a: &[f32], b: &[f32], m: usize, k: usize, n: usize, accumulate: bool) {
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0f32;
            for p in 0..k {
                s += a[i * k + p] * b[p * n + j];
            }
            let dst = &mut c[i * n + j];
            *dst = if accumulate { *dst + s } else { s };
        }
    }
}

/// `C = Aᵀ·B` (`+=` when `accumulate`), A stored `k×m`, B `k×n`.
pub fn matmul_tn(
    c: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0f32;
            for p in 0..k {
                s += a[p * m + i] * b[p * n + j];
            }
            let dst = &mut c[i * n + j];
            *dst = if accumulate { *dst + s } else { s };
        }
    }
}

/// `C = A·Bᵀ` (`+=` when `accumulate`), A `m×k`, B stored `n×k`.
pub fn matmul_nt(
    c: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0f32;
            for p in 0..k {
                s += a[i * k + p] * b[j * k + p];
            }
            let dst = &mut c[i * n + j];
            *dst = if accumulate { *dst + s } else { s };
        }
    }
}

/// The exact kernel's definition: sequential sum from 0.0, then `+ bias[j]`.
pub fn matmul_exact(
    c: &mut [f32],
    a: &[f32],
    b: &[f32],
    bias: &[f32],
    m: usize,
    k: usize,
    n: usize,
) {
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0f32;
            for p in 0..k {
                s += a[i * k + p] * b[p * n + j];
            }
            c[i * n + j] = s + bias[j];
        }
    }
}
