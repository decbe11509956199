//! [cold] The only place serde and toml appear: reads the TOML file into
//! `file` structs, then `compile` validates them into an immutable `Snapshot`.
//!
//! Every error carries the file, line and column it refers to and says what
//! was expected; all validation errors are collected, not just the first.

mod compile;
pub mod file;
pub mod units;

pub use compile::next_snapshot_id;

use std::fmt;
use std::path::Path;

use crate::snapshot::Snapshot;

/// The config used when `ringgate` runs without `-c`: one listener on
/// 127.0.0.1:8080 with a direct-response route, so a new user sees it work.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/default.toml");
pub const EMBEDDED_NAME: &str = "<embedded default>";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// 1-based; 0 when the error has no position (e.g. unreadable file).
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )
        }
    }
}

/// Every problem found in one config file.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Turns byte offsets into line:column for error messages.
pub(crate) struct SourceMap<'a> {
    pub name: &'a str,
    text: &'a str,
}

impl SourceMap<'_> {
    pub fn error(
        &self,
        span: Option<std::ops::Range<usize>>,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = match span {
            Some(span) if span.start <= self.text.len() && !(span.start == 0 && span.end == 0) => {
                let before = &self.text[..span.start];
                let line = before.matches('\n').count() + 1;
                let column = before
                    .rfind('\n')
                    .map_or(span.start, |nl| span.start - nl - 1)
                    + 1;
                (line, column)
            }
            _ => (0, 0),
        };
        ConfigError {
            file: self.name.to_string(),
            line,
            column,
            message: message.into(),
        }
    }
}

/// Loads and compiles a config file.
pub fn load_file(path: &Path) -> Result<Snapshot, ConfigErrors> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: name.clone(),
            line: 0,
            column: 0,
            message: format!("cannot read config file: {e}"),
        }])
    })?;
    load_str(&text, &name)
}

/// Loads and compiles config text; `name` is used in error messages.
pub fn load_str(text: &str, name: &str) -> Result<Snapshot, ConfigErrors> {
    let map = SourceMap { name, text };
    let parsed: file::FileConfig = toml::from_str(text).map_err(|e| {
        let message = e.message().trim_end().to_string();
        ConfigErrors(vec![map.error(e.span(), message)])
    })?;
    compile::compile(parsed, &map)
}

/// The embedded default config, compiled.
pub fn embedded_default() -> Result<Snapshot, ConfigErrors> {
    load_str(EMBEDDED_DEFAULT, EMBEDDED_NAME)
}
