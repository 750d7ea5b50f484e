//! Human durations in config: `250ms`, `30s`, `5m`, `1h`, and `off` where a timer may be disabled.

use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// Parses `250ms`, `30s`, `5m`, `2h` (an integer followed by a unit).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("invalid duration {text:?}: missing unit (ms, s, m or h)"))?;
    let (digits, unit) = text.split_at(split);
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected a number then ms, s, m or h"))?;
    let millis = match unit {
        "ms" => Some(value),
        "s" => value.checked_mul(1_000),
        "m" => value.checked_mul(60_000),
        "h" => value.checked_mul(3_600_000),
        _ => {
            return Err(format!(
                "invalid duration {text:?}: unknown unit {unit:?} (use ms, s, m or h)"
            ))
        }
    };
    millis
        .map(Duration::from_millis)
        .ok_or_else(|| format!("invalid duration {text:?}: too large"))
}

/// Parses a duration that may be switched off with `off`.
pub fn parse_optional_duration(text: &str) -> Result<Option<Duration>, String> {
    if text.trim() == "off" {
        return Ok(None);
    }
    let duration = parse_duration(text)?;
    if duration.is_zero() {
        return Err(format!("invalid duration {text:?}: use `off` to disable"));
    }
    Ok(Some(duration))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Raw {
    Text(String),
    Number(u64),
}

fn raw_text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match Raw::deserialize(d) {
        Ok(Raw::Text(t)) => Ok(t),
        Ok(Raw::Number(n)) => Err(serde::de::Error::custom(format!(
            "invalid duration {n}: missing unit, write e.g. {n}s or {n}ms"
        ))),
        Err(_) => Err(serde::de::Error::custom(
            "invalid duration: expected a string such as 250ms, 30s or 5m",
        )),
    }
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    parse_duration(&raw_text(d)?).map_err(serde::de::Error::custom)
}

pub fn deserialize_optional<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    parse_optional_duration(&raw_text(d)?).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
    }

    #[test]
    fn rejects_bad_input() {
        assert!(parse_duration("30").unwrap_err().contains("missing unit"));
        assert!(parse_duration("30x").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_optional_duration("0s").unwrap_err().contains("off"));
    }

    #[test]
    fn off_disables() {
        assert_eq!(parse_optional_duration("off").unwrap(), None);
        assert_eq!(
            parse_optional_duration("15s").unwrap(),
            Some(Duration::from_secs(15))
        );
    }
}
