//! Bit-exactness of the inference path against stored golden vectors.
//!
//! A fixed generator (the `mcu` architecture), weights from a fixed seed, noise from a fixed
//! seed: the output of `gan_core::model::infer` must equal `tests/golden/*.bin` byte for byte.
//! The firmware test runs the same arithmetic on Cortex-M under QEMU and compares with the host,
//! so together they pin the bits on x86-64, ARMv7E-M and ARMv6-M.
//!
//! After an intentional change to the arithmetic, regenerate with
//! `GAN_BLESS=1 cargo test -p gan-tests --test golden` and explain the change in the commit.

use std::path::PathBuf;

use gan_core::format::NoiseKind;
use gan_core::init::{Init, init_params};
use gan_core::kernels::Serial;
use gan_core::model;
use gan_core::noise;
use gan_core::spec::{Layer, Shape, Spec};

/// The `mcu` generator (the firmware's default architecture).
const MCU: [Layer; 7] = gan_core::presets::MCU_GENERATOR;

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("golden").join(name)
}

fn check_golden(name: &str, actual: &[u8]) {
    let path = golden_path(name);
    if std::env::var_os("GAN_BLESS").is_some() {
        std::fs::write(&path, actual).unwrap();
        eprintln!("wrote {}", path.display());
        return;
    }
    let expected = std::fs::read(&path).unwrap_or_else(|e| {
        panic!("missing golden file {} ({e}); run with GAN_BLESS=1 once", path.display())
    });
    assert_eq!(expected.len(), actual.len(), "{name}: length differs");
    if let Some(i) = expected.iter().zip(actual).position(|(a, b)| a != b) {
        panic!(
            "{name}: first differing byte at {i} (expected {:#04x}, got {:#04x})",
            expected[i], actual[i]
        );
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Weights and three noise vectors from fixed seeds, inference at batch 1 and batch 3.
#[test]
fn mcu_generator_inference_is_bit_exact() {
    let spec = Spec::new(Shape::flat(64), &MCU).unwrap();
    let mut params = vec![0.0f32; spec.param_len()];
    init_params(&spec, &mut params, Init::HeNormal, &mut noise::rng(1234)).unwrap();
    // Non-zero biases, so the bias path is pinned too.
    for info in spec.iter() {
        for (i, b) in params[info.bias_range()].iter_mut().enumerate() {
            *b = (i % 7) as f32 * 0.01 - 0.03;
        }
    }
    let mut rng = noise::rng(99);
    let mut z = vec![0.0f32; 3 * 64];
    for row in z.chunks_exact_mut(64) {
        noise::generator_input(NoiseKind::Gaussian, &mut rng, 64, 0, row);
    }
    check_golden("mcu_noise_seed99.bin", &f32_bytes(&z));

    let mut out1 = vec![0.0f32; 3 * 784];
    let mut scratch = vec![0.0f32; spec.infer_scratch_len(1)];
    for (zi, oi) in z.chunks_exact(64).zip(out1.chunks_exact_mut(784)) {
        model::infer(&spec, &params, zi, oi, &mut scratch, 1).unwrap();
    }
    check_golden("mcu_infer_seed99.bin", &f32_bytes(&out1));
    let pixels: Vec<u8> = out1.iter().map(|&v| gan_core::to_pixel(v)).collect();
    check_golden("mcu_pixels_seed99.bin", &pixels);

    // Batching does not change any output's bits.
    let mut out3 = vec![0.0f32; 3 * 784];
    let mut scratch3 = vec![0.0f32; spec.infer_scratch_len(3)];
    model::infer(&spec, &params, &z, &mut out3, &mut scratch3, 3).unwrap();
    assert_eq!(f32_bytes(&out1), f32_bytes(&out3));
}

/// The same network and noise through the int8 path: the encoded data section (quantised
/// weights, scales, biases; by length and CRC) and the outputs are pinned.
#[test]
fn mcu_generator_int8_inference_is_bit_exact() {
    use gan_core::encoding::{Encoded, Encoding};
    use gan_core::format::{Header, ModelKind};
    let spec = Spec::new(Shape::flat(64), &MCU).unwrap();
    let mut params = vec![0.0f32; spec.param_len()];
    init_params(&spec, &mut params, Init::HeNormal, &mut noise::rng(1234)).unwrap();
    let h =
        Header::for_spec_as(ModelKind::Generator, &spec, 64, 0, NoiseKind::Gaussian, Encoding::I8)
            .unwrap();
    let mut data = vec![0u8; h.data_len as usize];
    Encoding::I8.encode(&spec, &params, None, &mut data).unwrap();
    // Length and CRC-32 of the 192 KB data section (the section itself is not stored).
    let mut summary = (data.len() as u32).to_le_bytes().to_vec();
    summary.extend_from_slice(&gan_core::format::crc32(&data).to_le_bytes());
    check_golden("mcu_int8_data_len_crc.bin", &summary);

    // Aligned copy of the data section, as the firmware reads it in place.
    let mut words = vec![0u32; data.len().div_ceil(4)];
    let aligned: &mut [u8] = bytemuck_bytes(&mut words);
    aligned[..data.len()].copy_from_slice(&data);
    let data = &aligned[..data.len()];

    let mut rng = noise::rng(99);
    let mut z = vec![0.0f32; 3 * 64];
    for row in z.chunks_exact_mut(64) {
        noise::generator_input(NoiseKind::Gaussian, &mut rng, 64, 0, row);
    }
    let mut out = vec![0.0f32; 3 * 784];
    let mut scratch = vec![0.0f32; Encoding::I8.infer_scratch_len(&spec, 3)];
    let weights = Encoded::I8 { data, tensors: &h.tensors };
    model::infer_encoded(&spec, &weights, &z, &mut out, &mut scratch, 3, &Serial).unwrap();
    check_golden("mcu_int8_infer_seed99.bin", &f32_bytes(&out));
}

/// The bytes of a `u32` buffer (4-byte aligned).
fn bytemuck_bytes(words: &mut [u32]) -> &mut [u8] {
    // SAFETY: u8 has no alignment or validity requirements; the length covers the same memory.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), words.len() * 4) }
}
