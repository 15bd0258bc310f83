//! Watching training: grids of samples (PNG), their progress over a run (animated GIF), the
//! per-step loss log (CSV) and its plot, and the scatter plot of the toy 2-D GAN.
//!
//! Plots are drawn with `plotters` into an RGB buffer and written with the `png` crate. Their
//! text uses DejaVu Sans, embedded in the binary (`assets/DejaVuSans.ttf`, licence beside it),
//! so no system font is needed.

use std::borrow::Cow;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context, bail, ensure};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

/// Grey level of the separator lines and of empty cells in a sample grid.
pub const GRID_BACKGROUND: u8 = 128;

/// Builds a grid of `n` grey-level images (`pixels`: `n × h × w`, row-major), `cols` per row,
/// each upscaled `scale` times by pixel repetition, with 1-pixel separator lines between the
/// cells and around the border. Returns `(image, width, height)`, the image `height × width`
/// bytes. Cells past `n` in the last row are left in the separator grey.
///
/// Zero `cols` or `scale` count as 1; only the complete images present in `pixels` are drawn.
pub fn grid_image(
    pixels: &[u8], n: usize, h: usize, w: usize, cols: usize, scale: usize,
) -> (Vec<u8>, usize, usize) {
    let scale = scale.max(1);
    let cols = cols.max(1);
    let size = h * w;
    let n = pixels.len().checked_div(size).map_or(0, |k| n.min(k));
    let rows = n.div_ceil(cols);
    let (cell_w, cell_h) = (w * scale, h * scale);
    let width = cols * (cell_w + 1) + 1;
    let height = rows * (cell_h + 1) + 1;
    let mut out = vec![GRID_BACKGROUND; width * height];
    for (i, img) in pixels.chunks_exact(size.max(1)).take(n).enumerate() {
        let x0 = (i % cols) * (cell_w + 1) + 1;
        let y0 = (i / cols) * (cell_h + 1) + 1;
        for (y, src_row) in img.chunks_exact(w).enumerate() {
            for dy in 0..scale {
                let start = (y0 + y * scale + dy) * width + x0;
                let dst = &mut out[start..start + cell_w];
                for (d, &p) in dst.chunks_exact_mut(scale).zip(src_row) {
                    d.fill(p);
                }
            }
        }
    }
    (out, width, height)
}

/// Writes [`grid_image`] of the samples as an 8-bit grey PNG.
pub fn save_grid_png(
    path: &Path, pixels: &[u8], n: usize, h: usize, w: usize, cols: usize, scale: usize,
) -> anyhow::Result<()> {
    ensure!(
        n > 0 && h > 0 && w > 0,
        "an image grid needs at least one non-empty image (n={n}, h={h}, w={w})"
    );
    ensure!(
        pixels.len() >= n * h * w,
        "{} pixel bytes cannot hold {n} images of {h}×{w}",
        pixels.len()
    );
    let (img, width, height) = grid_image(pixels, n, h, w, cols, scale);
    write_png(path, &img, width, height, png::ColorType::Grayscale)
}

