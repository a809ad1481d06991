//! The read side (CQRS): a payment's status, a caller's history and search, a payment's
//! timeline, served from the read database `query` (fed only from Kafka: `payments.view`,
//! `payments.timeline` and the CDC of `users`/`wallets`, by the JDBC sink connectors in
//! `connect/query-*.json`; schema in `migrations/query/`).
//!
//! Who owns a payment is decided at read time: the view names its wallet, the replicated
//! `wallets` row names the wallet's user, and the replicated `users` row gives the name and
//! phone, so a change of a user's phone shows in every payment of theirs as soon as its CDC
//! event is applied. Someone else's payment is answered exactly like one that does not exist
//! (404), so ids cannot be probed.
//!
//! The one question the read database cannot answer is "accepted, but not projected yet": the
//! write side knows that first. On a miss, and only then, the wallet database is asked whether
//! the caller's wallet holds a payment with this id (a primary-key lookup); if it does, the answer
//! is 404 `not-yet-projected` with `Retry-After`, so a client polling right after
//! `POST /api/v1/payment` knows to come back. Nothing the API serves comes from the wallet
//! database.

use axum::extract::State;
use axum::http::Uri;
use axum::Json;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::{PgPool, Postgres, QueryBuilder};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::ApiPath;
use crate::state::AppState;
use crate::{money, timestamp};

/// Page size when `limit` is not given, and the largest one may ask for.
pub const LIMIT_DEFAULT: u32 = 20;
pub const LIMIT_MAX: u32 = 100;
/// Longest accepted search text `q`, in characters (a description is at most 500).
pub const QUERY_CHARS_MAX: usize = 200;
/// Most timeline events one answer holds; a payment has about ten.
pub const TIMELINE_EVENTS_MAX: i64 = 1_000;
/// What `Retry-After` says to a caller whose payment is accepted but not projected yet: the
/// pipeline (Debezium, the view topology, the sink) takes about a second end to end.
pub const RETRY_AFTER_S: u32 = 1;
/// The statuses a view may have (PaymentView.avsc), the `status` filter's closed list.
pub const STATUSES: &[&str] = &[
    "NEW",
    "SENT",
    "VERIFYING",
    "VOIDING",
    "REFUNDING",
    "COMPLETED",
    "FAILED",
    "FAILED_TIMEOUT",
    "RECONCILED",
    "CANCELED",
];
/// The text search configuration of the read database's tsvectors (no stemming: any language).
const TS_CONFIG: &str = "simple";
/// The version tag in front of a cursor, so its format can change without misreading old ones.
const CURSOR_VERSION: &str = "v1";

/// One payment as seed 000's query service answers it (`GET /api/v1/payments/{id}`), plus the
/// failure reason.
#[derive(Serialize, Debug, Clone, PartialEq, ToSchema)]
pub struct PaymentDetails {
    #[serde(rename = "paymentId")]
    pub payment_id: Uuid,
    /// The owner's name; null only until the owner's CDC record reaches the read database.
    pub user_name: Option<String>,
    /// The owner's phone, as it is now (null if the owner gave none).
    pub phone: Option<String>,
    /// The wallet paid from (its id is its number).
    pub wallet_number: Uuid,
    #[serde(serialize_with = "money::to_number")]
    #[schema(value_type = money::ResponseMoney)]
    pub amount: Decimal,
    pub kind: String,
    pub description: String,
    /// The saga's state as a user reads it: NEW, SENT, VERIFYING, VOIDING, REFUNDING,
    /// COMPLETED, FAILED, FAILED_TIMEOUT, RECONCILED, CANCELED (a state added later appears as
    /// itself).
    #[schema(example = "COMPLETED")]
    pub status: String,
    /// Why the payment is in this status, when there is something to say.
    pub reason: Option<String>,
    /// When the payment was accepted.
    #[schema(value_type = timestamp::Timestamp)]
    pub created: String,
    /// The time of the latest event applied to the view.
    #[schema(value_type = timestamp::Timestamp)]
    pub updated: String,
}

/// A page of the caller's payments, newest first.
#[derive(Serialize, Debug, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentPage {
    pub payments: Vec<PaymentDetails>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// One event of a payment's history.
