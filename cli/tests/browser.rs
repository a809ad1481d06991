//! Swagger UI in a real browser (issue 16): headless Chromium driven over WebDriver
//! (chromedriver, `fantoccini`), against the API's handlers on 127.0.0.1:0. A person's session:
//! open the page, authorize with a token, create a wallet, authorize as an operator and deposit,
//! authorize as the user again, pay, and read the wallet the payment reserved from — every step
//! asserted on what the page shows (the status and body Swagger UI renders), and the money
//! checked in the database too.
//!
//! Chromium and chromedriver are Debian's `chromium` and `chromium-driver`, installed by
//! dev/install. The payment's event goes to a topic of the test's own: no saga settles it, so the
//! page shows it reserved (the read side's `GET /api/v1/payments/{id}` needs the view running; it
//! is not part of this session).

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{api, token};
use fantoccini::{Client, ClientBuilder, Locator};
use paystream_stack::testkit;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use uuid::Uuid;

/// Where Debian installs the browser and its driver.
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long the driver, the page or one of its answers may take to appear.
const PAGE_TIMEOUT: Duration = Duration::from_secs(30);
/// WebDriver keys: Control+A (the modifier released by NULL), then Backspace.
const SELECT_ALL: &str = "\u{E009}a\u{E000}";
const DELETE: &str = "\u{E003}";
/// The pause between two looks at the driver's status.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// chromedriver on a free port, killed when dropped.
struct Driver {
    url: String,
    _process: tokio::process::Child,
}

async fn driver() -> Driver {
    assert!(
        std::path::Path::new(CHROMEDRIVER).exists() && std::path::Path::new(CHROMIUM).exists(),
        "{CHROMIUM} and {CHROMEDRIVER} are missing: dev/install installs Debian's chromium and chromium-driver"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let process = tokio::process::Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromedriver starts");
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    loop {
        if let Ok(response) = reqwest::get(format!("{url}/status")).await {
            if response.status().is_success() {
                break;
            }
        }
        assert!(
            started.elapsed() < PAGE_TIMEOUT,
            "chromedriver did not answer on {url} within {PAGE_TIMEOUT:?}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    Driver { url, _process: process }
}

async fn browser(driver: &Driver) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({"binary": CHROMIUM,
               "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,4000"]}),
    );
    ClientBuilder::native()
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a WebDriver session")
}

/// An amount as the page shows it, read exactly from the page's text (never through a float).
fn money(shown: &str, field: &str) -> Decimal {
    let fields: std::collections::HashMap<String, Box<serde_json::value::RawValue>> =
        serde_json::from_str(shown).unwrap_or_else(|e| panic!("{shown}: {e}"));
    let text = fields.get(field).unwrap_or_else(|| panic!("no {field} in {shown}")).get();
    Decimal::from_str_exact(text).unwrap_or_else(|e| panic!("{field} {text}: {e}"))
}

