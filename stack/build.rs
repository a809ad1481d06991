//! `sqlx::migrate!` embeds `migrations/` at compile time; without this, adding a migration
//! file does not rebuild the crate and binaries keep the old set (sqlx's documented fix).
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
