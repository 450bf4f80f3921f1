//! Durations. The workspace has one duration grammar, humantime's
//! (`humantime::parse_duration`: `500ms`, `30s`, `10m`, `1h 30m`, `7d`,
//! `2weeks`). A duration in the VideoChatCluster spec is written in a part
//! of it that the API server checks too: terms of a whole number (at most 9
//! digits) and a unit of a second or longer, written together or separated
//! by one space (`90s`, `1h30m`, `1h 30m`, `7d`, `2 weeks` is not one: no
//! space inside a term). [`SPEC_DURATION_PATTERN`] is the CRD's pattern for
//! such fields and [`parse_spec_duration`] accepts exactly the strings it
//! matches.

use std::sync::LazyLock;
use std::time::Duration;

/// A duration field of the spec, as the CRD's schema checks it. The units
/// are humantime's, from seconds to years (a month is 30.44 days, a year
/// 365.25 days); at most 9 digits per number, so no sum overflows.
pub const SPEC_DURATION_PATTERN: &str = r"^[0-9]{1,9}(seconds|second|secs|sec|s|minutes|minute|mins|min|m|hours|hour|hrs|hr|h|days|day|d|weeks|week|wks|wk|w|months|month|M|years|year|yrs|yr|y)( ?[0-9]{1,9}(seconds|second|secs|sec|s|minutes|minute|mins|min|m|hours|hour|hrs|hr|h|days|day|d|weeks|week|wks|wk|w|months|month|M|years|year|yrs|yr|y))*$";

static SPEC_DURATION: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(SPEC_DURATION_PATTERN).expect("the spec duration pattern is a valid regex")
});

/// Parses a spec duration (see the module documentation).
pub fn parse_spec_duration(text: &str) -> Result<Duration, String> {
    if !SPEC_DURATION.is_match(text) {
        return Err(format!(
            "{text:?} is not a duration like 90s, 30m, 1h30m, 1h 30m, 7d or 2w (whole numbers, units from s to y)"
        ));
    }
    humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e}"))
}

/// [`parse_spec_duration`] in whole seconds.
pub fn parse_seconds(text: &str) -> Result<i64, String> {
    let duration = parse_spec_duration(text)?;
    i64::try_from(duration.as_secs()).map_err(|_| format!("{text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_grammar_is_humantime_with_whole_units_of_a_second_or_more() {
        for (text, seconds) in [
            ("90s", 90),
            ("24h", 86_400),
            ("90m", 5_400),
            ("7d", 604_800),
            ("1h30m", 5_400),
            ("1h 30m", 5_400),
            ("2w", 1_209_600),
            ("1week", 604_800),
            ("3days", 259_200),
            ("1M", 2_630_016),
            ("1y", 31_557_600),
            ("999999999y 999999999y", 2 * 999_999_999 * 31_557_600),
        ] {
            assert_eq!(parse_seconds(text), Ok(seconds), "{text}");
        }
        for text in [
            "",
            "30",
            "1.5h",
            "500ms",
            "1 h",
            "1h  30m",
            " 1h",
            "1h ",
            "1H",
            "soon",
            "-1h",
            "1234567890s",
        ] {
            assert!(parse_spec_duration(text).is_err(), "{text:?} accepted");
        }
    }
}
