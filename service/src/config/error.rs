//! [`ConfigError`]: which field is wrong, what is wrong with it, and where
//! (file and line).

use std::path::PathBuf;

/// A configuration error: which field, what is wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{path}: {message}{}", source_prefix(.file), line_suffix(.line))]
pub struct ConfigError {
    /// The file the error is in, if any.
    pub file: Option<PathBuf>,
    /// The field path, e.g. `certificate[0].renew_fraction`.
    pub path: String,
    /// What is wrong with it.
    pub message: String,
    /// 1-based line in the file, when known.
    pub line: Option<usize>,
}

fn source_prefix(file: &Option<PathBuf>) -> String {
    file.as_ref()
        .map(|f| format!("{}: ", f.display()))
        .unwrap_or_default()
}

fn line_suffix(line: &Option<usize>) -> String {
    line.map(|l| format!(" (line {l})")).unwrap_or_default()
}

impl ConfigError {
    /// An error at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            file: None,
            path: path.into(),
            message: message.into(),
            line: None,
        }
    }
}