/// Writes an 8-bit PNG (grey or RGB) from a row-major buffer.
fn write_png(
    path: &Path, data: &[u8], width: usize, height: usize, color: png::ColorType,
) -> anyhow::Result<()> {
    let (w, h) = (u32::try_from(width)?, u32::try_from(height)?);
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut encoder = png::Encoder::new(BufWriter::new(file), w, h);
    encoder.set_color(color);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer =
        encoder.write_header().with_context(|| format!("cannot write {}", path.display()))?;
    writer.write_image_data(data).with_context(|| format!("cannot write {}", path.display()))?;
    writer.finish().with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Writes an animated, endlessly looping grey GIF: each frame a `height × width` grey image
/// (e.g. from [`grid_image`]), shown `delay_cs` hundredths of a second; the last frame stays
/// five times as long (at least two seconds) so the final state can be seen before the loop
/// restarts.
pub fn save_gif(
    path: &Path, frames: &[Vec<u8>], width: usize, height: usize, delay_cs: u16,
) -> anyhow::Result<()> {
    ensure!(!frames.is_empty(), "a GIF needs at least one frame");
    let (w, h) = (u16::try_from(width)?, u16::try_from(height)?);
    ensure!(w > 0 && h > 0, "a GIF frame cannot be empty ({width}×{height})");
    for (i, f) in frames.iter().enumerate() {
        ensure!(
            f.len() == width * height,
            "frame {i} has {} bytes, expected {width}×{height}",
            f.len()
        );
    }
    let palette: Vec<u8> = (0..=255u8).flat_map(|g| [g, g, g]).collect();
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut encoder = gif::Encoder::new(BufWriter::new(file), w, h, &palette)?;
    encoder.set_repeat(gif::Repeat::Infinite)?;
    for (i, f) in frames.iter().enumerate() {
        let last = i + 1 == frames.len();
        let frame = gif::Frame {
            width: w,
            height: h,
            delay: if last { delay_cs.saturating_mul(5).max(200) } else { delay_cs },
            buffer: Cow::Borrowed(f),
            ..gif::Frame::default()
        };
        encoder.write_frame(&frame)?;
    }
    encoder.into_inner()?.flush().with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// One logged training step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LossRow {
    /// Global optimisation step (counted across resumes).
    pub step: u64,
    /// Epoch of the step.
    pub epoch: u32,
    /// Discriminator loss.
    pub d_loss: f32,
    /// Generator loss.
    pub g_loss: f32,
    /// Mean D(x) over the real batch.
    pub d_real: f32,
    /// Mean D(G(z)) over the fake batch.
    pub d_fake: f32,
    /// Fraction of real samples D classified as real.
    pub d_acc_real: f32,
    /// Fraction of fake samples D classified as fake.
    pub d_acc_fake: f32,
}

/// First line of a loss CSV; the columns are the fields of [`LossRow`] in order.
pub const CSV_HEADER: &str = "step,epoch,d_loss,g_loss,d_real,d_fake,d_acc_real,d_acc_fake";

impl LossRow {
    /// The CSV line (without newline). Floats use Rust's shortest round-trip form, so reading
    /// the file back gives the same bits.
    pub fn to_csv(&self) -> String {
        format!(
            "{},{},{},{},{},{},{},{}",
            self.step,
            self.epoch,
            self.d_loss,
            self.g_loss,
            self.d_real,
            self.d_fake,
            self.d_acc_real,
            self.d_acc_fake
        )
    }

    /// Parses a line written by [`LossRow::to_csv`].
    pub fn from_csv(line: &str) -> Option<LossRow> {
        let mut it = line.trim_end_matches('\r').split(',');
        let mut field = || it.next().map(str::trim);
        let row = LossRow {
            step: field()?.parse().ok()?,
            epoch: field()?.parse().ok()?,
            d_loss: field()?.parse().ok()?,
            g_loss: field()?.parse().ok()?,
            d_real: field()?.parse().ok()?,
            d_fake: field()?.parse().ok()?,
            d_acc_real: field()?.parse().ok()?,
            d_acc_fake: field()?.parse().ok()?,
        };
        field().is_none().then_some(row)
    }
}

/// The loss history of a run, and how much of it is already in the CSV file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LossLog {
    rows: Vec<LossRow>,
    /// `rows[..written]` are in the file.
    written: usize,
}

impl LossLog {
    /// An empty log.
    pub fn new() -> LossLog {
        LossLog::default()
    }

    /// Adds a step.
    pub fn push(&mut self, row: LossRow) {
        self.rows.push(row);
    }

    /// All steps, oldest first.
    pub fn rows(&self) -> &[LossRow] {
        &self.rows
    }

    /// Steps not yet appended to the CSV file.
    pub fn unwritten(&self) -> &[LossRow] {
        &self.rows[self.written..]
    }

    /// Appends the steps not yet written to the CSV at `path` (see [`append_csv_rows`]) and
    /// marks them written; call it as often as convenient.
    pub fn append_csv(&mut self, path: &Path) -> anyhow::Result<()> {
        append_csv_rows(path, self.unwritten())?;
        self.written = self.rows.len();
        Ok(())
    }

