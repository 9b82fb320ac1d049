//! Value parsers for flags: sizes (`64MiB`), durations (`7d`), limits (`unlimited`), headers
//! (`k=v`), codecs. Each returns a message clap prints as a usage error (exit code 2).

use shale_client::proto::Codec;

/// A retention limit given on the command line: a value, or `unlimited` to remove the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// No limit.
    Unlimited,
    /// This many bytes or milliseconds.
    Value(u64),
}

impl Limit {
    /// The value, `None` for unlimited.
    pub fn value(self) -> Option<u64> {
        match self {
            Limit::Unlimited => None,
            Limit::Value(v) => Some(v),
        }
    }
}

/// Splits `12MiB` into `(12, "MiB")`.
fn split_number(s: &str) -> Result<(u64, &str), String> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit() && c != '_').unwrap_or(s.len());
    if digits == 0 {
        return Err(format!("{s:?} does not start with a number"));
    }
    let number: u64 =
        s[..digits].replace('_', "").parse().map_err(|e| format!("{:?} is not a number: {e}", &s[..digits]))?;
    Ok((number, s[digits..].trim()))
}

/// A byte size: a plain number, or with a unit `B`, `KB`/`KiB`, `MB`/`MiB`, `GB`/`GiB`, `TB`/`TiB`
/// (decimal for `KB`, binary for `KiB`; case-insensitive).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let (n, unit) = split_number(s)?;
    let factor: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        other => return Err(format!("unknown size unit {other:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)")),
    };
    n.checked_mul(factor).ok_or_else(|| format!("{s:?} is too large"))
}

/// A duration in milliseconds: a plain number (ms), or with a unit `ms`, `s`, `m`, `h`, `d`, `w`.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let (n, unit) = split_number(s)?;
    let factor: u64 = match unit {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        other => return Err(format!("unknown duration unit {other:?} (use ms, s, m, h, d, w)")),
    };
    n.checked_mul(factor).ok_or_else(|| format!("{s:?} is too large"))
}

/// A point in time as ms since the Unix epoch: a plain number (ms since the epoch) or an RFC 3339
/// timestamp (`2026-12-03T10:00:00Z`, `2026-12-03T11:00:00.250+01:00`).
pub fn parse_time_ms(s: &str) -> Result<u64, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().map_err(|_| format!("{s:?} is too large"));
    }
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("{s:?} is neither ms since the Unix epoch nor an RFC 3339 time ({e})"))?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).map_err(|_| format!("{s:?} is before the Unix epoch"))
}

fn parse_limit(s: &str, value: impl Fn(&str) -> Result<u64, String>) -> Result<Limit, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "unlimited" | "none" | "-1" => Ok(Limit::Unlimited),
        _ => value(s).map(Limit::Value),
    }
}

/// A size limit (`10GiB`) or `unlimited`.
pub fn parse_bytes_limit(s: &str) -> Result<Limit, String> {
    parse_limit(s, parse_bytes)
}

/// An age limit (`7d`) or `unlimited`.
pub fn parse_duration_limit(s: &str) -> Result<Limit, String> {
    parse_limit(s, parse_duration_ms)
}

/// A record header `key=value` (the value may be empty and may contain `=`).
pub fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("header {s:?} is not key=value")),
    }
}

/// A topic codec: `none`, `lz4` or `zstd`.
pub fn parse_codec(s: &str) -> Result<Codec, String> {
    match s.to_ascii_lowercase().as_str() {
        "none" => Ok(Codec::None),
        "lz4" => Ok(Codec::Lz4),
        "zstd" => Ok(Codec::Zstd),
        other => Err(format!("unknown codec {other:?} (use none, lz4 or zstd)")),
    }
}

/// A codec's name as the CLI prints it.
pub fn codec_name(codec: i32) -> &'static str {
    match Codec::try_from(codec) {
        Ok(Codec::Lz4) => "lz4",
        Ok(Codec::Zstd) => "zstd",
        Ok(Codec::None | Codec::Unspecified) => "none",
        Err(_) => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_epoch_ms_or_rfc3339() {
        assert_eq!(parse_time_ms("1764756000123"), Ok(1_764_756_000_123));
        assert_eq!(parse_time_ms("1970-01-01T00:00:01Z"), Ok(1_000));
        assert_eq!(parse_time_ms("2025-12-03T10:00:00.250Z"), Ok(1_764_756_000_250));
        assert_eq!(parse_time_ms("2025-12-03T11:00:00.250+01:00"), Ok(1_764_756_000_250));
        assert!(parse_time_ms("1969-12-31T23:59:59Z").is_err());
        assert!(parse_time_ms("yesterday").is_err());
        assert!(parse_time_ms("").is_err());
    }

    #[test]
    fn sizes_parse_with_decimal_and_binary_units() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("1KiB"), Ok(1024));
        assert_eq!(parse_bytes("1kb"), Ok(1000));
        assert_eq!(parse_bytes("64 MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("10GiB"), Ok(10 << 30));
        assert_eq!(parse_bytes("1_000"), Ok(1000));
        assert!(parse_bytes("MiB").is_err());
        assert!(parse_bytes("12 parsecs").unwrap_err().contains("unknown size unit"));
        assert!(parse_bytes("99999999999999999999TiB").is_err());
        assert!(parse_bytes("20000000TiB").unwrap_err().contains("too large"));
    }

    #[test]
    fn durations_parse_to_milliseconds() {
        assert_eq!(parse_duration_ms("250"), Ok(250));
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms("30s"), Ok(30_000));
        assert_eq!(parse_duration_ms("5m"), Ok(300_000));
        assert_eq!(parse_duration_ms("12h"), Ok(43_200_000));
        assert_eq!(parse_duration_ms("7d"), Ok(604_800_000));
        assert_eq!(parse_duration_ms("1w"), Ok(604_800_000));
        assert!(parse_duration_ms("3 fortnights").is_err());
    }

    #[test]
    fn limits_accept_unlimited() {
        assert_eq!(parse_bytes_limit("unlimited"), Ok(Limit::Unlimited));
        assert_eq!(parse_bytes_limit("-1"), Ok(Limit::Unlimited));
        assert_eq!(parse_bytes_limit("1GiB"), Ok(Limit::Value(1 << 30)));
        assert_eq!(parse_duration_limit("NONE"), Ok(Limit::Unlimited));
        assert_eq!(parse_duration_limit("1d").map(Limit::value), Ok(Some(86_400_000)));
    }

    #[test]
    fn headers_split_at_the_first_equals() {
        assert_eq!(parse_header("trace=a=b"), Ok(("trace".into(), "a=b".into())));
        assert_eq!(parse_header("k="), Ok(("k".into(), String::new())));
        assert!(parse_header("=v").is_err());
        assert!(parse_header("novalue").is_err());
    }

    #[test]
    fn codecs_parse_and_print() {
        assert_eq!(parse_codec("LZ4"), Ok(Codec::Lz4));
        assert_eq!(parse_codec("zstd"), Ok(Codec::Zstd));
        assert!(parse_codec("snappy").is_err());
        assert_eq!(codec_name(Codec::Zstd as i32), "zstd");
        assert_eq!(codec_name(Codec::Unspecified as i32), "none");
        assert_eq!(codec_name(99), "unknown");
    }
}