#[derive(Serialize, Debug, Clone, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TimelineEvent {
    /// 1, 2, 3, ... in the order the view applied the events.
    pub seq: i32,
    /// INITIATED, DISPATCHED, PROVIDER_ANSWER, CALLBACK, TIMER, RECONCILIATION, RESULT (a kind
    /// added later appears as itself).
    pub kind: String,
    /// What happened, for people.
    pub detail: String,
    /// The event's own time.
    #[schema(value_type = timestamp::Timestamp)]
    pub at: String,
    /// The W3C trace id of the event (32 hex digits), if it carried one.
    pub trace_id: Option<String>,
}

/// Every event of one payment, in order.
#[derive(Serialize, Debug, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Timeline {
    pub payment_id: Uuid,
    pub events: Vec<TimelineEvent>,
}

/// The history's query parameters, validated. Parsed by hand from the query string
/// ([`HistoryQuery::parse`]) so that every refusal names its parameter (400
/// `invalid-parameter` with `field`), unknown and repeated parameters included.
#[derive(Debug, Default, PartialEq, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Only this wallet's payments (one of the caller's; another wallet gives an empty page).
    #[param(value_type = Option<Uuid>)]
    pub wallet: Option<Uuid>,
    /// Only payments in this status.
    #[param(value_type = Option<String>, schema_with = status_schema)]
    pub status: Option<String>,
    /// Created at or after this time (`yyyyMMdd-HH:mm:ss:SSSSSS`, UTC).
    #[param(value_type = Option<timestamp::Timestamp>)]
    pub from: Option<DateTime<Utc>>,
    /// Created before this time (exclusive); after `from`.
    #[param(value_type = Option<timestamp::Timestamp>)]
    pub to: Option<DateTime<Utc>>,
    /// Search text: payments whose description or owner's name contains every word of it
    /// (whole words, any order), or contains it as a fragment (case-insensitive). 1 to 200
    /// characters once trimmed.
    #[param(value_type = Option<String>, min_length = 1, max_length = 200, pattern = r"^[^\u0000]*\S[^\u0000]*$")]
    pub q: Option<String>,
    /// Page size, 1 to 100 (default 20).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// The previous page's `nextCursor`, as it was given (opaque).
    #[param(value_type = Option<String>, pattern = "^v1[0-9a-f]+$")]
    pub cursor: Option<Cursor>,
}

/// `status`'s schema: the closed list [`STATUSES`].
fn status_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(STATUSES.iter().copied()))
        .description(Some("Only payments in this status"))
        .build()
}

/// A position in a history: the last row of a page, in the history's order
/// (`created_at_us DESC, payment_id DESC`). The next page starts strictly after it, so rows
/// inserted meanwhile (newer, so before it) neither repeat nor shift a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub created_at_us: i64,
    pub payment_id: Uuid,
}

impl Cursor {
    /// `v1` + hex of `<created_at_us>:<payment_id>`: opaque to clients, cheap to check.
    pub fn encode(&self) -> String {
        format!("{CURSOR_VERSION}{}", hex::encode(format!("{}:{}", self.created_at_us, self.payment_id)))
    }

    pub fn decode(text: &str) -> Option<Self> {
        let bytes = hex::decode(text.strip_prefix(CURSOR_VERSION)?).ok()?;
        let (micros, id) = std::str::from_utf8(&bytes).ok()?.split_once(':')?;
        Some(Self { created_at_us: micros.parse().ok()?, payment_id: id.parse().ok()? })
    }
}

/// The `{paymentId}` path parameter: a bad one is a 400 naming it, like a bad query parameter.
fn path_payment_id(segment: &str) -> Result<Uuid, ApiError> {
    segment.parse().map_err(|_| bad("paymentId", "must be a UUID"))
}

fn bad(parameter: &'static str, detail: impl Into<String>) -> ApiError {
    ApiError::InvalidParameter { parameter, detail: detail.into() }
}