    /// Reads a loss CSV. A last line without its newline is the trace of an interrupted write
    /// and is ignored; any other malformed line is an error. The rows read count as written.
    pub fn read_csv(path: &Path) -> anyhow::Result<LossLog> {
        let text =
            fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        // Everything after the last newline is incomplete.
        let complete = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        let mut lines = complete.lines().enumerate();
        let mut rows = Vec::new();
        match lines.next() {
            None => {}
            Some((_, header)) if header.trim_end_matches('\r') == CSV_HEADER => {
                for (i, line) in lines {
                    if line.trim().is_empty() {
                        continue;
                    }
                    let row = LossRow::from_csv(line).with_context(|| {
                        format!("{}: line {} is not a loss row: {line:?}", path.display(), i + 1)
                    })?;
                    rows.push(row);
                }
            }
            Some(_) => {
                bail!("{} is not a loss log: its first line is not {CSV_HEADER:?}", path.display())
            }
        }
        Ok(LossLog { written: rows.len(), rows })
    }

    /// For resuming a run from a checkpoint taken after step `step`: reads the CSV at `path`
    /// (an empty log if there is none), drops the rows logged after `step` by the interrupted
    /// run, and rewrites the file (via a temporary file and a rename) when it changed.
    pub fn resume_csv(path: &Path, step: u64) -> anyhow::Result<LossLog> {
        if !path.exists() {
            return Ok(LossLog::new());
        }
        let mut log = LossLog::read_csv(path)?;
        let keep = log.rows.iter().take_while(|r| r.step <= step).count();
        let stale = log.rows.len() - keep;
        let on_disk = fs::metadata(path)?.len();
        log.rows.truncate(keep);
        let text = csv_text(&log.rows, true);
        if stale > 0 || on_disk != text.len() as u64 {
            let tmp = path.with_extension("csv.tmp");
            fs::write(&tmp, &text).with_context(|| format!("cannot write {}", tmp.display()))?;
            fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
        }
        log.written = log.rows.len();
        Ok(log)
    }
}

/// The CSV text of `rows`, each line ending in a newline.
fn csv_text(rows: &[LossRow], header: bool) -> String {
    let mut out = String::new();
    if header {
        out.push_str(CSV_HEADER);
        out.push('\n');
    }
    for r in rows {
        out.push_str(&r.to_csv());
        out.push('\n');
    }
    out
}

/// Appends `rows` to the loss CSV at `path`, creating it with its header if it does not exist
/// (or is empty). An incomplete last line left by an interrupted write is cut off first, so the
/// file stays well-formed across crashes and resumes. Refuses to append to a file whose first
/// line is not [`CSV_HEADER`].
pub fn append_csv_rows(path: &Path, rows: &[LossRow]) -> anyhow::Result<()> {
    let ctx = || format!("cannot append to {}", path.display());
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(ctx)?;
    let len = f.metadata().with_context(ctx)?.len();
    let keep = complete_prefix_len(&mut f, len).with_context(ctx)?;
    if keep > 0 {
        let mut first = vec![0u8; (CSV_HEADER.len() + 1).min(keep as usize)];
        f.seek(SeekFrom::Start(0)).with_context(ctx)?;
        f.read_exact(&mut first).with_context(ctx)?;
        let first = String::from_utf8_lossy(&first);
        ensure!(
            first.trim_end_matches(['\r', '\n']) == CSV_HEADER,
            "{} is not a loss log: its first line is not {CSV_HEADER:?}",
            path.display()
        );
    }
    if keep < len {
        f.set_len(keep).with_context(ctx)?;
    }
    f.seek(SeekFrom::Start(keep)).with_context(ctx)?;
    let text = csv_text(rows, keep == 0);
    let (first, rest) = text.as_bytes().split_at(text.len() / 2);
    f.write_all(first).with_context(ctx)?;
    crate::failpoint::hit("append-half");
    f.write_all(rest).with_context(ctx)?;
    f.flush().with_context(ctx)?;
    crate::failpoint::hit("append");
    Ok(())
}

/// Length of the file up to and including its last newline (0 when it has none).
fn complete_prefix_len(f: &mut File, len: u64) -> std::io::Result<u64> {
    let mut end = len;
    let mut buf = [0u8; 4096];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

// ---------------------------------------------------------------------------------------------
// Plots

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const FONT_FAMILY: &str = "sans-serif";

/// Registers the embedded font with plotters (once per process).
fn ensure_font() -> anyhow::Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, FONT).is_ok()
    });
    ensure!(ok, "the embedded plot font could not be loaded");
    Ok(())
}

