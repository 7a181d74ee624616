//! Who may talk to the HTTP listener: the `Origin` rule (the defence
//! against DNS rebinding), bearer tokens from `--auth-token-file`, and the
//! unguessable session ids that stand for a session afterwards (prefixed
//! with the node that minted them, see `http::node`).

use std::fmt::Write as _;
use std::io;
use std::path::Path;
use std::sync::Arc;

use crate::error::Error;
use crate::http::node::NodeId;

/// The principal a request authenticated as: a name from the token file.
pub type Principal = Arc<str>;

/// The HTTP listener's access rules.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Access {
    /// `name:token` pairs; `None` when no token is asked for.
    pub tokens: Option<Vec<(Principal, String)>>,
    /// Origins accepted besides localhost, exactly as browsers send them.
    pub allowed_origins: Vec<String>,
}

impl Access {
    /// Whether a request with this `Origin` header may proceed. Browsers
    /// send one on cross-site requests; other clients usually send none.
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        if self.allowed_origins.iter().any(|o| o == origin) {
            return true;
        }
        let Some((_scheme, rest)) = origin.split_once("://") else {
            return false;
        };
        let host = if let Some(bracketed) = rest.strip_prefix('[') {
            bracketed.split(']').next().map(|h| format!("[{h}]"))
        } else {
            rest.split(':').next().map(str::to_string)
        };
        matches!(host.as_deref(), Some("localhost" | "127.0.0.1" | "[::1]"))
    }

    /// The principal an `Authorization` header proves, `Ok(None)` when no
    /// tokens are configured, `Err` when one is needed and not given.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Option<Principal>, NoToken> {
        let Some(tokens) = &self.tokens else {
            return Ok(None);
        };
        let presented = authorization
            .and_then(|h| {
                let (scheme, token) = h.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .ok_or(NoToken)?;
        // Every token is compared, in time that depends only on lengths,
        // so timing tells nothing about which bytes (or which token) matched.
        let mut found = None;
        for (name, token) in tokens {
            if constant_time_eq(presented.as_bytes(), token.as_bytes()) {
                found = Some(Arc::clone(name));
            }
        }
        found.map(Some).ok_or(NoToken)
    }
}

/// A token is required and none of the configured ones was presented.
#[derive(Debug, PartialEq, Eq)]
pub struct NoToken;

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

/// Reads `--auth-token-file`: one `name:token` per line; blank lines and
/// `#` comments are skipped.
pub fn read_token_file(path: &Path) -> Result<Vec<(Principal, String)>, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::config(
            "--auth-token-file",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    parse_tokens(&text).map_err(|reason| {
        Error::config("--auth-token-file", format!("{}: {reason}", path.display()))
    })
}

fn parse_tokens(text: &str) -> Result<Vec<(Principal, String)>, String> {
    let mut tokens: Vec<(Principal, String)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, token)) = line.split_once(':') else {
            return Err(format!("line {}: expected `name:token`", n + 1));
        };
        let (name, token) = (name.trim(), token.trim());
        if name.is_empty() || token.is_empty() {
            return Err(format!("line {}: empty name or token", n + 1));
        }
        if tokens.iter().any(|(_, t)| t == token) {
            return Err(format!("line {}: this token is already given", n + 1));
        }
        tokens.push((name.into(), token.to_string()));
    }
    if tokens.is_empty() {
        return Err("no tokens (expected `name:token` lines)".into());
    }
    Ok(tokens)
}

/// A fresh session id, `NODE.<random>`: this node's id, a `.`, then
/// [`random_hex`]. The random part alone makes it unguessable; the node
/// field lets a balancer route on it.
pub fn new_session_id(node: &NodeId) -> io::Result<String> {
    Ok(format!("{node}.{}", random_hex()?))
}

/// 128 bits from the kernel's random source, as 32 lowercase hex digits
/// (visible ASCII, safe in a header and a URL).
pub fn random_hex() -> io::Result<String> {
    let mut bytes = [0u8; 16];
    let mut filled = 0;
    while filled < bytes.len() {
        let rest = &mut bytes[filled..];
        // SAFETY: getrandom writes at most `rest.len()` bytes into `rest`.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    let mut hex = String::with_capacity(32);
    for b in bytes {
        let _ = write!(hex, "{b:02x}");
    }
    Ok(hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localhost_origins_pass_and_others_only_when_listed() {
        let access = Access {
            tokens: None,
            allowed_origins: vec!["https://app.example".into()],
        };
        for ok in [
            None,
            Some("http://localhost:6274"),
            Some("http://127.0.0.1"),
            Some("https://[::1]:8443"),
            Some("https://app.example"),
        ] {
            assert!(access.origin_allowed(ok), "{ok:?}");
        }
        for bad in [
            "https://evil.example",
            "http://localhost.evil.example",
            "null",
            "https://app.example:444",
            "http://127.0.0.1.nip.io",
        ] {
            assert!(!access.origin_allowed(Some(bad)), "{bad}");
        }
    }

    #[test]
    fn a_token_names_its_principal_and_anything_else_is_refused() {
        let access = Access {
            tokens: Some(parse_tokens("# team\nalice:s3cret\n\nbob: other \n").expect("valid")),
            allowed_origins: Vec::new(),
        };
        assert_eq!(
            access
                .authenticate(Some("Bearer s3cret"))
                .expect("ok")
                .as_deref(),
            Some("alice")
        );
        assert_eq!(
            access
                .authenticate(Some("bearer other"))
                .expect("ok")
                .as_deref(),
            Some("bob")
        );
        for bad in [
            None,
            Some("Bearer s3cre"),
            Some("Basic s3cret"),
            Some("Bearer"),
        ] {
            assert!(access.authenticate(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Access::default().authenticate(None), Ok(None));
    }

    #[test]
    fn token_files_with_mistakes_are_refused_with_the_line() {
        assert!(parse_tokens("alice").unwrap_err().contains("line 1"));
        assert!(parse_tokens("a:x\nb:x").unwrap_err().contains("line 2"));
        assert!(parse_tokens("\n# none\n").is_err());
    }

    #[test]
    fn session_ids_are_the_node_and_32_hex_digits_and_differ() {
        let node = NodeId::parse("forkline-2").expect("valid");
        let a = new_session_id(&node).expect("random");
        let b = new_session_id(&node).expect("random");
        let random = a.strip_prefix("forkline-2.").expect("the node field first");
        assert_eq!(random.len(), 32);
        assert!(
            random
                .bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert!(!node.names_other_node(&a));
        assert_ne!(a, b);
    }
}