impl HistoryQuery {
    /// The parameters of `pairs` (the decoded query string), each checked by its rule.
    pub fn parse(pairs: &[(String, String)]) -> Result<Self, ApiError> {
        let mut query = Self::default();
        let mut seen: Vec<&str> = Vec::new();
        for (name, value) in pairs {
            let parameter = parameter_name(name)?;
            if seen.contains(&parameter) {
                return Err(bad(parameter, "given more than once"));
            }
            seen.push(parameter);
            query.set(parameter, value)?;
        }
        if let (Some(from), Some(to)) = (query.from, query.to) {
            if to <= from {
                return Err(bad("to", "must be after from"));
            }
        }
        Ok(query)
    }

    fn set(&mut self, parameter: &'static str, value: &str) -> Result<(), ApiError> {
        let time = |value: &str| {
            timestamp::parse(value).ok_or_else(|| bad(parameter, "must be yyyyMMdd-HH:mm:ss:SSSSSS (UTC)"))
        };
        match parameter {
            "wallet" => self.wallet = Some(value.parse().map_err(|_| bad(parameter, "must be a UUID"))?),
            "status" => {
                if !STATUSES.contains(&value) {
                    return Err(bad(parameter, format!("must be one of {}", STATUSES.join(", "))));
                }
                self.status = Some(value.to_owned());
            }
            "from" => self.from = Some(time(value)?),
            "to" => self.to = Some(time(value)?),
            "q" => {
                let text = value.trim();
                if text.is_empty() || text.contains('\0') || text.chars().count() > QUERY_CHARS_MAX {
                    return Err(bad(
                        parameter,
                        format!("must be 1 to {QUERY_CHARS_MAX} characters (trimmed), without NUL"),
                    ));
                }
                self.q = Some(text.to_owned());
            }
            "limit" => {
                let limit: u32 = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=LIMIT_MAX).contains(n))
                    .ok_or_else(|| bad(parameter, format!("must be an integer from 1 to {LIMIT_MAX}")))?;
                self.limit = Some(limit);
            }
            _ => {
                let cursor = Cursor::decode(value)
                    .ok_or_else(|| bad("cursor", "is not a cursor this API gave out"))?;
                self.cursor = Some(cursor);
            }
        }
        Ok(())
    }
}

/// The known parameter named `name`, as a `'static` name for the problem; an unknown one is
/// refused (a misspelt filter silently ignored would answer the wrong question).
fn parameter_name(name: &str) -> Result<&'static str, ApiError> {
    const KNOWN: &[&str] = &["wallet", "status", "from", "to", "q", "limit", "cursor"];
    KNOWN.iter().copied().find(|known| *known == name).ok_or_else(|| ApiError::InvalidParameter {
        parameter: "query",
        detail: format!(
            "unknown parameter {:?}; the parameters are {}",
            name.chars().take(64).collect::<String>(),
            KNOWN.join(", ")
        ),
    })
}

