//! Embeds the built dashboard (`web/dist`, or `P2P_WEB_DIST`) into the tracker binary when it
//! exists, so `p2p-tracker` alone serves `/dashboard/`. Without it the tracker still builds and
//! says at run time that the assets were not built.

use std::error::Error;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> Result<(), Box<dyn Error>> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(root, &path, out)?;
        } else {
            let rel = path
                .strip_prefix(root)?
                .to_string_lossy()
                .replace('\\', "/");
            out.push((rel, path.canonicalize()?));
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-env-changed=P2P_WEB_DIST");
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let dist = std::env::var_os("P2P_WEB_DIST")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../web/dist"));
    // Watch the dist folder, or the web crate while there is none (so its first build is seen).
    for watch in [dist.clone(), manifest.join("../web")] {
        if watch.exists() {
            println!("cargo:rerun-if-changed={}", watch.display());
            break;
        }
    }
    let mut files = Vec::new();
    if dist.join("index.html").is_file() {
        walk(&dist, &dist, &mut files)?;
        files.sort();
    }
    let mut code = String::from("/// The dashboard's files, by path below `/dashboard/`.\n");
    code.push_str("pub static ASSETS: &[(&str, &[u8])] = &[\n");
    for (rel, abs) in &files {
        writeln!(
            code,
            "    ({rel:?}, include_bytes!({:?})),",
            abs.display().to_string()
        )?;
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("dashboard_assets.rs");
    std::fs::write(out, code)?;
    Ok(())
}
