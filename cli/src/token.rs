//! `paystream token`: mint an HS256 bearer token for a user, signed with the configured
//! secret, so a developer or an operator can call the API by hand
//! (`curl -H "Authorization: Bearer $(paystream token --user …)"`). Production tokens come
//! from the identity provider; this only works where the HS256 secret is known.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use jsonwebtoken::{EncodingKey, Header};
use paystream_api::auth::Claims;
use uuid::Uuid;

#[derive(clap::Args)]
pub struct Args {
    /// The user the token speaks for (a new random one if omitted; printed to stderr).
    #[arg(long)]
    user: Option<Uuid>,
    /// Lifetime of the token.
    #[arg(long, default_value_t = 3600)]
    ttl_s: u64,
    /// The HS256 secret the API verifies with.
    #[arg(long, env = "PAYSTREAM_JWT_HS256_SECRET", hide_env_values = true)]
    jwt_hs256_secret: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let Some(secret) = args.jwt_hs256_secret else {
        bail!("set PAYSTREAM_JWT_HS256_SECRET (dev/lib.sh exports the local stack's)");
    };
    let user = args.user.unwrap_or_else(Uuid::new_v4);
    let now_s = SystemTime::now().duration_since(UNIX_EPOCH).context("the clock is before 1970")?.as_secs();
    let claims = Claims { sub: user.to_string(), exp: now_s + args.ttl_s };
    let token =
        jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(secret.as_bytes()))?;
    eprintln!("user {user}, valid for {} s", args.ttl_s);
    println!("{token}");
    Ok(())
}
