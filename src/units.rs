//! Byte sizes and durations as they appear in policy files ("512M", "2G", "max", "150ms", "30s").
//!
//! Owned by: policy parsing. The rest of the crate only sees `u64` bytes, [`Limit`] and
//! `std::time::Duration`, plus [`human_bytes`] for printing.
//!
//! Each type parses with `FromStr` and deserializes through the same code, so a bad unit can never
//! reach a validated policy, and the message a user sees is the same from every entry point.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A byte count written with an optional binary suffix: "0", "4096", "512K", "512M", "2G", "1T".
/// Suffixes are powers of 1024, as the kernel's own memparse() reads them in cgroup files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

/// A cgroup memory limit: a byte count, or "max" (no limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    Max,
    Bytes(u64),
}

impl Limit {
    /// The text the kernel expects in memory.high / memory.max / memory.swap.max.
    pub fn to_kernel(self) -> String {
        match self {
            Limit::Max => "max".to_string(),
            Limit::Bytes(b) => b.to_string(),
        }
    }

    /// `None` for "max".
    pub fn bytes(self) -> Option<u64> {
        match self {
            Limit::Max => None,
            Limit::Bytes(b) => Some(b),
        }
    }
}

/// A duration written the humantime way: "150ms", "1s", "30s", "5m", "1h".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

/// Why a byte size or duration was refused. Every variant carries the text that was written, and
/// the message says how to write it instead.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error(
        "empty byte size: write a whole number with an optional K, M, G or T suffix, e.g. 512M"
    )]
    Empty,
    #[error("`{value}` is negative: byte sizes are 0 or more")]
    Negative { value: String },
    #[error("`{value}` is fractional: byte sizes are whole numbers, write it in a smaller unit (e.g. 1536M, not 1.5G)")]
    Fractional { value: String },
    #[error("`{value}` does not fit in 64 bits: use a smaller size or \"max\"")]
    Overflow { value: String },
    #[error("`{value}` has an unknown suffix `{suffix}`: use K, M, G or T (powers of 1024), or none for bytes")]
    BadSuffix { value: String, suffix: String },
    #[error("`{value}` is not a byte size: write a whole number with an optional K, M, G or T suffix, e.g. 512M")]
    NotANumber { value: String },
    #[error("`{value}` is not a duration ({reason}): write e.g. 150ms, 30s, 5m or 1h")]
    Duration { value: String, reason: String },
}

/// Binary suffixes accepted after the number, with their multiplier. Lower case is accepted
/// because the kernel's memparse() accepts it, so a value copied from a cgroup doc still works.
const SUFFIXES: [(char, u64); 4] = [
    ('K', 1 << 10),
    ('M', 1 << 20),
    ('G', 1 << 30),
    ('T', 1 << 40),
];

impl FromStr for ByteSize {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, UnitError> {
        let value = || s.to_string();
        if s.is_empty() {
            return Err(UnitError::Empty);
        }
        if s.starts_with('-') {
            return Err(UnitError::Negative { value: value() });
        }
        let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (digits, rest) = s.split_at(digits_end);
        if digits.is_empty() {
            return Err(UnitError::NotANumber { value: value() });
        }
        if rest.starts_with('.') {
            return Err(UnitError::Fractional { value: value() });
        }
        let multiplier = match rest {
            "" => 1,
            _ => {
                let mut chars = rest.chars();
                let found = match (chars.next(), chars.next()) {
                    (Some(c), None) => SUFFIXES
                        .iter()
                        .find(|(suffix, _)| c.eq_ignore_ascii_case(suffix)),
                    _ => None,
                };
                match found {
                    Some((_, multiplier)) => *multiplier,
                    None => {
                        return Err(UnitError::BadSuffix {
                            value: value(),
                            suffix: rest.to_string(),
                        })
                    }
                }
            }
        };
        // Only digits are left, so a parse failure can only be overflow.
        let n: u64 = digits
            .parse()
            .map_err(|_| UnitError::Overflow { value: value() })?;
        n.checked_mul(multiplier)
            .map(ByteSize)
            .ok_or(UnitError::Overflow { value: value() })
    }
}

impl FromStr for Limit {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, UnitError> {
        if s == "max" {
            return Ok(Limit::Max);
        }
        s.parse::<ByteSize>().map(|b| Limit::Bytes(b.0))
    }
}

impl FromStr for Dur {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, UnitError> {
        humantime::parse_duration(s)
            .map(Dur)
            .map_err(|e| UnitError::Duration {
                value: s.to_string(),
                reason: e.to_string(),
            })
    }
}

/// Exact and parseable: the largest suffix that divides the value, so `1610612736` prints as
/// "1536M" and reads back the same. Used in error messages, where the user compares it with
/// what they wrote.
impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let exact = SUFFIXES
            .iter()
            .rev()
            .find(|(_, m)| self.0 != 0 && self.0.is_multiple_of(*m));
        match exact {
            Some((suffix, m)) => write!(f, "{}{}", self.0 / m, suffix),
            None => write!(f, "{}", self.0),
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Max => f.write_str("max"),
            Limit::Bytes(b) => ByteSize(*b).fmt(f),
        }
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_zero() {
            // humantime prints "0s"; keep it, but make the intent explicit here.
            return f.write_str("0s");
        }
        humantime::format_duration(self.0).fmt(f)
    }
}

