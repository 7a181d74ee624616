//! `${env:NAME}` in a config file's command, arguments and `env` values,
//! expanded from forkline's own environment as Cursor and VS Code do, so
//! secrets need not sit in the file.
//!
//! Only that one form is expanded. Any other `${…}` (VS Code's `${input:…}`
//! or `${workspaceFolder}`) is an error rather than text passed on as it
//! is: a server started with a literal `${input:token}` as its token
//! fails later, far from the cause.

use std::fmt;

/// Why a text could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpandError {
    /// `${env:NAME}` names a variable forkline's environment lacks.
    Missing(String),
    /// A `${…}` that is not `${env:NAME}`.
    Unsupported(String),
}

impl fmt::Display for ExpandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpandError::Missing(name) => write!(
                f,
                "${{env:{name}}}: {name} is not set in forkline's environment"
            ),
            ExpandError::Unsupported(inner) => write!(
                f,
                "`${{{inner}}}`: forkline expands only ${{env:NAME}} (a variable of its own environment)"
            ),
        }
    }
}

/// `text` with every `${env:NAME}` replaced by `lookup(NAME)`. A `${`
/// with no closing `}` is left as it is.
pub fn expand(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, ExpandError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        let Some(len) = rest[at + 2..].find('}') else {
            break;
        };
        let inner = &rest[at + 2..at + 2 + len];
        let name = inner
            .strip_prefix("env:")
            .filter(|name| is_variable_name(name))
            .ok_or_else(|| ExpandError::Unsupported(inner.to_string()))?;
        let value = lookup(name).ok_or_else(|| ExpandError::Missing(name.to_string()))?;
        out.push_str(&rest[..at]);
        out.push_str(&value);
        rest = &rest[at + 2 + len + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// forkline's own environment, for [`expand`]. A value that is not UTF-8
/// cannot be put into a JSON-derived string, so it counts as missing.
pub fn from_process(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn is_variable_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        match name {
            "TOKEN" => Some("s3cret".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_every_env_reference() {
        assert_eq!(expand("plain", lookup), Ok("plain".into()));
        assert_eq!(
            expand("Bearer ${env:TOKEN}", lookup),
            Ok("Bearer s3cret".into())
        );
        assert_eq!(
            expand("${env:TOKEN}:${env:TOKEN}${env:EMPTY}!", lookup),
            Ok("s3cret:s3cret!".into())
        );
        assert_eq!(expand("cost ${ 5", lookup), Ok("cost ${ 5".into()));
        assert_eq!(expand("$env:TOKEN", lookup), Ok("$env:TOKEN".into()));
    }

    #[test]
    fn a_missing_variable_or_another_form_is_an_error() {
        assert_eq!(
            expand("${env:NOPE}", lookup),
            Err(ExpandError::Missing("NOPE".into()))
        );
        for other in [
            "${input:token}",
            "${workspaceFolder}",
            "${env:}",
            "${env:A-B}",
        ] {
            let err = expand(other, lookup).expect_err(other);
            assert!(matches!(err, ExpandError::Unsupported(_)), "{other}");
            assert!(err.to_string().contains("only ${env:NAME}"), "{err}");
        }
        assert_eq!(
            ExpandError::Missing("GH".into()).to_string(),
            "${env:GH}: GH is not set in forkline's environment"
        );
    }
}