/// `%`, `_` and `\` taken literally in an ILIKE pattern (backslash is ILIKE's escape).
fn like_fragment(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

fn format_micros(us: i64) -> Result<String, ApiError> {
    DateTime::from_timestamp_micros(us)
        .map(timestamp::format)
        .ok_or_else(|| ApiError::internal(format!("a time out of range in the read database: {us} µs")))
}

/// A row of the payment queries.
#[derive(sqlx::FromRow)]
struct PaymentRow {
    payment_id: Uuid,
    user_name: Option<String>,
    phone: Option<String>,
    wallet_id: Uuid,
    amount: Decimal,
    kind: String,
    description: String,
    status: String,
    reason: Option<String>,
    created_at_us: i64,
    updated_at_us: i64,
}

impl PaymentRow {
    fn cursor(&self) -> Cursor {
        Cursor { created_at_us: self.created_at_us, payment_id: self.payment_id }
    }

    fn into_details(self) -> Result<PaymentDetails, ApiError> {
        let mut amount = self.amount;
        amount.rescale(2);
        Ok(PaymentDetails {
            payment_id: self.payment_id,
            user_name: self.user_name,
            phone: self.phone,
            wallet_number: self.wallet_id,
            amount,
            kind: self.kind,
            description: self.description,
            status: self.status,
            reason: self.reason,
            created: format_micros(self.created_at_us)?,
            updated: format_micros(self.updated_at_us)?,
        })
    }
}

/// The columns of [`PaymentRow`], over `p` (payment_views), `w` (wallets) and `u` (users).
const PAYMENT_COLUMNS: &str = "p.payment_id, u.name AS user_name, u.phone, p.wallet_id, p.amount, p.kind, \
     p.description, p.status, p.reason, p.created_at_us, p.updated_at_us";
/// A view is shown once it holds what PaymentInitiated brought (a result that overtook its
/// PaymentInitiated makes a view without them: not projected yet, for a reader).
const PROJECTED: &str = "p.created_at_us IS NOT NULL AND p.amount IS NOT NULL AND p.kind IS NOT NULL \
     AND p.description IS NOT NULL";

/// The caller's payment `payment_id`, if it is projected.
async fn own_payment(query: &PgPool, caller: Uuid, payment_id: Uuid) -> Result<Option<PaymentRow>, ApiError> {
    let sql = format!(
        "SELECT {PAYMENT_COLUMNS} FROM payment_views p \
         JOIN wallets w ON w.wallet_id = p.wallet_id \
         LEFT JOIN users u ON u.user_id = w.user_id \
         WHERE p.payment_id = $1 AND w.user_id = $2 AND {PROJECTED}"
    );
    Ok(sqlx::query_as(&sql).bind(payment_id).bind(caller).fetch_optional(query).await?)
}

/// The answer for a payment the read database does not show the caller: not yet projected if
/// the wallet database holds it in one of the caller's wallets, else simply not found.
async fn missing(state: &AppState, caller: Uuid, payment_id: Uuid) -> ApiError {
    let accepted = sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM wallet_transactions t JOIN wallets w ON w.wallet_id = t.wallet_id \
         WHERE t.payment_id = $1 AND w.user_id = $2)",
    )
    .bind(payment_id)
    .bind(caller)
    .fetch_one(&state.db)
    .await;
    match accepted {
        Ok(true) => ApiError::NotYetProjected { retry_after_s: RETRY_AFTER_S },
        Ok(false) => ApiError::NotFound("payment"),
        Err(error) => error.into(),
    }
}

/// One of the caller's payments, as seed 000's query service shows it.
///
/// Problems: 400 `invalid-parameter` (`paymentId` is not a UUID); 401 `unauthorized`; 404
/// `not-found` (no such payment, or someone else's) or `not-yet-projected` (accepted, not in the
/// read database yet: the response's `Retry-After` header says in how many seconds to ask
/// again); 503 `unavailable`.
#[utoipa::path(
    get,
    path = "/api/v1/payments/{paymentId}",
    tag = "payment views",
    params(("paymentId" = Uuid, Path, description = "The payment")),
    responses(
        (status = 200, description = "The payment as the read database holds it", body = PaymentDetails),
        (status = 401, response = crate::error::Problem),
        (status = 404, response = crate::error::Problem),
        (status = 400, response = crate::error::Problem),
        (status = 503, response = crate::error::Problem),
    ),
    security(("bearer" = []))
)]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(segment): ApiPath<String>,
) -> Result<Json<PaymentDetails>, ApiError> {
    let payment_id = path_payment_id(&segment)?;
    match own_payment(&state.query, caller.user_id, payment_id).await? {
        Some(row) => Ok(Json(row.into_details()?)),
        None => Err(missing(&state, caller.user_id, payment_id).await),
    }
}

