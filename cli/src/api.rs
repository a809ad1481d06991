//! `paystream api`: the HTTP edge, until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use paystream_api::auth::{Authenticator, DEFAULT_AUDIENCE, DEFAULT_ISSUER};
use paystream_api::metrics::ApiMetrics;
use paystream_api::signature::Verifier;
use paystream_api::{openapi, secrets};
use paystream_api::{server, AppState};
use paystream_schemas::EventCodec;
use paystream_stack::{postgres, StackSettings};

#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, env = "PAYSTREAM_API_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Shared secret of HS256 bearer tokens (at least 32 bytes; the repository's development
    /// secret only with PAYSTREAM_DEV_MODE=1).
    #[arg(long, env = "PAYSTREAM_JWT_HS256_SECRET", hide_env_values = true)]
    jwt_hs256_secret: Option<String>,
    /// PEM file with the RSA public key of RS256 bearer tokens (instead of a secret).
    #[arg(long, env = "PAYSTREAM_JWT_RS256_PUBLIC_KEY")]
    jwt_rs256_public_key: Option<PathBuf>,
    /// The issuer (`iss`) every bearer token must name.
    #[arg(long, env = "PAYSTREAM_JWT_ISSUER", default_value = DEFAULT_ISSUER)]
    jwt_issuer: String,
    /// The audience (`aud`) every bearer token must name.
    #[arg(long, env = "PAYSTREAM_JWT_AUDIENCE", default_value = DEFAULT_AUDIENCE)]
    jwt_audience: String,
    /// Shared secret(s) of provider callback signatures, comma-separated during a rotation
    /// (the repository's development secret only with PAYSTREAM_DEV_MODE=1).
    #[arg(long, env = "PAYSTREAM_PROVIDER_WEBHOOK_SECRETS", hide_env_values = true, value_delimiter = ',')]
    provider_webhook_secrets: Vec<String>,
    /// How long to wait for the database at start.
    #[arg(long, default_value_t = 30)]
    timeout_s: u64,
    /// Print the OpenAPI document (what `GET /api/v1/openapi.json` serves) and exit, without
    /// connecting to anything: `paystream api --print-openapi > api/openapi.json`.
    #[arg(long)]
    print_openapi: bool,
}

pub async fn run(settings: &StackSettings, args: Args) -> anyhow::Result<()> {
    if args.print_openapi {
        use std::io::Write;
        std::io::stdout().write_all(openapi::document_json().as_bytes()).context("writing the document")?;
        return Ok(());
    }
    // Secrets are checked before anything is connected: a misconfigured deployment stops here,
    // with the variable to fix named.
    let dev_mode = secrets::dev_mode_from_env()?;
    let auth = match (&args.jwt_hs256_secret, &args.jwt_rs256_public_key) {
        (Some(secret), None) => Authenticator::hs256(secrets::hs256_secret(secret, dev_mode)?),
        (None, Some(path)) => {
            let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            Authenticator::rs256(&pem).context("parsing the RS256 public key")?
        }
        (Some(_), Some(_)) => bail!("configure either an HS256 secret or an RS256 public key, not both"),
        (None, None) => bail!("set PAYSTREAM_JWT_HS256_SECRET or PAYSTREAM_JWT_RS256_PUBLIC_KEY"),
    }
    .expecting(&args.jwt_issuer, &args.jwt_audience);
    let webhook_secrets = secrets::webhook_secrets(&args.provider_webhook_secrets, dev_mode)?;
    if dev_mode {
        tracing::warn!("{}=1: the repository's development secrets are accepted", secrets::DEV_MODE_VARIABLE);
    }
    let timeout = Duration::from_secs(args.timeout_s);
    let db = postgres::connect(&settings.wallet_db_url, timeout).await?;
    postgres::migrate_wallet(&db).await?;
    let ledger = postgres::connect(&settings.ledger_db_url, timeout).await?;
    postgres::migrate_ledger(&ledger).await?;
    // The read database: its own pool (its own role), read by the query endpoints.
    let query = postgres::connect(&settings.query_db_url, timeout).await?;
    postgres::migrate_query(&query).await?;
    let state = AppState {
        db,
        ledger,
        query,
        callbacks: Arc::new(Verifier::new(webhook_secrets)),
        codec: Arc::new(EventCodec::new(&settings.schema_registry_url)?),
        auth: Arc::new(auth),
        metrics: Arc::new(ApiMetrics::new()),
        topics: Default::default(),
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(listen = %args.listen, "serving the API");
    server::serve(listener, state, crate::shutdown::token().requested()).await?;
    tracing::info!("API stopped");
    Ok(())
}
