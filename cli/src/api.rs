//! `paystream api`: the HTTP edge, until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use paystream_api::auth::Authenticator;
use paystream_api::metrics::ApiMetrics;
use paystream_api::signature::Verifier;
use paystream_api::{server, AppState};
use paystream_schemas::EventCodec;
use paystream_stack::{postgres, StackSettings};

#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, env = "PAYSTREAM_API_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Shared secret of HS256 bearer tokens.
    #[arg(long, env = "PAYSTREAM_JWT_HS256_SECRET", hide_env_values = true)]
    jwt_hs256_secret: Option<String>,
    /// PEM file with the RSA public key of RS256 bearer tokens (instead of a secret).
    #[arg(long, env = "PAYSTREAM_JWT_RS256_PUBLIC_KEY")]
    jwt_rs256_public_key: Option<PathBuf>,
    /// Shared secret(s) of provider callback signatures, comma-separated during a rotation.
    #[arg(long, env = "PAYSTREAM_PROVIDER_WEBHOOK_SECRETS", hide_env_values = true, value_delimiter = ',')]
    provider_webhook_secrets: Vec<String>,
    /// How long to wait for the database at start.
    #[arg(long, default_value_t = 30)]
    timeout_s: u64,
}

pub async fn run(settings: &StackSettings, args: Args) -> anyhow::Result<()> {
    let auth = match (&args.jwt_hs256_secret, &args.jwt_rs256_public_key) {
        (Some(secret), None) if secret.len() >= 32 => Authenticator::hs256(secret.as_bytes()),
        (Some(_), None) => bail!("the HS256 secret must be at least 32 bytes"),
        (None, Some(path)) => {
            let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            Authenticator::rs256(&pem).context("parsing the RS256 public key")?
        }
        (Some(_), Some(_)) => bail!("configure either an HS256 secret or an RS256 public key, not both"),
        (None, None) => bail!("set PAYSTREAM_JWT_HS256_SECRET or PAYSTREAM_JWT_RS256_PUBLIC_KEY"),
    };
    let secrets: Vec<Vec<u8>> = args
        .provider_webhook_secrets
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| s.as_bytes().to_vec())
        .collect();
    if secrets.is_empty() {
        bail!("set PAYSTREAM_PROVIDER_WEBHOOK_SECRETS (the provider's callback signing secret)");
    }
    let timeout = Duration::from_secs(args.timeout_s);
    let db = postgres::connect(&settings.wallet_db_url, timeout).await?;
    postgres::migrate_wallet(&db).await?;
    let ledger = postgres::connect(&settings.ledger_db_url, timeout).await?;
    postgres::migrate_ledger(&ledger).await?;
    let state = AppState {
        db,
        ledger,
        callbacks: Arc::new(Verifier::new(secrets)),
        codec: Arc::new(EventCodec::new(&settings.schema_registry_url)?),
        auth: Arc::new(auth),
        metrics: Arc::new(ApiMetrics::new()),
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(listen = %args.listen, "serving the API");
    server::serve(listener, state, crate::shutdown::signal()).await?;
    tracing::info!("API stopped");
    Ok(())
}