/// Authorizes the page with `token` under the bearer scheme (logging out a previous one first).
async fn authorize(page: &Client, token: &str) {
    page.wait()
        .at_most(PAGE_TIMEOUT)
        .for_element(Locator::Css("button.authorize"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let modal = page.wait().at_most(PAGE_TIMEOUT).for_element(Locator::Css(".modal-ux")).await.unwrap();
    // A scheme already authorized shows "Logout" instead of its input.
    for logout in modal.find_all(Locator::XPath(".//button[normalize-space()='Logout']")).await.unwrap() {
        logout.click().await.unwrap();
    }
    let bearer = modal
        .find(Locator::XPath(
            ".//div[contains(@class,'auth-container')][.//h4[contains(normalize-space(),'bearer')]]",
        ))
        .await
        .expect("the bearer scheme in the Authorize dialog");
    let input = bearer.find(Locator::Css("input")).await.unwrap();
    input.send_keys(token).await.unwrap();
    bearer
        .find(Locator::XPath(".//button[normalize-space()='Authorize']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    bearer.find(Locator::XPath(".//button[normalize-space()='Logout']")).await.expect("authorized");
    modal.find(Locator::Css("button.btn-done, .close-modal")).await.unwrap().click().await.unwrap();
}

/// Expands the operation `id` (Swagger UI's `operations-<tag>-<operationId>`), fills its
/// parameters and body, executes it, and returns the status and body the page shows.
async fn execute(
    page: &Client,
    id: &str,
    params: &[(&str, &str)],
    body: Option<&Value>,
) -> (u16, Value, String) {
    let operation = page.find(Locator::Id(id)).await.unwrap_or_else(|e| panic!("operation {id}: {e}"));
    if operation.find(Locator::Css(".try-out__btn")).await.is_err() {
        operation.find(Locator::Css(".opblock-summary")).await.unwrap().click().await.unwrap();
    }
    let try_out = page
        .wait()
        .at_most(PAGE_TIMEOUT)
        .for_element(Locator::Css(&format!("#{id} .try-out__btn")))
        .await
        .unwrap();
    if try_out.text().await.unwrap().trim() == "Try it out" {
        try_out.click().await.unwrap();
    }
    for (name, value) in params {
        let input = operation
            .find(Locator::Css(&format!("tr[data-param-name='{name}'] input")))
            .await
            .unwrap_or_else(|e| panic!("{id}: parameter {name}: {e}"));
        input.clear().await.unwrap();
        input.send_keys(value).await.unwrap();
    }
    if let Some(body) = body {
        let textarea = operation.find(Locator::Css("textarea.body-param__text")).await.unwrap();
        // Select all and delete (React keeps its own copy of the value, which `clear` does not
        // always reach), then type the body.
        textarea.send_keys(&format!("{SELECT_ALL}{DELETE}")).await.unwrap();
        textarea.send_keys(&body.to_string()).await.unwrap();
    }
    operation.find(Locator::Css("button.execute")).await.unwrap().click().await.unwrap();
    let status = page
        .wait()
        .at_most(PAGE_TIMEOUT)
        .for_element(Locator::Css(&format!("#{id} .live-responses-table .response .response-col_status")))
        .await
        .expect("the page shows the server's answer");
    let status: u16 = status.text().await.unwrap().trim().parse().expect("a status code");
    let shown = operation
        .find(Locator::Css(".live-responses-table .response-col_description .microlight, .live-responses-table .response-col_description pre"))
        .await
        .expect("the response body on the page")
        .text()
        .await
        .unwrap();
    let mut body: Value =
        serde_json::from_str(&shown).unwrap_or_else(|e| panic!("{id}: the page shows {shown:?}: {e}"));
    // The request as the page sent it, for the failure messages.
    if let Ok(curl) = operation.find(Locator::Css(".curl-command")).await {
        body["_curl"] = Value::String(curl.text().await.unwrap_or_default());
    }
    // Collapse the operation again, so the next one's elements are the only ones open.
    operation.find(Locator::Css(".opblock-summary")).await.unwrap().click().await.unwrap();
    (status, body, shown)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_person_authorizes_creates_a_wallet_deposits_pays_and_reads_it_in_swagger_ui() {
    let api = api().await;
    let driver = driver().await;
    let page = browser(&driver).await;
    page.goto(&format!("{}/api/v1/docs/", api.url)).await.unwrap();
    let title = page.wait().at_most(PAGE_TIMEOUT).for_element(Locator::Css(".info .title")).await.unwrap();
    assert!(title.text().await.unwrap().contains("paystream API"), "the document's title on the page");

    let user = Uuid::new_v4();
    authorize(&page, &token(user, false)).await;
    let (status, wallet, _) = execute(
        &page,
        "operations-accounts-create",
        &[],
        Some(&json!({"name": "Browser Test", "phone": "+79990001122", "currency": "RUB"})),
    )
    .await;
    assert_eq!(status, 201, "{wallet}");
    let wallet_id = wallet["walletId"].as_str().expect("the page shows the walletId").to_owned();

    authorize(&page, &token(Uuid::new_v4(), true)).await;
    let key = Uuid::new_v4().to_string();
    let (status, balance, shown) = execute(
        &page,
        "operations-accounts-deposit",
        &[("walletId", &wallet_id), ("Idempotency-Key", &key)],
        Some(&json!({"amount": 100})),
    )
    .await;
    assert_eq!(status, 200, "{balance}");
    assert_eq!(money(&shown, "available"), Decimal::from(100), "{balance}");

    authorize(&page, &token(user, false)).await;
    let payment_id = Uuid::new_v4().to_string();
    let payment = json!({"paymentId": payment_id, "wallet": wallet_id, "amount": 12.5, "kind": "mobile",
                         "description": "paid in a browser", "timestamp": "20261201-10:00:00:000000"});
    let (status, accepted, _) =
        execute(&page, "operations-payments-create_payment", &[], Some(&payment)).await;
    assert_eq!(status, 200, "{accepted}");
    assert_eq!(accepted["paymentId"], payment_id.as_str());

    let (status, read, shown) =
        execute(&page, "operations-accounts-balance", &[("walletId", &wallet_id)], None).await;
    assert_eq!(status, 200, "{read}");
    let (available, reserved) = (money(&shown, "available"), money(&shown, "reserved"));
    assert_eq!((available, reserved), (Decimal::new(8750, 2), Decimal::new(1250, 2)), "{read}");

    let db = testkit::wallet_db(&api.settings).await;
    let row: (String, String) = sqlx::query_as(
        "SELECT t.status, t.amount::text FROM wallet_transactions t WHERE t.payment_id = $1::uuid",
    )
    .bind(&payment_id)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(row, ("PENDING".to_owned(), "12.50".to_owned()), "the payment the page made, reserved");
    page.close().await.unwrap();
    drop(api);
}