const BLUE: RGBColor = RGBColor(31, 119, 180);
const ORANGE: RGBColor = RGBColor(230, 110, 10);
const GREEN: RGBColor = RGBColor(44, 160, 44);
const RED: RGBColor = RGBColor(214, 39, 40);
const GREY: RGBColor = RGBColor(120, 120, 120);
const PURPLE: RGBColor = RGBColor(148, 103, 189);

/// Turns a plotters error (whose backend error type varies) into an `anyhow` error.
fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plot drawing failed: {e:?}")
}

/// Draws into an RGB buffer of `width × height` and writes it as a PNG.
fn render_png(
    path: &Path, width: u32, height: u32,
    draw: impl FnOnce(DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    ensure_font()?;
    let mut buf = vec![255u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        draw(root.clone())?;
        root.present().map_err(plot_err)?;
    }
    write_png(path, &buf, width as usize, height as usize, png::ColorType::Rgb)
}

/// Trailing moving average over the last `window` values (fewer at the start); non-finite
/// values are skipped, and stay `NaN` in the output where no finite value is in the window.
fn moving_average(values: &[f32], window: usize) -> Vec<f64> {
    let window = window.max(1);
    let mut out = Vec::with_capacity(values.len());
    let (mut sum, mut count) = (0.0f64, 0usize);
    for (i, &v) in values.iter().enumerate() {
        if v.is_finite() {
            sum += f64::from(v);
            count += 1;
        }
        if i >= window {
            let old = values[i - window];
            if old.is_finite() {
                sum -= f64::from(old);
                count -= 1;
            }
        }
        out.push(if count > 0 { sum / count as f64 } else { f64::NAN });
    }
    out
}

/// Lower and upper y limits for loss curves: from the smallest value (or 0, when all are
/// non-negative) to the 99.5th percentile, so a few early spikes do not flatten the rest.
fn loss_range(series: &[&[f32]]) -> (f64, f64) {
    let mut v: Vec<f64> = series
        .iter()
        .flat_map(|s| s.iter())
        .filter(|x| x.is_finite())
        .map(|&x| f64::from(x))
        .collect();
    if v.is_empty() {
        return (0.0, 1.0);
    }
    v.sort_by(f64::total_cmp);
    let min = v[0];
    let hi = v[((v.len() - 1) as f64 * 0.995).round() as usize];
    let lo = if min >= 0.0 { 0.0 } else { min };
    let span = (hi - lo).max(1e-3);
    (
        if lo < 0.0 { lo - 0.05 * span } else { lo },
        // Head room for the legend.
        hi + 0.2 * span,
    )
}

/// x (step) range for the loss plot, widened when there is a single step.
fn step_range(rows: &[LossRow]) -> (f64, f64) {
    let first = rows.first().map_or(0, |r| r.step) as f64;
    let last = rows.last().map_or(0, |r| r.step) as f64;
    let (lo, hi) = if last > first { (first, last) } else { (first - 1.0, first + 1.0) };
    (lo, hi)
}

/// The frame of a chart: its caption and that caption's size in points, the margin, and the
/// widths of the x and y label areas, in pixels.
struct Frame<'t> {
    caption: (&'t str, u32),
    margin: u32,
    label_areas: (u32, u32),
}

/// A chart of f64 × f64 on a bitmap.
type Chart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

impl Frame<'_> {
    /// A chart in this frame on `area` over the x and y ranges, with its mesh drawn in the house
    /// style: the two axis descriptions, no light grid lines, x labels through `x_labels` if
    /// given (plotters' own otherwise).
    fn chart<'a, 'b>(
        &self, area: &'a DrawingArea<BitMapBackend<'b>, plotters::coord::Shift>,
        (x, y): (std::ops::Range<f64>, std::ops::Range<f64>), (x_desc, y_desc): (&str, &str),
        x_labels: Option<&dyn Fn(&f64) -> String>,
    ) -> anyhow::Result<Chart<'a, 'b>> {
        let mut chart = ChartBuilder::on(area)
            .caption(self.caption.0, (FONT_FAMILY, self.caption.1))
            .margin(self.margin)
            .x_label_area_size(self.label_areas.0)
            .y_label_area_size(self.label_areas.1)
            .build_cartesian_2d(x, y)
            .map_err(plot_err)?;
        let mut mesh = chart.configure_mesh();
        mesh.x_desc(x_desc)
            .y_desc(y_desc)
            .label_style((FONT_FAMILY, 15))
            .axis_desc_style((FONT_FAMILY, 17))
            .light_line_style(TRANSPARENT);
        if let Some(f) = x_labels {
            mesh.x_label_formatter(f);
        }
        mesh.draw().map_err(plot_err)?;
        Ok(chart)
    }
}