/// Short, approximate, for tables: at most one decimal, e.g. 1610612736 -> "1.5G",
/// 1000000000 -> "953.7M", 2147483648 -> "2G", 512 -> "512". Not exact: use `ByteSize`'s Display
/// where the value must read back.
pub fn human_bytes(n: u64) -> String {
    let mut unit = ('\0', 1u64);
    for (suffix, m) in SUFFIXES {
        if n >= m {
            unit = (suffix, m);
        }
    }
    let (suffix, m) = unit;
    if m == 1 {
        return n.to_string();
    }
    // Tenths, rounded half up; u128 so the rounding can't overflow near u64::MAX.
    let tenths = (u128::from(n) * 10 + u128::from(m) / 2) / u128::from(m);
    // Rounding can carry into the next unit (1023.96K -> "1024.0K"); show "1M" instead.
    if tenths >= 10240 {
        if let Some((next, _)) = SUFFIXES.iter().find(|(_, nm)| *nm == m << 10) {
            return format!("1{next}");
        }
    }
    if tenths % 10 == 0 {
        format!("{}{suffix}", tenths / 10)
    } else {
        format!("{}.{}{suffix}", tenths / 10, tenths % 10)
    }
}

/// Accepts YAML strings ("512M") and plain integers (`swap_max: 0`).
impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SizeVisitor).map(ByteSize)
    }
}

/// Accepts "max", byte-size strings and plain integers.
impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct LimitVisitor;
        impl<'de> Visitor<'de> for LimitVisitor {
            type Value = Limit;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"max\" or a byte size such as 512M")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Limit, E> {
                s.parse().map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Limit, E> {
                SizeVisitor.visit_u64(n).map(Limit::Bytes)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Limit, E> {
                SizeVisitor.visit_i64(n).map(Limit::Bytes)
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Limit, E> {
                SizeVisitor.visit_f64(n).map(Limit::Bytes)
            }
        }
        d.deserialize_any(LimitVisitor)
    }
}

/// Shared by ByteSize and Limit so integers and strings get the same messages.
struct SizeVisitor;

impl<'de> Visitor<'de> for SizeVisitor {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a byte size such as 512M")
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<u64, E> {
        s.parse::<ByteSize>().map(|b| b.0).map_err(E::custom)
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<u64, E> {
        Ok(n)
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<u64, E> {
        u64::try_from(n).map_err(|_| {
            E::custom(UnitError::Negative {
                value: n.to_string(),
            })
        })
    }
    fn visit_f64<E: de::Error>(self, n: f64) -> Result<u64, E> {
        Err(E::custom(UnitError::Fractional {
            value: n.to_string(),
        }))
    }
}

/// Accepts humantime strings, and the bare integer 0 (`for: 0`); any other bare number is refused
/// because "30" could mean seconds or milliseconds.
impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct DurVisitor;
        impl<'de> Visitor<'de> for DurVisitor {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as 150ms, 30s or 5m")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Dur, E> {
                s.parse().map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Dur, E> {
                if n == 0 {
                    return Ok(Dur(Duration::ZERO));
                }
                Err(E::custom(format!(
                    "`{n}` has no unit: write e.g. {n}s or {n}ms"
                )))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Dur, E> {
                match u64::try_from(n) {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::custom(format!(
                        "`{n}` is negative: durations are 0 or more"
                    ))),
                }
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    "`{n}` has no unit: write e.g. 1.5s or 1500ms"
                )))
            }
        }
        d.deserialize_any(DurVisitor)
    }
}

