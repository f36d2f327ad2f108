//! `sqlx::migrate!` embeds the migration files, but a new one alone would not rebuild the crate.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
