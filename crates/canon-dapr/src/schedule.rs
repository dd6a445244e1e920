//! Job schedules (6-field cron, `@every`, the `@daily` family), Go and ISO 8601 durations, and
//! RFC 3339 times, as the Dapr Jobs API writes them. Times are milliseconds since the epoch;
//! arithmetic never overflows (an answer too far away is an error or `None`).

use std::time::Duration;

/// A parsed schedule.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// `@every <duration>`.
    Every(Duration),
    /// A 6-field cron expression (the `@daily` family expands to one).
    Cron(Box<croner::Cron>),
}

impl Schedule {
    /// Parses a Dapr schedule; the error says what is wrong.
    pub fn parse(s: &str) -> Result<Schedule, String> {
        let s = s.trim();
        let cron = match s {
            "@yearly" | "@annually" => "0 0 0 1 1 *",
            "@monthly" => "0 0 0 1 * *",
            "@weekly" => "0 0 0 * * 0",
            "@daily" | "@midnight" => "0 0 0 * * *",
            "@hourly" => "0 0 * * * *",
            _ => {
                if let Some(d) = s.strip_prefix("@every ") {
                    let d = go_duration(d.trim())?;
                    if d.is_zero() {
                        return Err("@every needs a positive duration".to_owned());
                    }
                    if d > Duration::from_secs(100 * 366 * 86_400) {
                        return Err(format!("@every {d:?} is longer than a century"));
                    }
                    return Ok(Schedule::Every(d));
                }
                if s.starts_with('@') {
                    return Err(format!("schedule {s:?}: unknown @ period"));
                }
                if s.split_whitespace().count() != 6 {
                    return Err(format!(
                        "schedule {s:?}: a cron schedule has 6 fields (second minute hour day-of-month month day-of-week)"
                    ));
                }
                // croner skips an empty item of a list (`1,,2`, `,`): a field of nothing but
                // commas would match no time, and the search for the next tick would run to
                // the year 5000 (minutes of CPU, found by the job_schedule fuzz target).
                if let Some(field) = s
                    .split_whitespace()
                    .find(|f| f.split(',').any(|item| item.trim().is_empty()))
                {
                    return Err(format!(
                        "schedule {s:?}: the field {field:?} has an empty item in its list"
                    ));
                }
                s
            }
        };
        croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Required)
            .year(croner::parser::Year::Disallowed)
            .build()
            .parse(cron)
            .map(|c| Schedule::Cron(Box::new(c)))
            .map_err(|e| format!("schedule {s:?}: {e}"))
    }

    /// The first tick strictly after `after_ms`.
    pub fn next_after(&self, after_ms: i64, anchor_ms: i64) -> Option<i64> {
        match self {
            Schedule::Every(d) => {
                let step = i64::try_from(d.as_millis()).ok()?.max(1);
                // Ticks are anchor + k * step.
                let k = after_ms.checked_sub(anchor_ms)?.div_euclid(step) + 1;
                k.max(1).checked_mul(step)?.checked_add(anchor_ms)
            }
            Schedule::Cron(c) => {
                let t = chrono::DateTime::from_timestamp_millis(after_ms)?;
                c.find_next_occurrence(&t, false)
                    .ok()
                    .map(|n| n.timestamp_millis())
            }
        }
    }
}

/// A Go duration (`1h30m`, `1.5h`, `300ms`, `2s`).
pub fn go_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration such as 2s, 1h30m or 300ms");
    if s.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let n: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += n * scale;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

/// An ISO 8601 duration without years or months (`PT2S`, `P1DT12H`, `P2W`).
pub fn iso_duration(s: &str) -> Option<Duration> {
    let body = s.strip_prefix('P')?;
    let (date, time) = body.split_once('T').unwrap_or((body, ""));
    let mut secs = 0f64;
    let mut read = |part: &str, units: &[(char, f64)]| -> Option<()> {
        let mut num = String::new();
        for c in part.chars() {
            if c.is_ascii_digit() || c == '.' || c == ',' {
                num.push(if c == ',' { '.' } else { c });
            } else {
                let scale = units.iter().find(|(u, _)| *u == c)?.1;
                secs += num.parse::<f64>().ok()? * scale;
                num.clear();
            }
        }
        num.is_empty().then_some(())
    };
    read(date, &[('W', 604_800.0), ('D', 86_400.0)])?;
    read(time, &[('H', 3600.0), ('M', 60.0), ('S', 1.0)])?;
    if body.is_empty() || body == "T" {
        return None;
    }
    Duration::try_from_secs_f64(secs).ok()
}

/// `dueTime` or `ttl`: an RFC 3339 time, a Go duration or an ISO 8601 duration from `from_ms`.
pub fn point_in_time(s: &str, from_ms: i64, what: &str) -> Result<i64, String> {
    if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
            .map_err(|_| format!("{what} {s:?} is out of range"));
    }
    let d = iso_duration(s)
        .map(Ok)
        .unwrap_or_else(|| go_duration(s))
        .map_err(|_| {
            format!("{what} {s:?} is not an RFC 3339 time, a duration such as 2s, or an ISO 8601 duration such as PT2S")
        })?;
    i64::try_from(d.as_millis())
        .ok()
        .and_then(|ms| from_ms.checked_add(ms))
        .filter(|t| *t < 253_402_300_800_000) // year 10000
        .ok_or_else(|| format!("{what} {s:?} is too far away"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_dapr_writes_them() {
        assert_eq!(go_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(go_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(go_duration("300ms"), Ok(Duration::from_millis(300)));
        assert!(go_duration("5 minutes").is_err());
        assert!(go_duration("").is_err());
        assert_eq!(iso_duration("PT2S"), Some(Duration::from_secs(2)));
        assert_eq!(iso_duration("P1DT1H"), Some(Duration::from_secs(90_000)));
        assert_eq!(iso_duration("P1Y"), None);
        assert_eq!(point_in_time("2s", 1000, "dueTime"), Ok(3000));
        assert_eq!(
            point_in_time("1970-01-01T00:00:05Z", 0, "dueTime"),
            Ok(5000)
        );
        assert!(point_in_time("soon", 0, "dueTime").is_err());
    }

    #[test]
    fn schedules_give_their_next_tick() {
        let every = Schedule::parse("@every 1h30m").expect("every");
        assert_eq!(every.next_after(0, 0), Some(5_400_000));
        assert_eq!(every.next_after(5_400_000, 0), Some(10_800_000));
        let cron = Schedule::parse("*/5 * * * * *").expect("cron");
        assert_eq!(cron.next_after(1_000, 0), Some(5_000));
        let daily = Schedule::parse("@daily").expect("daily");
        assert_eq!(daily.next_after(1_000, 0), Some(86_400_000));
        let at_half = Schedule::parse("0 30 * * * *").expect("cron");
        assert_eq!(at_half.next_after(0, 0), Some(1_800_000));
        let sunday = Schedule::parse("0 0 0 * * sun").expect("names");
        // 1970-01-01 was a Thursday; the first Sunday midnight is the 4th.
        assert_eq!(sunday.next_after(0, 0), Some(3 * 86_400_000));
        for bad in [
            "* * * * *",
            "@sometimes",
            "61 * * * * *",
            "@every soon",
            "@every 0s",
            "*/55 , * * * sun-sat",
            "0 1,,2 * * * *",
            "0 0 0 * * 1,",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
    }
}
