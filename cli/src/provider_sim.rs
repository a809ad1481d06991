//! `paystream provider-sim`: the simulated payment provider, until SIGTERM or Ctrl-C.

use anyhow::Context;
use paystream_api::secrets;
use paystream_provider_sim::{Args, SimMetrics};

pub async fn run(args: Args) -> anyhow::Result<()> {
    // The simulator signs with these; the repository's development secret is refused outside
    // dev mode, as the API refuses it (a production API would then trust a published key).
    let dev_mode = secrets::dev_mode_from_env()?;
    secrets::webhook_secrets(&args.webhook_secrets, dev_mode)?;
    let listen = args.listen;
    let config = args.into_config()?;
    let metrics = SimMetrics::register(&prometheus::Registry::new())?;
    let listener =
        tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    paystream_provider_sim::serve(listener, config, metrics, crate::shutdown::token().requested()).await?;
    Ok(())
}
