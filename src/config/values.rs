//! The rules for every limit's value, shared by the command line and the
//! config file, so `--max-sessions 0` and `"maxSessions": 0` are refused
//! with the same words. Each takes the value as text (a JSON number is
//! passed as its text) and says what is wrong in a phrase that follows
//! the flag's or key's name.

use std::time::Duration;

pub fn parse_socket_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("expected IP:PORT, e.g. 127.0.0.1:7070 or [::1]:7070, got `{s}`"))
}

pub fn parse_at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Err(_) if s.parse::<i128>().is_ok() => Err(format!("must be at least 1, got `{s}`")),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("expected a whole number, got `{s}`")),
    }
}

/// A count that may be 0 (`--prespawn`); bounded so that a typo cannot
/// ask for a million processes.
pub fn parse_count(s: &str) -> Result<usize, String> {
    const MAX: usize = 10_000;
    match s.parse::<usize>() {
        Ok(n) if n <= MAX => Ok(n),
        Ok(_) => Err(format!("must be at most {MAX}, got `{s}`")),
        Err(_) if s.parse::<i128>().is_ok() => Err(format!("must be 0 or more, got `{s}`")),
        Err(_) => Err(format!("expected a whole number, got `{s}`")),
    }
}

/// The longest duration a flag takes. Deadlines are `Instant + Duration`,
/// which panics on overflow; a year is far beyond any sane timeout and far
/// below any platform's `Instant` range.
const MAX_SECONDS: u64 = 365 * 24 * 60 * 60;

/// Seconds, with decimals allowed (`0.5`), so tests and impatient users
/// can ask for less than a second; at most `MAX_SECONDS`.
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    bounded_seconds(s, "")
}

/// `parse_seconds` for `--idle-timeout`, whose 0 means "never": the error
/// for a huge value says so, since "never" is what such a user wants.
pub fn parse_idle_timeout(s: &str) -> Result<Duration, String> {
    bounded_seconds(s, "; 0 means never")
}

fn bounded_seconds(s: &str, hint: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("expected seconds, e.g. 5 or 0.5, got `{s}`"))?;
    // Checked before the conversion, which fails on huge values too and
    // would then blame the sign.
    if secs > MAX_SECONDS as f64 {
        return Err(format!(
            "at most {MAX_SECONDS} seconds (365 days){hint}, got `{s}`"
        ));
    }
    let duration = Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("expected a non-negative number of seconds, got `{s}`"))?;
    // A positive value that rounds to zero would silently mean "never".
    if duration.is_zero() && secs > 0.0 {
        return Err(format!("below a nanosecond, got `{s}`"));
    }
    Ok(duration)
}

/// The smallest message limit that still fits a JSON-RPC error object.
const MIN_MESSAGE_BYTES: usize = 64;

pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let (digits, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => t.split_at(at),
        None => (t, ""),
    };
    let multiplier = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "k" => 1024,
        "M" | "MiB" => 1024 * 1024,
        "G" | "GiB" => 1024 * 1024 * 1024,
        _ => {
            return Err(format!(
                "expected bytes, e.g. 65536, 64KiB or 4MiB, got `{s}`"
            ));
        }
    };
    let n: usize = digits
        .parse()
        .map_err(|_| format!("expected bytes, e.g. 65536, 64KiB or 4MiB, got `{s}`"))?;
    let bytes = n
        .checked_mul(multiplier)
        .ok_or_else(|| format!("`{s}` is too large"))?;
    if bytes < MIN_MESSAGE_BYTES {
        return Err(format!("must be at least {MIN_MESSAGE_BYTES} bytes"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_accept_suffixes_and_reject_nonsense() {
        assert_eq!(parse_bytes("4MiB"), Ok(4 * 1024 * 1024));
        assert_eq!(parse_bytes("64KiB"), Ok(65536));
        assert_eq!(parse_bytes("1024"), Ok(1024));
        assert!(parse_bytes("10").is_err(), "below the minimum");
        assert!(parse_bytes("4XB").is_err());
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("99999999999999999999G").is_err());
    }

    #[test]
    fn seconds_allow_decimals_and_reject_negatives() {
        assert_eq!(parse_seconds("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_seconds("300"), Ok(Duration::from_secs(300)));
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("soon").is_err());
        assert!(parse_seconds("inf").is_err());
        assert!(parse_seconds("NaN").is_err());
        assert!(parse_seconds("1e-10").is_err(), "would round to 0 = never");
        assert_eq!(parse_seconds("0"), Ok(Duration::ZERO));
    }
}
