//! Every file under config/ loads; every invalid fixture fails with the error
//! its `# expect:` line names, prefixed by the file's path.

use std::path::{Path, PathBuf};

use hookrelay::config::Config;

fn files(dir: &str, extension: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("{}: {err}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == extension))
        .collect();
    files.sort();
    files
}

#[test]
fn every_shipped_config_loads() {
    let configs = files("config", "toml");
    assert!(!configs.is_empty());
    for path in configs {
        let config = Config::load(&path).unwrap_or_else(|err| panic!("{err}"));
        assert!(!config.sources.is_empty(), "{}", path.display());
    }
}

#[test]
fn the_shipped_config_matches_the_readme_quick_start() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/hookrelay.toml");
    let config = Config::load(&path).unwrap();
    assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
    assert!(config.server.tls.is_none());
    assert!(config.sources.contains_key("parallel"));
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    assert_eq!(
        config.journal.path.canonicalize().unwrap_or_else(|_| normalize(&config.journal.path)),
        data.canonicalize().unwrap_or(data)
    );
}

/// `a/b/../c` → `a/c`, for paths that do not exist yet.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[test]
fn every_invalid_config_fails_with_its_expected_message() {
    let fixtures = files("tests/fixtures/invalid-config", "toml");
    assert!(fixtures.len() >= 20, "found {}", fixtures.len());
    for path in fixtures {
        let text = std::fs::read_to_string(&path).unwrap();
        let expected = text
            .lines()
            .next()
            .and_then(|line| line.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} lacks a '# expect: ' first line", path.display()));
        let err = match Config::load(&path) {
            Ok(_) => panic!("{} loaded, expected: {expected}", path.display()),
            Err(err) => err.to_string(),
        };
        let named = path.display().to_string();
        let rest = err.strip_prefix(&named).unwrap_or_else(|| panic!("error does not name the file: {err}"));
        assert!(rest.contains(expected), "{named}:\n  expected: {expected}\n  got:      {err}");
    }
}

#[test]
fn an_unreadable_config_file_is_named() {
    let err = Config::load(Path::new("/nonexistent/hookrelay.toml")).unwrap_err().to_string();
    assert!(err.starts_with("/nonexistent/hookrelay.toml: cannot read config file"), "{err}");
}
