//! Exit codes and the one error distinction the command line cares about.
//!
//! Exit codes (DESIGN.md): 0 success; 1 a check found a problem or an
//! operation failed; 2 bad usage or bad input, with a message naming it.
//! Modules keep their own `thiserror` enums; at the edge, errors caused by
//! the user's input are wrapped in [`BadInput`] so `main` can map them to 2.

use std::fmt;

/// The user's input (flags, config, YAML, cron, ciphertext, request) is wrong.
///
/// Displays exactly as the wrapped error: the message must already name what
/// is wrong and where.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct BadInput(Box<dyn std::error::Error + Send + Sync + 'static>);

impl BadInput {
    /// Wraps an error that was caused by bad input.
    pub fn new(err: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        Self(err.into())
    }

    /// A bad-input error from a message.
    pub fn msg(msg: impl fmt::Display) -> Self {
        Self(msg.to_string().into())
    }
}

/// A check ran and found a problem: exit 1, after the report has been printed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ProblemFound(pub String);

/// Marks the error in a `Result` as caused by bad input (exit code 2).
pub trait BadInputExt<T> {
    /// Wraps the error in [`BadInput`].
    fn bad_input(self) -> anyhow::Result<T>;
}

impl<T, E> BadInputExt<T> for Result<T, E>
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn bad_input(self) -> anyhow::Result<T> {
        self.map_err(|e| anyhow::Error::new(BadInput::new(e)))
    }
}

/// The process exit code for an error that ended a command.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    if err.chain().any(|e| e.is::<BadInput>()) {
        2
    } else {
        1
    }
}

/// Formats an error and its causes on one line, `outer: inner: innermost`,
/// without repeating a cause whose text the outer message already contains.
pub fn report(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn bad_input_maps_to_two_through_context() {
        let err: anyhow::Result<()> = Err(std::io::Error::other("boom")).bad_input();
        let err = err.context("loading config").unwrap_err();
        assert_eq!(exit_code(&err), 2);
        assert_eq!(report(&err), "loading config: boom");
    }

    #[test]
    fn other_errors_map_to_one() {
        let err = anyhow::anyhow!("database unreachable");
        assert_eq!(exit_code(&err), 1);
    }
}
