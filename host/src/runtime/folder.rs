//! What a plugins folder holds: `NAME.wasm` plugins, `NAME.toml` sidecars,
//! and the files that look meant as one of those but cannot be (a name
//! with a space, `Logger.WASM`, a dangling link, a directory), each with
//! the reason, so that an operator is told instead of seeing nothing
//! happen. The live registry and the offline `hookhost plugins` read a
//! folder through [`list`].

use std::collections::BTreeMap;
use std::fs::Metadata;
use std::path::{Path, PathBuf};

/// One folder's plugin files, sidecars and refused files, by name.
#[derive(Debug, Default)]
pub struct Listing {
    /// `NAME` -> `NAME.wasm`, a regular file (or a link to one).
    pub plugins: BTreeMap<String, (PathBuf, Metadata)>,
    /// `NAME` -> `NAME.toml`.
    pub sidecars: BTreeMap<String, PathBuf>,
    /// File name -> why it is not read.
    pub ignored: BTreeMap<String, String>,
}

/// Reads `dir`. Hidden files (a leading `.`, such as the `.NAME.tmp` of an
/// atomic replace or an editor's swap file) and other extensions are
/// passed over in silence.
pub fn list(dir: &Path) -> std::io::Result<Listing> {
    let mut out = Listing::default();
    for entry in std::fs::read_dir(dir)?.flatten() {
        let path = entry.path();
        let file = entry.file_name().to_string_lossy().into_owned();
        if file.starts_with('.') {
            continue;
        }
        let Some((stem, ext)) = file.rsplit_once('.') else {
            continue;
        };
        let sidecar = match ext {
            "wasm" => false,
            "toml" => true,
            _ if ext.eq_ignore_ascii_case("wasm") || ext.eq_ignore_ascii_case("toml") => {
                let lower = ext.to_ascii_lowercase();
                out.ignored.insert(
                    file.clone(),
                    format!("the extension must be `.{lower}`, in lower case"),
                );
                continue;
            }
            _ => continue,
        };
        if !crate::config::valid_name(stem) {
            out.ignored.insert(
                file.clone(),
                format!("`{stem}` is not a plugin name: 1 to 64 ASCII letters, digits, `-` or `_`"),
            );
            continue;
        }
        // Follows links: a link to a plugin file is a plugin.
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) => {
                out.ignored.insert(file, format!("cannot be read: {e}"));
                continue;
            }
        };
        if !meta.is_file() {
            let what = if meta.is_dir() {
                "a directory"
            } else {
                "not a regular file"
            };
            out.ignored.insert(file, what.to_string());
            continue;
        }
        if sidecar {
            out.sidecars.insert(stem.to_string(), path);
        } else {
            out.plugins.insert(stem.to_string(), (path, meta));
        }
    }
    // A sidecar configures the plugin of its name; one without it is a
    // misnamed sidecar (`auto_reply.toml` for `auto-reply.wasm`) or a file
    // that is not one (a `Cargo.toml`), and is not read.
    let orphans: Vec<String> = out
        .sidecars
        .keys()
        .filter(|name| !out.plugins.contains_key(*name))
        .cloned()
        .collect();
    for name in orphans {
        out.sidecars.remove(&name);
        out.ignored.insert(
            format!("{name}.toml"),
            format!("no `{name}.wasm` beside it: a sidecar configures the plugin of its name"),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::list;

    #[test]
    fn files_that_cannot_be_plugins_are_named_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for f in [
            "logger.wasm",
            "logger.toml",
            "auto_reply.toml",
            "my plugin.wasm",
            "Shout.WASM",
            "über.toml",
            "notes.txt",
            ".logger.tmp",
            ".hidden.wasm",
            "README",
        ] {
            std::fs::write(d.join(f), b"x").unwrap();
        }
        std::fs::create_dir(d.join("dir.wasm")).unwrap();
        std::os::unix::fs::symlink(d.join("nowhere.wasm"), d.join("dangling.wasm")).unwrap();
        std::os::unix::fs::symlink(d.join("logger.wasm"), d.join("alias.wasm")).unwrap();

        let l = list(d).unwrap();
        assert_eq!(
            l.plugins.keys().collect::<Vec<_>>(),
            ["alias", "logger"],
            "a link to a file is a plugin"
        );
        assert_eq!(l.sidecars.keys().collect::<Vec<_>>(), ["logger"]);
        let ignored: Vec<(&str, &str)> = l
            .ignored
            .iter()
            .map(|(f, r)| (f.as_str(), r.as_str()))
            .collect();
        assert_eq!(ignored.len(), 6, "{ignored:?}");
        let reason = |f: &str| l.ignored.get(f).map(String::as_str).unwrap_or("");
        assert!(reason("my plugin.wasm").contains("`my plugin` is not a plugin name"));
        assert!(reason("über.toml").contains("is not a plugin name"));
        assert_eq!(
            reason("Shout.WASM"),
            "the extension must be `.wasm`, in lower case"
        );
        assert_eq!(reason("dir.wasm"), "a directory");
        assert_eq!(
            reason("auto_reply.toml"),
            "no `auto_reply.wasm` beside it: a sidecar configures the plugin of its name"
        );
        assert!(reason("dangling.wasm").starts_with("cannot be read: "));
    }
}
