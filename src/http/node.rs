//! This node's name (`serve --node-id`), the first field of every HTTP
//! session id it mints: `NODE.<128-bit random>`.
//!
//! Scale-out keeps no shared state: a load balancer in front of many
//! nodes reads the node field of `Mcp-Session-Id` (or of the legacy
//! transport's `?sessionId=`) and sends the request to the server of that
//! name. So the name must be something a balancer can match literally
//! and carry in a header and a URL unchanged: ASCII letters, digits and
//! `-`, at most [`MAX_LEN`] of them, and never a `.` (the separator).
//! The default comes from the host name, which in the usual deployments
//! (a Kubernetes StatefulSet pod, a VM) is already the name the balancer
//! knows the node by.

use std::fmt;
use std::sync::Arc;

/// The longest node id: long enough for a pod name like `forkline-12`
/// or a short host name, short enough to keep session ids compact.
pub const MAX_LEN: usize = 32;

/// What the default falls back to when the host name has nothing usable.
const FALLBACK: &str = "node";

/// A valid node id. Cheap to clone (the front end keeps one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeId(Arc<str>);

impl NodeId {
    /// Checks a `--node-id` value; the error says what is allowed.
    pub fn parse(text: &str) -> Result<NodeId, String> {
        if text.is_empty() || text.len() > MAX_LEN {
            return Err(format!(
                "must be 1 to {MAX_LEN} characters long, got {} in `{text}`",
                text.len()
            ));
        }
        if let Some(bad) = text
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(format!(
                "only letters, digits and `-` are allowed (a session id is NODE.<random>), \
                 got `{bad}` in `{text}`"
            ));
        }
        Ok(NodeId(text.into()))
    }

    /// The default: this machine's host name, made valid.
    pub fn from_host_name() -> NodeId {
        NodeId::from_host(&host_name().unwrap_or_default())
    }

    /// `host`'s first label (the short name, as `hostname -s` prints it),
    /// lowercased, with every character a node id cannot hold turned into
    /// `-`, trimmed of `-` and cut to [`MAX_LEN`]; [`FALLBACK`] when
    /// nothing is left.
    fn from_host(host: &str) -> NodeId {
        let short = host.split('.').next().unwrap_or_default();
        let name: String = short
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .take(MAX_LEN)
            .collect();
        let name = match name.trim_matches('-') {
            "" => FALLBACK,
            trimmed => trimmed,
        };
        debug_assert!(NodeId::parse(name).is_ok(), "{name}");
        NodeId(name.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether session id `id` names another node in its node field: a
    /// request that a balancer sent here although its session lives (or
    /// lived) elsewhere. An id without a node field names none.
    pub fn names_other_node(&self, id: &str) -> bool {
        node_of(id).is_some_and(|node| node != self.as_str())
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The node field of a session id: everything before its first `.`;
/// `None` for an id without one.
pub fn node_of(session_id: &str) -> Option<&str> {
    session_id.split_once('.').map(|(node, _)| node)
}

/// gethostname(2); `None` if it fails or is not UTF-8.
fn host_name() -> Option<String> {
    // HOST_NAME_MAX is 64 on Linux; one more for the terminating NUL.
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    std::str::from_utf8(&buf[..len]).ok().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_letters_digits_and_dashes() {
        for ok in ["n1", "forkline-0", "A-b-3", "x", &"a".repeat(MAX_LEN)] {
            assert_eq!(NodeId::parse(ok).map(|n| n.to_string()), Ok(ok.to_string()));
        }
        for bad in [
            "",
            "a.b",
            "a_b",
            "a b",
            "é",
            "n1/",
            &"a".repeat(MAX_LEN + 1),
        ] {
            assert!(NodeId::parse(bad).is_err(), "{bad:?}");
        }
        let why = NodeId::parse("a.b").unwrap_err();
        assert!(why.contains('.') && why.contains("letters"), "{why}");
    }

    #[test]
    fn the_default_from_a_host_name_is_always_valid() {
        let cases = [
            ("forkline-0", "forkline-0"),
            ("Web01.prod.example.com", "web01"),
            ("my_box", "my-box"),
            ("--edge--", "edge"),
            ("", "node"),
            ("...", "node"),
            ("___", "node"),
            ("héllo", "h-llo"),
        ];
        for (host, want) in cases {
            assert_eq!(NodeId::from_host(host).as_str(), want, "{host:?}");
        }
        let long = NodeId::from_host(&format!("{}-{}", "a".repeat(31), "b".repeat(40)));
        assert_eq!(
            long.as_str(),
            "a".repeat(31),
            "cut, then trimmed of its dash"
        );
        // Whatever this machine is called.
        let here = NodeId::from_host_name();
        assert!(NodeId::parse(here.as_str()).is_ok(), "{here}");
    }

    #[test]
    fn only_an_id_naming_another_node_is_another_nodes() {
        let node = NodeId::parse("n1").expect("valid");
        assert!(node.names_other_node("n2.0123"));
        assert!(node.names_other_node("n10.0123"));
        assert!(node.names_other_node(".0123"));
        assert!(!node.names_other_node("n1.0123"));
        assert!(!node.names_other_node("0123456789abcdef0123456789abcdef"));
        assert_eq!(node_of("a.b.c"), Some("a"));
        assert_eq!(node_of("abc"), None);
    }
}
