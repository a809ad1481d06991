//! `paystream provider-sim`: the simulated payment provider, until SIGTERM or Ctrl-C.

use anyhow::Context;
use paystream_provider_sim::{Args, SimMetrics};

pub async fn run(args: Args) -> anyhow::Result<()> {
    let listen = args.listen;
    let config = args.into_config()?;
    let metrics = SimMetrics::register(&prometheus::Registry::new())?;
    let listener =
        tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    paystream_provider_sim::serve(listener, config, metrics, crate::shutdown::signal()).await?;
    Ok(())
}