/// A duration the way the log lines and the table show it: `640ms`, `1.5s`, `5m 3s`.
pub fn fmt_dur(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else if d < Duration::from_secs(120) {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(s: &str) -> Result<u64, UnitError> {
        s.parse::<ByteSize>().map(|b| b.0)
    }

    #[test]
    fn byte_sizes_parse_with_binary_suffixes() {
        assert_eq!(size("0"), Ok(0));
        assert_eq!(size("4096"), Ok(4096));
        assert_eq!(size("512K"), Ok(512 * 1024));
        assert_eq!(size("512M"), Ok(512 << 20));
        assert_eq!(size("2G"), Ok(2 << 30));
        assert_eq!(size("1T"), Ok(1 << 40));
        assert_eq!(size("2g"), Ok(2 << 30), "memparse accepts lower case");
        assert_eq!(size("18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn byte_sizes_refuse_bad_input() {
        assert_eq!(size(""), Err(UnitError::Empty));
        assert!(matches!(size("-1"), Err(UnitError::Negative { .. })));
        assert!(matches!(size("-1G"), Err(UnitError::Negative { .. })));
        assert!(matches!(size("1.5G"), Err(UnitError::Fractional { .. })));
        assert!(matches!(
            size("18446744073709551616"),
            Err(UnitError::Overflow { .. })
        ));
        assert!(matches!(size("16777216T"), Err(UnitError::Overflow { .. })));
        for bad in ["512MB", "2GiB", "1P", "5X", "1 G", "1GG"] {
            assert!(
                matches!(size(bad), Err(UnitError::BadSuffix { .. })),
                "{bad}"
            );
        }
        for bad in ["G", "max", " 1", "+1", "0x10"] {
            assert!(size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_name_the_value_and_the_fix() {
        let msg = size("1.5G").unwrap_err().to_string();
        assert!(msg.contains("`1.5G`") && msg.contains("1536M"), "{msg}");
        let msg = size("2GB").unwrap_err().to_string();
        assert!(
            msg.contains("`GB`") && msg.contains("K, M, G or T"),
            "{msg}"
        );
    }

    #[test]
    fn limits_parse_max_or_bytes() {
        assert_eq!("max".parse(), Ok(Limit::Max));
        assert_eq!("2G".parse(), Ok(Limit::Bytes(2 << 30)));
        assert!(
            "MAX".parse::<Limit>().is_err(),
            "the kernel only writes lower-case max"
        );
        assert!("".parse::<Limit>().is_err());
        assert_eq!(Limit::Max.to_kernel(), "max");
        assert_eq!(Limit::Bytes(1536 << 20).to_kernel(), "1610612736");
    }

    #[test]
    fn durations_parse_with_humantime() {
        let d = |s: &str| s.parse::<Dur>().map(|d| d.0);
        assert_eq!(d("150ms"), Ok(Duration::from_millis(150)));
        assert_eq!(d("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(d("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(d("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(d("0"), Ok(Duration::ZERO));
        assert_eq!(d("1.5s"), Ok(Duration::from_millis(1500)));
        for bad in ["", "30", "-1s", "soon", "5 parsecs"] {
            assert!(matches!(d(bad), Err(UnitError::Duration { .. })), "{bad}");
        }
    }

    #[test]
    fn display_is_exact_and_reads_back() {
        for (n, text) in [
            (0, "0"),
            (4096, "4K"),
            (1610612736, "1536M"),
            (2 << 30, "2G"),
            (1 << 40, "1T"),
            (1000000000, "1000000000"),
            (1023, "1023"),
        ] {
            assert_eq!(ByteSize(n).to_string(), text);
            assert_eq!(size(text), Ok(n), "{text} reads back");
        }
        assert_eq!(Limit::Max.to_string(), "max");
        assert_eq!(Limit::Bytes(3 << 30).to_string(), "3G");
        assert_eq!(Dur(Duration::from_millis(150)).to_string(), "150ms");
        assert_eq!(Dur(Duration::from_secs(300)).to_string(), "5m");
        assert_eq!(Dur(Duration::ZERO).to_string(), "0s");
    }

    #[test]
    fn human_bytes_is_short() {
        assert_eq!(human_bytes(0), "0");
        assert_eq!(human_bytes(512), "512");
        assert_eq!(human_bytes(1024), "1K");
        assert_eq!(human_bytes(1610612736), "1.5G");
        assert_eq!(human_bytes(2 << 30), "2G");
        assert_eq!(human_bytes(1000000000), "953.7M");
        assert_eq!(
            human_bytes(1024 * 1024 - 1),
            "1M",
            "rounding carries into the next unit"
        );
        assert_eq!(human_bytes(u64::MAX), "16777216T");
    }

    #[derive(Debug, Deserialize)]
    struct Doc {
        size: Option<ByteSize>,
        limit: Option<Limit>,
        dur: Option<Dur>,
    }

    fn doc(text: &str) -> Result<Doc, String> {
        serde_yaml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn deserialize_accepts_strings_and_integers() {
        let d = doc("size: 512M\nlimit: max\ndur: 150ms").unwrap();
        assert_eq!(d.size, Some(ByteSize(512 << 20)));
        assert_eq!(d.limit, Some(Limit::Max));
        assert_eq!(d.dur, Some(Dur(Duration::from_millis(150))));
        let d = doc("size: 4096\nlimit: 0\ndur: 0").unwrap();
        assert_eq!(d.size, Some(ByteSize(4096)));
        assert_eq!(d.limit, Some(Limit::Bytes(0)));
        assert_eq!(d.dur, Some(Dur(Duration::ZERO)));
    }

    #[test]
    fn deserialize_refuses_with_the_parse_message() {
        for (text, needle) in [
            ("size: -1", "negative"),
            ("size: 1.5", "fractional"),
            ("size: 2GB", "unknown suffix"),
            ("limit: -5", "negative"),
            ("limit: unlimited", "not a byte size"),
            ("dur: 30", "no unit"),
            ("dur: -1", "negative"),
            ("dur: 1.5", "no unit"),
            ("size: [1]", "byte size"),
        ] {
            let err = doc(text).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