/// A chart's legend, in its upper right corner on a light background, in `size`-point type.
fn draw_legend<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>, size: u32) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT_FAMILY, size))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .draw()
        .map_err(plot_err)?;
    Ok(())
}

/// One panel of [`plot_losses`]: for each `(name, values, colour)`, the raw curve (faint) and
/// its moving average, with a legend.
#[allow(clippy::too_many_arguments)]
fn draw_panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>, caption: &str, y_desc: &str,
    steps: &[f64], (x0, x1): (f64, f64), (y0, y1): (f64, f64), series: &[(&str, &[f32], RGBColor)],
    window: usize, reference: Option<f64>,
) -> anyhow::Result<()> {
    let frame = Frame { caption: (caption, 22), margin: 12, label_areas: (48, 70) };
    let whole = |x: &f64| format!("{x:.0}");
    let mut chart = frame.chart(area, (x0..x1, y0..y1), ("step", y_desc), Some(&whole))?;
    if let Some(y) = reference {
        chart.draw_series(LineSeries::new([(x0, y), (x1, y)], GREY.mix(0.6))).map_err(plot_err)?;
    }
    let clamp = |y: f64| y.clamp(y0, y1);
    // Faint raw curves first, so the averages are drawn on top of all of them.
    for &(_, values, color) in series {
        let pts: Vec<(f64, f64)> = steps
            .iter()
            .zip(values.iter())
            .filter(|(_, v)| v.is_finite())
            .map(|(&x, &v)| (x, clamp(f64::from(v))))
            .collect();
        chart.draw_series(LineSeries::new(pts, color.mix(0.22))).map_err(plot_err)?;
    }
    for &(name, values, color) in series {
        let pts: Vec<(f64, f64)> = steps
            .iter()
            .zip(moving_average(values, window))
            .filter(|(_, v)| v.is_finite())
            .map(|(&x, v)| (x, clamp(v)))
            .collect();
        let label =
            if window > 1 { format!("{name} (mean of {window} steps)") } else { name.to_string() };
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(plot_err)?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], color.stroke_width(3)));
    }
    draw_legend(&mut chart, 15)
}

