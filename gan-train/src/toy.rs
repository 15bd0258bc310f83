//! (in progress) The toy GAN that learns y = x² on [-0.5, 0.5].

/// `gan-train toy` options.
#[derive(Clone, Debug, clap::Args)]
pub struct ToyArgs {}

/// Runs the toy GAN.
pub fn run(_args: &ToyArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
