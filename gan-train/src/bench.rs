//! (in progress) Training and generation throughput benchmarks.

/// `gan-train bench` options.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {}

/// Runs the benchmarks.
pub fn run(_args: &BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