/// The caller's payments, newest first, optionally filtered and searched, a page at a time.
///
/// `q` matches a payment whose description together with its owner's name contains every
/// word of `q` (whole words, any order, case-insensitive), or whose description or owner's name
/// contains `q` as a fragment. Pages follow `nextCursor`; a page never repeats or skips a
/// payment because newer ones arrived meanwhile.
///
/// Problems: 400 `invalid-parameter` (with `field`: the parameter, or `query` for an unknown
/// one); 401 `unauthorized`; 503 `unavailable`.
#[utoipa::path(
    get,
    path = "/api/v1/payments",
    tag = "payment views",
    params(HistoryQuery),
    responses(
        (status = 200, description = "A page of the caller's payments", body = PaymentPage),
        (status = 400, response = crate::error::Problem),
        (status = 401, response = crate::error::Problem),
        (status = 503, response = crate::error::Problem),
    ),
    security(("bearer" = []))
)]
pub async fn history(
    State(state): State<AppState>,
    caller: Caller,
    uri: Uri,
) -> Result<Json<PaymentPage>, ApiError> {
    let pairs = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri)
        .map_err(|_| bad("query", "the query string is not valid application/x-www-form-urlencoded"))?;
    let query = HistoryQuery::parse(&pairs.0)?;
    let limit = query.limit.unwrap_or(LIMIT_DEFAULT);
    let mut rows: Vec<PaymentRow> =
        history_sql(caller.user_id, &query, limit + 1).build_query_as().fetch_all(&state.query).await?;
    let next_cursor = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|row| row.cursor().encode())
    } else {
        None
    };
    let payments = rows.into_iter().map(PaymentRow::into_details).collect::<Result<_, _>>()?;
    Ok(Json(PaymentPage { payments, next_cursor }))
}

/// The history's SQL, with only the predicates asked for (so the cursor is an index condition,
/// not a filter): per wallet of the caller's, the newest `fetch` matching rows by the index
/// `payment_views_history`, then the newest `fetch` of those. A user has a wallet per currency,
/// so this reads at most a few times `fetch` rows whatever the history's length.
fn history_sql(caller: Uuid, query: &HistoryQuery, fetch: u32) -> QueryBuilder<'static, Postgres> {
    let mut sql = QueryBuilder::new(format!(
        "SELECT {PAYMENT_COLUMNS} FROM wallets w LEFT JOIN users u ON u.user_id = w.user_id \
         CROSS JOIN LATERAL (SELECT * FROM payment_views p WHERE p.wallet_id = w.wallet_id \
         AND p.wallet_id IS NOT NULL AND {PROJECTED}"
    ));
    if let Some(status) = &query.status {
        sql.push(" AND p.status = ").push_bind(status.clone());
    }
    if let Some(from) = query.from {
        sql.push(" AND p.created_at_us >= ").push_bind(micros(from));
    }
    if let Some(to) = query.to {
        sql.push(" AND p.created_at_us < ").push_bind(micros(to));
    }
    if let Some(cursor) = query.cursor {
        sql.push(" AND (p.created_at_us, p.payment_id) < (")
            .push_bind(cursor.created_at_us)
            .push(", ")
            .push_bind(cursor.payment_id)
            .push(")");
    }
    if let Some(q) = &query.q {
        sql.push(format!(" AND ((p.search_tsv || coalesce(u.name_tsv, ''::tsvector)) @@ websearch_to_tsquery('{TS_CONFIG}', "))
            .push_bind(q.clone())
            .push(") OR p.description ILIKE ")
            .push_bind(like_fragment(q))
            .push(" OR u.name ILIKE ")
            .push_bind(like_fragment(q))
            .push(")");
    }
    sql.push(" ORDER BY p.created_at_us DESC, p.payment_id DESC LIMIT ")
        .push_bind(i64::from(fetch))
        .push(") p WHERE w.user_id = ")
        .push_bind(caller);
    if let Some(wallet) = query.wallet {
        sql.push(" AND w.wallet_id = ").push_bind(wallet);
    }
    sql.push(" ORDER BY p.created_at_us DESC, p.payment_id DESC LIMIT ").push_bind(i64::from(fetch));
    sql
}