/// Plots a run's losses to a PNG (1200 × 900): the upper panel has the discriminator and
/// generator losses, the lower one the mean discriminator outputs D(x) on real and D(G(z)) on
/// generated samples. Each curve is drawn raw (faint) and as a trailing moving average.
pub fn plot_losses(path: &Path, rows: &[LossRow], title: &str) -> anyhow::Result<()> {
    ensure!(!rows.is_empty(), "no loss rows to plot");
    let steps: Vec<f64> = rows.iter().map(|r| r.step as f64).collect();
    let col = |f: fn(&LossRow) -> f32| rows.iter().map(f).collect::<Vec<f32>>();
    let (d_loss, g_loss) = (col(|r| r.d_loss), col(|r| r.g_loss));
    let (d_real, d_fake) = (col(|r| r.d_real), col(|r| r.d_fake));
    let window = (rows.len() / 40).clamp(1, 500);
    let x = step_range(rows);
    let loss_y = loss_range(&[&d_loss, &g_loss]);
    render_png(path, 1200, 900, |root| {
        let root = root.titled(title, (FONT_FAMILY, 28)).map_err(plot_err)?;
        let (upper, lower) = root.split_vertically(470);
        draw_panel(
            &upper,
            "losses",
            "loss",
            &steps,
            x,
            loss_y,
            &[("D loss", &d_loss, BLUE), ("G loss", &g_loss, ORANGE)],
            window,
            None,
        )?;
        // Probabilities (BCE, LSGAN) on [0, 1] around 0.5; raw scores (hinge, Wasserstein)
        // on their own range around 0.
        let scores = d_real.iter().chain(&d_fake).filter(|v| v.is_finite());
        let (lo, hi) = scores.fold((0.0f32, 1.0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let (y, mid) = if lo >= 0.0 && hi <= 1.0 {
            ((0.0, 1.0), 0.5)
        } else {
            let r = loss_range(&[&d_real, &d_fake]);
            let pad = 0.05 * (r.1 - r.0);
            ((r.0.min(-pad), r.1), 0.0)
        };
        draw_panel(
            &lower,
            "discriminator outputs",
            "mean D output",
            &steps,
            x,
            y,
            &[("D(x), real", &d_real, GREEN), ("D(G(z)), fake", &d_fake, RED)],
            window,
            Some(mid),
        )
    })
}

/// Plots scores over a run to a PNG (1200 × 900): the upper panel has the classifier-FID
/// (lower is better), the lower one the scores in [0, 1] named in `lower` (higher is better).
pub fn plot_scores(
    path: &Path, title: &str, steps: &[u64], fid: &[f32], lower: &[(&str, Vec<f32>)],
) -> anyhow::Result<()> {
    ensure!(!steps.is_empty() && fid.len() == steps.len(), "no scores to plot");
    let x: Vec<f64> = steps.iter().map(|&s| s as f64).collect();
    let (first, last) = (x[0], x[x.len() - 1]);
    let range = if last > first { (first, last) } else { (first - 1.0, first + 1.0) };
    let colours = [GREEN, BLUE, ORANGE, PURPLE, RED];
    let series: Vec<(&str, &[f32], RGBColor)> =
        lower.iter().zip(colours).map(|((n, v), c)| (*n, &v[..], c)).collect();
    render_png(path, 1200, 900, |root| {
        let root = root.titled(title, (FONT_FAMILY, 28)).map_err(plot_err)?;
        let (upper, bottom) = root.split_vertically(450);
        let fid_y = loss_range(&[fid]);
        draw_panel(
            &upper,
            "classifier-FID (lower is better)",
            "FID",
            &x,
            range,
            fid_y,
            &[("FID", fid, RED)],
            1,
            None,
        )?;
        draw_panel(&bottom, "higher is better", "score", &x, range, (0.0, 1.15), &series, 1, None)
    })
}

/// Square plot range holding every finite point, with a margin.
fn scatter_range(points: &[(f32, f32)]) -> ((f64, f64), (f64, f64)) {
    let finite = points.iter().filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in finite {
        let (x, y) = (f64::from(x), f64::from(y));
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return ((-1.0, 1.0), (-1.0, 1.0));
    }
    let half = ((x1 - x0).max(y1 - y0) / 2.0 * 1.1).max(1e-3);
    let (cx, cy) = ((x0 + x1) / 2.0, (y0 + y1) / 2.0);
    ((cx - half, cx + half), (cy - half, cy + half))
}

/// Plots real and generated 2-D points to a square PNG (800 × 800) in two colours with a
/// legend; both axes have the same scale, so shapes are not distorted.
pub fn plot_scatter(
    path: &Path, real: &[(f32, f32)], fake: &[(f32, f32)], title: &str,
) -> anyhow::Result<()> {
    let all: Vec<(f32, f32)> = real.iter().chain(fake).copied().collect();
    let ((x0, x1), (y0, y1)) = scatter_range(&all);
    let pts = |s: &[(f32, f32)]| -> Vec<(f64, f64)> {
        s.iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|&(x, y)| (f64::from(x), f64::from(y)))
            .collect()
    };
    let (real, fake) = (pts(real), pts(fake));
    render_png(path, 800, 800, |root| {
        let frame = Frame { caption: (title, 26), margin: 16, label_areas: (44, 60) };
        let mut chart = frame.chart(&root, (x0..x1, y0..y1), ("x", "y"), None)?;
        for (name, points, color) in [("real", &real, BLUE), ("generated", &fake, ORANGE)] {
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.mix(0.55).filled())))
                .map_err(plot_err)?
                .label(format!("{name} ({})", points.len()))
                .legend(move |(x, y)| Circle::new((x + 10, y), 5, color.filled()));
        }
        draw_legend(&mut chart, 16)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes a PNG: `(pixels, width, height, channels)`.
    fn decode_png(path: &Path) -> (Vec<u8>, u32, u32, usize) {
        let decoder = png::Decoder::new(std::io::BufReader::new(File::open(path).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        (buf, info.width, info.height, info.color_type.samples())
    }

    fn row(step: u64) -> LossRow {
        let t = step as f32;
        LossRow {
            step,
            epoch: (step / 50) as u32,
            d_loss: 1.4 - 0.5 * (1.0 - (-t / 80.0).exp()) + 0.1 * (t * 0.7).sin(),
            g_loss: 0.7 + 0.6 * (1.0 - (-t / 60.0).exp()) + 0.15 * (t * 1.3).cos(),
            d_real: 0.5 + 0.2 * (1.0 - (-t / 50.0).exp()) + 0.05 * (t * 0.9).sin(),
            d_fake: 0.5 - 0.2 * (1.0 - (-t / 50.0).exp()) + 0.05 * (t * 1.1).cos(),
            d_acc_real: 0.8,
            d_acc_fake: 0.75,
        }
    }

    #[test]
    fn grid_layout_and_scaling() {
        // Three 2×2 images in a 2-column grid, scale 2.
        let pixels: Vec<u8> = (0..12).map(|v| v as u8 * 10).collect();
        let (img, w, h) = grid_image(&pixels, 3, 2, 2, 2, 2);
        assert_eq!((w, h), (2 * (4 + 1) + 1, 2 * (4 + 1) + 1));
        assert_eq!(img.len(), w * h);
        let at = |x: usize, y: usize| img[y * w + x];
        // Border and separators.
        assert!((0..w).all(|x| at(x, 0) == GRID_BACKGROUND && at(x, 5) == GRID_BACKGROUND));
        assert!((0..h).all(|y| at(0, y) == GRID_BACKGROUND && at(5, y) == GRID_BACKGROUND));
        // Image 0 pixel (0,1) = 10 fills a 2×2 block at x 3..5, y 1..3.
        assert_eq!([at(3, 1), at(4, 1), at(3, 2), at(4, 2)], [10; 4]);
        // Image 1, pixel (1,1) = 70, at the bottom right of cell (1, 0).
        assert_eq!(at(9, 4), 70);
        // Image 2 in the second row, first pixel 80; the empty fourth cell stays grey.
        assert_eq!(at(1, 6), 80);
        assert_eq!(at(8, 8), GRID_BACKGROUND);
    }

    #[test]
    fn grid_png_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grid.png");
        let pixels: Vec<u8> = (0..4 * 28 * 28).map(|i| (i % 256) as u8).collect();
        save_grid_png(&path, &pixels, 4, 28, 28, 2, 3).unwrap();
        let (img, w, h, ch) = decode_png(&path);
        assert_eq!(ch, 1);
        let (expected, ew, eh) = grid_image(&pixels, 4, 28, 28, 2, 3);
        assert_eq!((w as usize, h as usize), (ew, eh));
        assert_eq!(img, expected);
        assert!(save_grid_png(&path, &pixels[..10], 4, 28, 28, 2, 3).is_err());
    }

    #[test]
    fn gif_is_written_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("progress.gif");
        let frames: Vec<Vec<u8>> = (0..3).map(|k| vec![k * 100; 6 * 4]).collect();
        save_gif(&path, &frames, 6, 4, 10).unwrap();
        let bytes = fs::read(&path).unwrap();
        assert!(bytes.starts_with(b"GIF89a"));
        assert_eq!(bytes.last(), Some(&0x3b), "GIF trailer");
        assert!(bytes.windows(11).any(|w| w == b"NETSCAPE2.0"), "loop extension");
        let mut decoder = gif::DecodeOptions::new().read_info(File::open(&path).unwrap()).unwrap();
        let mut delays = Vec::new();
        while let Some(frame) = decoder.read_next_frame().unwrap() {
            assert_eq!((frame.width, frame.height), (6, 4));
            assert_eq!(frame.buffer[0], frames[delays.len()][0]);
            delays.push(frame.delay);
        }
        assert_eq!(delays, vec![10, 10, 200], "last frame held longer");
        assert!(save_gif(&path, &frames, 5, 4, 10).is_err());
        assert!(save_gif(&path, &[], 6, 4, 10).is_err());
    }

    #[test]
    fn csv_round_trip_and_resume() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("losses.csv");
        let mut log = LossLog::new();
        for s in 0..5 {
            log.push(row(s));
        }
        log.append_csv(&path).unwrap();
        assert!(log.unwritten().is_empty());
        log.push(LossRow { d_loss: f32::NAN, ..row(5) });
        log.append_csv(&path).unwrap();
        log.append_csv(&path).unwrap(); // nothing new: no duplicate rows
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().next(), Some(CSV_HEADER));
        assert_eq!(text.lines().count(), 7);
        let back = LossLog::read_csv(&path).unwrap();
        assert_eq!(back.rows().len(), 6);
        assert_eq!(&back.rows()[..5], &log.rows()[..5]);
        assert!(back.rows()[5].d_loss.is_nan());
        assert!(back.unwritten().is_empty());

        // A crash in the middle of a line: reading ignores it, appending cuts it off.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"6,0,0.69").unwrap();
        drop(f);
        assert_eq!(LossLog::read_csv(&path).unwrap().rows().len(), 6);
        append_csv_rows(&path, &[row(6)]).unwrap();
        let back = LossLog::read_csv(&path).unwrap();
        assert_eq!(back.rows().len(), 7);
        assert_eq!(back.rows()[6], row(6));

        // Resuming from a checkpoint at step 3 drops the later rows from the file.
        let mut resumed = LossLog::resume_csv(&path, 3).unwrap();
        assert_eq!(resumed.rows().len(), 4);
        resumed.push(row(4));
        resumed.append_csv(&path).unwrap();
        let back = LossLog::read_csv(&path).unwrap();
        assert_eq!(back.rows().iter().map(|r| r.step).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
        assert!(LossLog::resume_csv(&dir.path().join("none.csv"), 9).unwrap().rows().is_empty());

        // A malformed complete line and a foreign file are errors.
        fs::write(&path, format!("{CSV_HEADER}\n1,0,x,1,1,1,1,1\n")).unwrap();
        assert!(LossLog::read_csv(&path).is_err());
        fs::write(&path, "a,b\n1,2\n").unwrap();
        assert!(LossLog::read_csv(&path).is_err());
        assert!(append_csv_rows(&path, &[row(0)]).is_err());
        // A header cut short is rewritten whole.
        fs::write(&path, "step,ep").unwrap();
        append_csv_rows(&path, &[row(0)]).unwrap();
        assert_eq!(LossLog::read_csv(&path).unwrap().rows(), &[row(0)]);
    }

    /// Number of distinct RGB colours in an image.
    fn colours(img: &[u8]) -> usize {
        let mut set: Vec<[u8; 3]> = img.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect();
        set.sort_unstable();
        set.dedup();
        set.len()
    }

    #[test]
    fn loss_plot_is_a_real_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("losses.png");
        let rows: Vec<LossRow> = (0..400).map(row).collect();
        plot_losses(&path, &rows, "MNIST GAN, test run").unwrap();
        let (img, w, h, ch) = decode_png(&path);
        assert_eq!((w, h, ch), (1200, 900, 3));
        assert!(colours(&img) > 50, "plot looks blank");
        // The curves' colours are present.
        let has = |c: RGBColor| img.chunks_exact(3).any(|p| p == [c.0, c.1, c.2]);
        assert!(has(BLUE) && has(ORANGE) && has(GREEN) && has(RED));
        // A few rows and a single row also plot; no rows is an error.
        plot_losses(&path, &rows[..3], "short").unwrap();
        plot_losses(&path, &rows[..1], "one").unwrap();
        assert!(plot_losses(&path, &[], "none").is_err());
    }

    #[test]
    fn scatter_plot_is_a_real_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scatter.png");
        let ring: Vec<(f32, f32)> = (0..200)
            .map(|i| {
                let a = i as f32 * 0.1;
                (2.0 * a.cos(), 2.0 * a.sin())
            })
            .collect();
        let blob: Vec<(f32, f32)> =
            (0..200).map(|i| ((i % 20) as f32 * 0.05 - 0.5, (i / 20) as f32 * 0.1 - 0.5)).collect();
        plot_scatter(&path, &ring, &blob, "toy 2-D GAN").unwrap();
        let (img, w, h, ch) = decode_png(&path);
        assert_eq!((w, h, ch), (800, 800, 3));
        assert!(colours(&img) > 20, "plot looks blank");
        plot_scatter(&path, &[], &[(f32::NAN, 0.0)], "empty").unwrap();
    }

    #[test]
    fn moving_average_skips_non_finite() {
        let ma = moving_average(&[1.0, 3.0, f32::NAN, 5.0], 2);
        assert_eq!(ma[0], 1.0);
        assert_eq!(ma[1], 2.0);
        assert_eq!(ma[2], 3.0);
        assert_eq!(ma[3], 5.0);
    }
}
