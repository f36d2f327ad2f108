//! Compiles every saga definition in the repository's `sagas/` folder into the binary, so the
//! orchestrator runs from any directory (`SAGAS_DIR` and a `sagas/` folder in the working
//! directory take precedence at run time).

use std::path::Path;

fn main() {
    // Read when the script runs, not when it was compiled: cargo may run one compiled script for
    // a copy of the crate elsewhere (scripts/previous-release.sh builds one in a temporary folder).
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let dir = Path::new(&manifest).join("../sagas");
    println!("cargo:rerun-if-changed={}", dir.display());
    // `sqlx::migrate!` embeds the migration files, but a new one alone would not rebuild it.
    println!("cargo:rerun-if-changed=migrations");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("the repository's sagas/ folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut out = String::from("&[\n");
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
        let name = f.file_name().unwrap().to_string_lossy();
        let path = f.canonicalize().unwrap();
        out.push_str(&format!(
            "    ({name:?}, include_str!({:?})),\n",
            path.display().to_string()
        ));
    }
    out.push_str("]\n");
    let target = Path::new(&std::env::var("OUT_DIR").unwrap()).join("built_in_sagas.rs");
    std::fs::write(target, out).unwrap();
}
