//! The logger: env_logger on stderr with UTC timestamps, driven by
//! `-v`/`-q` unless `RUST_LOG` says otherwise.
//!
//! stdout is never written here: in `stdio` and `connect` modes it is a
//! protocol stream.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use log::LevelFilter;

/// How log lines look (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `2026-12-02T01:02:03.456Z INFO  [s3] session opened …`
    Text,
    /// `{"time":"…","level":"INFO","session":"s3","msg":"session opened …"}`
    Json,
}

/// Installs the logger. `verbosity` is `-v` count minus `-q` count.
pub fn init(verbosity: i8, format: Format) {
    let level = match verbosity {
        i8::MIN..=-2 => LevelFilter::Error,
        -1 => LevelFilter::Warn,
        0 => LevelFilter::Info,
        1 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    };
    let mut builder = env_logger::Builder::new();
    builder.filter_level(level);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
    }
    match format {
        Format::Text => builder.format(|out, record| {
            writeln!(
                out,
                "{} {:<5} {}",
                Timestamp(SystemTime::now()),
                record.level(),
                record.args()
            )
        }),
        Format::Json => builder.format(|out, record| {
            writeln!(
                out,
                "{}",
                json_line(
                    &Timestamp(SystemTime::now()).to_string(),
                    record.level().as_str(),
                    &record.args().to_string()
                )
            )
        }),
    };
    builder.target(env_logger::Target::Stderr).init();
}

/// One log record as a JSON object. A message about a session starts with
/// its id in brackets (`[s3] …`); that id becomes a field of its own, so a
/// log shipper can index it.
fn json_line(time: &str, level: &str, message: &str) -> String {
    let (session, message) = match message
        .strip_prefix('[')
        .and_then(|rest| rest.split_once("] "))
    {
        Some((id, rest)) if !id.is_empty() && !id.contains(' ') => (Some(id), rest),
        _ => (None, message),
    };
    let mut object = serde_json::Map::new();
    object.insert("time".into(), time.into());
    object.insert("level".into(), level.into());
    if let Some(session) = session {
        object.insert("session".into(), session.into());
    }
    object.insert("msg".into(), message.into());
    serde_json::Value::Object(object).to_string()
}

/// RFC 3339 UTC with milliseconds, computed by hand to spare a date crate.
/// Also the `time` of a tape's start record.
pub struct Timestamp(pub SystemTime);

impl Timestamp {
    /// `20261124T085146Z`: the same instant to the second, in the basic
    /// ISO 8601 form, fit for a file name (no colons) and sorting.
    pub fn compact(&self) -> String {
        let secs = self
            .0
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let (year, month, day) = civil_from_days((secs / 86_400) as i64);
        let rem = secs % 86_400;
        format!(
            "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
            rem / 3600,
            rem / 60 % 60,
            rem % 60
        )
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let since = self.0.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        let (year, month, day) = civil_from_days((secs / 86_400) as i64);
        let rem = secs % 86_400;
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
            rem / 3600,
            rem / 60 % 60,
            rem % 60,
            since.subsec_millis()
        )
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn json_lines_carry_the_session_as_a_field_and_escape_the_message() {
        let line = json_line("T", "INFO", "[s3] session opened peer=\"a\"\n");
        let value: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(value["session"], "s3");
        assert_eq!(value["msg"], "session opened peer=\"a\"\n");
        assert_eq!(value["level"], "INFO");
        let plain: serde_json::Value =
            serde_json::from_str(&json_line("T", "WARN", "[no id] here")).expect("json");
        assert!(plain.get("session").is_none());
        assert_eq!(plain["msg"], "[no id] here");
    }

    #[test]
    fn formats_utc_timestamps() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_509_103_123);
        assert_eq!(Timestamp(t).to_string(), "2026-11-24T08:31:43.123Z");
        assert_eq!(
            Timestamp(UNIX_EPOCH).to_string(),
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(Timestamp(t).compact(), "20261124T083143Z");
    }
}
