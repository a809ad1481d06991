//! `paystream token`: mint an HS256 bearer token for a user, signed with the configured
//! secret, so a developer or an operator can call the API by hand
//! (`curl -H "Authorization: Bearer $(paystream token --user …)"`). Production tokens come
//! from the identity provider; this only works where the HS256 secret is known.
//!
//! The token carries what the API checks (`paystream_api::auth`): `iss`, `aud`, `iat`, `nbf`,
//! `exp` at most `LIFETIME_MAX_S` after `iat`, and with `--operator` the operator scope that
//! deposits need.

use std::time::Duration;

use anyhow::{bail, Context};
use paystream_api::auth::{self, Claims, DEFAULT_AUDIENCE, DEFAULT_ISSUER, LIFETIME_MAX_S};
use uuid::Uuid;

#[derive(clap::Args)]
pub struct Args {
    /// The user the token speaks for (a new random one if omitted; printed to stderr).
    #[arg(long)]
    user: Option<Uuid>,
    /// An operator's token (scope "operator"): may deposit into any wallet.
    #[arg(long)]
    operator: bool,
    /// Lifetime of the token, at most 86400 (24 h).
    #[arg(long, default_value_t = 3600)]
    ttl_s: u64,
    /// The issuer (`iss`); the API's PAYSTREAM_JWT_ISSUER.
    #[arg(long, env = "PAYSTREAM_JWT_ISSUER", default_value = DEFAULT_ISSUER)]
    issuer: String,
    /// The audience (`aud`); the API's PAYSTREAM_JWT_AUDIENCE.
    #[arg(long, env = "PAYSTREAM_JWT_AUDIENCE", default_value = DEFAULT_AUDIENCE)]
    audience: String,
    /// The HS256 secret the API verifies with.
    #[arg(long, env = "PAYSTREAM_JWT_HS256_SECRET", hide_env_values = true)]
    jwt_hs256_secret: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let Some(secret) = args.jwt_hs256_secret else {
        bail!("set PAYSTREAM_JWT_HS256_SECRET (dev/lib.sh exports the local stack's)");
    };
    if args.ttl_s == 0 || args.ttl_s > LIFETIME_MAX_S {
        bail!("--ttl-s must be 1 to {LIFETIME_MAX_S} (the API refuses longer-lived tokens)");
    }
    let user = args.user.unwrap_or_else(Uuid::new_v4);
    let lifetime = Duration::from_secs(args.ttl_s);
    let mut claims =
        if args.operator { Claims::operator(user, lifetime) } else { Claims::user(user, lifetime) };
    claims.iss = args.issuer;
    claims.aud = args.audience;
    let token = auth::mint_hs256(secret.as_bytes(), &claims).context("signing the token")?;
    let role = if args.operator { "operator" } else { "user" };
    eprintln!("{role} {user}, valid for {} s", args.ttl_s);
    println!("{token}");
    Ok(())
}
