//! The two date formats sessions meet: the HTTP date of `Set-Cookie: Expires=` and the
//! ISO-8601 UTC string JavaScript's `Date.prototype.toISOString` writes (express-session's
//! `cookie.expires`). Milliseconds since the Unix epoch in, text out, and back.
//!
//! A leaf: imports nothing from the crate.

const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Latest instant handled: the year 9999.
const MAX_MS: u64 = 253_402_300_799_999;

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m as u32, d as u32)
}

/// Days since 1970-01-01 of a civil date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

struct Parts {
    y: i64,
    mo: u32,
    d: u32,
    h: u64,
    mi: u64,
    s: u64,
    ms: u64,
    weekday: usize,
}

fn parts(ms: u64) -> Parts {
    let ms = ms.min(MAX_MS);
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let (y, mo, d) = civil_from_days(days);
    let rem = secs % 86_400;
    Parts {
        y,
        mo,
        d,
        h: rem / 3600,
        mi: rem % 3600 / 60,
        s: rem % 60,
        ms: ms % 1000,
        weekday: usize::try_from(days.rem_euclid(7)).unwrap_or(0),
    }
}

/// `Thu, 26 Nov 2026 18:50:56 GMT` (seconds, rounded down, as JavaScript's `toUTCString`).
pub(crate) fn http_date(ms: u64) -> String {
    let p = parts(ms);
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        DAYS[p.weekday],
        p.d,
        MONTHS[(p.mo - 1) as usize],
        p.y,
        p.h,
        p.mi,
        p.s
    )
}

/// `2026-11-26T18:50:56.263Z`, as JavaScript's `toISOString`.
pub(crate) fn iso(ms: u64) -> String {
    let p = parts(ms);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        p.y, p.mo, p.d, p.h, p.mi, p.s, p.ms
    )
}

fn num(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fff]Z` (UTC only, as `toISOString` writes it).
pub(crate) fn parse_iso(s: &str) -> Option<u64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-');
    let (y, mo, day) = (num(d.next()?)?, num(d.next()?)?, num(d.next()?)?);
    let (hms, frac) = match time.split_once('.') {
        Some((hms, frac)) => (hms, Some(frac)),
        None => (time, None),
    };
    let mut t = hms.splitn(3, ':');
    let (h, mi, sec) = (num(t.next()?)?, num(t.next()?)?, num(t.next()?)?);
    let ms = match frac {
        None => 0,
        Some(f) if (1..=9).contains(&f.len()) => {
            let digits: String = f.chars().chain("00".chars()).take(3).collect();
            num(&digits)?
        }
        Some(_) => return None,
    };
    if !(1970..=9999).contains(&y)
        || !(1..=12).contains(&mo)
        || !(1..=31).contains(&day)
        || h > 23
        || mi > 59
        || sec > 60
    {
        return None;
    }
    let days = days_from_civil(i64::try_from(y).ok()?, mo as u32, day as u32);
    let secs = u64::try_from(days).ok()? * 86_400 + h * 3600 + mi * 60 + sec;
    Some(secs * 1000 + ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-26T18:50:56.263Z, from the live express-session capture.
    const CAPTURED: u64 = 1_795_719_056_263;

    #[test]
    fn formats_match_javascript() {
        assert_eq!(iso(CAPTURED), "2026-11-26T18:50:56.263Z");
        assert_eq!(http_date(CAPTURED), "Thu, 26 Nov 2026 18:50:56 GMT");
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(iso(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn iso_round_trips() {
        for ms in [0, 1, 951_782_400_000, CAPTURED, 4_102_444_800_000] {
            assert_eq!(parse_iso(&iso(ms)), Some(ms));
        }
        assert_eq!(parse_iso("2026-11-26T18:50:56Z"), Some(CAPTURED - 263));
        assert_eq!(parse_iso("2026-11-26T18:50:56.2Z"), Some(CAPTURED - 63));
        for bad in [
            "",
            "2026-11-26",
            "2026-13-01T00:00:00Z",
            "2026-11-26T18:50:56+01:00",
            "x-y-zTa:b:cZ",
            "2026-11-26T18:50:56.Z",
        ] {
            assert_eq!(parse_iso(bad), None, "{bad}");
        }
    }
}