/// Every event of one of the caller's payments, in the order the view applied them.
///
/// Problems: 400 `invalid-parameter` (`paymentId`); 401 `unauthorized`; 404 `not-found` or
/// `not-yet-projected` (with `Retry-After`), as for the payment itself; 503 `unavailable`.
#[utoipa::path(
    get,
    path = "/api/v1/payments/{paymentId}/timeline",
    tag = "payment views",
    params(("paymentId" = Uuid, Path, description = "The payment")),
    responses(
        (status = 200, description = "The payment's events", body = Timeline),
        (status = 401, response = crate::error::Problem),
        (status = 404, response = crate::error::Problem),
        (status = 400, response = crate::error::Problem),
        (status = 503, response = crate::error::Problem),
    ),
    security(("bearer" = []))
)]
pub async fn timeline(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(segment): ApiPath<String>,
) -> Result<Json<Timeline>, ApiError> {
    let payment_id = path_payment_id(&segment)?;
    if own_payment(&state.query, caller.user_id, payment_id).await?.is_none() {
        return Err(missing(&state, caller.user_id, payment_id).await);
    }
    let rows: Vec<(i32, String, String, i64, Option<String>)> = sqlx::query_as(
        "SELECT seq, kind, detail, at_us, trace_id FROM payment_timeline WHERE payment_id = $1 \
         ORDER BY seq LIMIT $2",
    )
    .bind(payment_id)
    .bind(TIMELINE_EVENTS_MAX)
    .fetch_all(&state.query)
    .await?;
    let events = rows
        .into_iter()
        .map(|(seq, kind, detail, at_us, trace_id)| {
            Ok(TimelineEvent { seq, kind, detail, at: format_micros(at_us)?, trace_id })
        })
        .collect::<Result<_, ApiError>>()?;
    Ok(Json(Timeline { payment_id, events }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn refused(list: &[(&str, &str)]) -> &'static str {
        match HistoryQuery::parse(&pairs(list)) {
            Err(ApiError::InvalidParameter { parameter, .. }) => parameter,
            other => panic!("{list:?} was not refused as a parameter: {other:?}"),
        }
    }

    #[test]
    fn a_cursor_round_trips_and_a_forged_one_does_not_decode() {
        let cursor = Cursor { created_at_us: 1_764_590_400_123_456, payment_id: Uuid::new_v4() };
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        assert_eq!(Cursor::decode("v1zz"), None);
        assert_eq!(Cursor::decode("v2"), None);
        assert_eq!(Cursor::decode(&format!("v1{}", hex::encode("12:not-a-uuid"))), None);
        assert_eq!(Cursor::decode(&cursor.encode()[2..]), None, "the version is required");
    }

    #[test]
    fn every_parameter_is_parsed_by_its_rule() {
        let wallet = Uuid::new_v4();
        let query = HistoryQuery::parse(&pairs(&[
            ("wallet", &wallet.to_string()),
            ("status", "COMPLETED"),
            ("from", "20261201-00:00:00:000000"),
            ("to", "20261202-00:00:00:000000"),
            ("q", "  tea  "),
            ("limit", "5"),
        ]))
        .unwrap();
        assert_eq!(query.wallet, Some(wallet));
        assert_eq!(query.status.as_deref(), Some("COMPLETED"));
        assert_eq!(query.q.as_deref(), Some("tea"), "trimmed");
        assert_eq!(query.limit, Some(5));
        assert_eq!(HistoryQuery::parse(&[]).unwrap(), HistoryQuery::default());
    }

    #[test]
    fn each_bad_parameter_is_named() {
        assert_eq!(refused(&[("wallet", "42")]), "wallet");
        assert_eq!(refused(&[("status", "completed")]), "status");
        assert_eq!(refused(&[("from", "2026-12-01")]), "from");
        assert_eq!(refused(&[("to", "20261301-00:00:00:000000")]), "to");
        assert_eq!(
            refused(&[("from", "20261202-00:00:00:000000"), ("to", "20261201-00:00:00:000000")]),
            "to"
        );
        assert_eq!(refused(&[("q", "   ")]), "q");
        assert_eq!(refused(&[("q", "a\0b")]), "q");
        assert_eq!(refused(&[("q", &"x".repeat(QUERY_CHARS_MAX + 1))]), "q");
        for limit in ["0", "101", "-1", "ten", "1.5", ""] {
            assert_eq!(refused(&[("limit", limit)]), "limit", "limit={limit}");
        }
        assert_eq!(refused(&[("cursor", "v1abc")]), "cursor");
        assert_eq!(refused(&[("limit", "5"), ("limit", "6")]), "limit");
        assert_eq!(refused(&[("walet", "x")]), "query");
    }

    #[test]
    fn a_fragment_is_taken_literally() {
        assert_eq!(like_fragment("50%_off\\"), "%50\\%\\_off\\\\%");
    }
}
