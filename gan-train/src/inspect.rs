//! Human-readable views: the layer table of a network (`summary`) and the contents of a weights
//! file (`inspect`).

use std::fmt::Write as _;

use gan_core::format::{self, WeightsFile};
use gan_core::spec::Spec;

/// A Keras-style table: layer, output shape, parameters, with totals.
pub fn summary_table(title: &str, spec: &Spec<'_>) -> String {
    let mut s = String::new();
    let rule = "─".repeat(62);
    let _ = writeln!(s, "{title}");
    let _ = writeln!(s, "{rule}");
    let _ = writeln!(s, "{:<4}{:<28}{:<16}{:>14}", "#", "Layer", "Output shape", "Params");
    let _ = writeln!(s, "{rule}");
    let _ = writeln!(s, "{:<4}{:<28}{:<16}{:>14}", "", "input", spec.input().to_string(), "");
    let mut total = 0usize;
    for info in spec.iter() {
        let params = info.weight_len + info.bias_len;
        total += params;
        let name = info.to_string();
        let _ = writeln!(
            s,
            "{:<4}{:<28}{:<16}{:>14}",
            info.index,
            name,
            info.out_shape.to_string(),
            group(params)
        );
    }
    let _ = writeln!(s, "{rule}");
    let bytes = spec.param_len() * 4;
    let _ = writeln!(
        s,
        "Total parameters: {}  ({} as f32 incl. alignment padding)",
        group(total),
        human_bytes(bytes)
    );
    let _ = writeln!(s, "Multiply-accumulates per sample: {}", group(spec.macs()));
    s
}

/// Describes a weights file: preamble, header, every tensor, checksum and validation result.
/// Returns the text and whether the file is valid.
pub fn describe_weights(bytes: &[u8]) -> (String, bool) {
    let mut s = String::new();
    let _ = writeln!(s, "file size:       {} bytes", bytes.len());
    let (header, data_at) = match format::parse_header(bytes) {
        Ok(h) => h,
        Err(e) => {
            let _ = writeln!(s, "INVALID: {e} (error code {})", e.code());
            return (s, false);
        }
    };
    // parse_header succeeded, so the preamble (and its version field) is there.
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    let weights = header.encoding().description();
    let _ = writeln!(s, "magic/version:   GANW v{version} ({weights})");
    let _ = writeln!(s, "model kind:      {:?}", header.kind);
    let _ = writeln!(s, "latent:          {} ({:?} noise)", header.latent, header.noise);
    let _ = writeln!(s, "classes:         {}", header.classes);
    let _ = writeln!(s, "input → output:  {} → {}", header.input, header.output);
    let _ = writeln!(s, "data:            {} bytes at offset {}", header.data_len, data_at);
    let _ = writeln!(s, "data CRC-32:     {:08x}", header.data_crc);
    if let Ok(spec) = header.spec() {
        s.push('\n');
        s.push_str(&summary_table("architecture", &spec));
    }
    s.push('\n');
    let _ = writeln!(
        s,
        "{:<7}{:<8}{:<6}{:>12}{:>12}",
        "layer", "tensor", "dtype", "offset", "elements"
    );
    for t in &header.tensors {
        let _ = writeln!(
            s,
            "{:<7}{:<8}{:<6}{:>12}{:>12}",
            t.layer,
            t.kind.name(),
            format!("{:?}", t.dtype).to_lowercase(),
            t.offset,
            t.len
        );
    }
    s.push('\n');
    match WeightsFile::parse(bytes) {
        Ok(w) => {
            if let Err(e) = crate::limits::check_network(&w.spec(), "the network") {
                let _ = writeln!(s, "valid file, but too large to run here: {e}");
                return (s, false);
            }
            let _ = writeln!(
                s,
                "valid: magic, version, header CRC, architecture, tensor table, bounds, data CRC and finite values all check out"
            );
            (s, true)
        }
        Err(e) => {
            let _ = writeln!(s, "INVALID: {e} (error code {})", e.code());
            (s, false)
        }
    }
}

/// `1234567` → `1,234,567`.
pub fn group(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes in KiB/MiB.
pub fn human_bytes(b: usize) -> String {
    if b >= 1 << 20 {
        format!("{:.2} MiB", b as f64 / (1u64 << 20) as f64)
    } else if b >= 1 << 10 {
        format!("{:.1} KiB", b as f64 / 1024.0)
    } else {
        format!("{b} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gan_core::spec::{Layer, Shape};

    #[test]
    fn table_lists_layers_and_totals() {
        let layers = [
            Layer::Dense { out: 256 },
            Layer::LeakyRelu { alpha: 0.2 },
            Layer::Dense { out: 784 },
            Layer::Tanh,
        ];
        let spec = Spec::new(Shape::flat(100), &layers).unwrap();
        let t = summary_table("G", &spec);
        assert!(t.contains("dense 100→256"), "{t}");
        assert!(t.contains("25,856"), "{t}");
        assert!(t.contains("201,488"), "{t}");
        assert!(t.contains("Total parameters: 227,344"), "{t}");
    }

    #[test]
    fn grouping() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(1234567), "1,234,567");
    }

    /// A tiny file with valid checksums whose transposed convolution would write a terabyte:
    /// described, but not called runnable.
    #[test]
    fn a_huge_activation_is_reported_not_run() {
        use gan_core::format::{self, Header, ModelKind, NoiseKind};
        let layers = [
            Layer::Reshape { to: Shape::image(1, 2, 2) },
            Layer::ConvTranspose2d { out_c: 1, k: 1, stride: 1_000_000, pad: 0 },
        ];
        let spec = Spec::new(Shape::flat(4), &layers).unwrap();
        assert!(spec.max_features() > 1 << 39, "a terabyte of f32");
        let header =
            Header::for_spec(ModelKind::Generator, &spec, 4, 0, NoiseKind::Gaussian).unwrap();
        let params = vec![0.5f32; spec.param_len()];
        let mut buf = vec![0u8; format::max_file_len(params.len())];
        let n = format::write(&mut buf, &header, &params).unwrap();
        let (text, ok) = describe_weights(&buf[..n]);
        assert!(!ok, "{text}");
        assert!(text.contains("too large to run here") && text.contains("activation"), "{text}");
    }

    #[test]
    fn describes_garbage_as_invalid() {
        let (text, ok) = describe_weights(b"hello world, not weights");
        assert!(!ok);
        assert!(text.contains("INVALID"), "{text}");
    }
}
