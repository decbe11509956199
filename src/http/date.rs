//! HTTP dates (RFC 9110 §5.6.7): parsed in the three formats a recipient
//! must accept, written as IMF-fixdate, and the calendar arithmetic under
//! both (also the access log's timestamps). Pure, no allocation.

/// Parses an HTTP date in any of the three formats a recipient must
/// accept: IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the obsolete
/// RFC 850 form (`Sunday, 06-Nov-94 08:49:37 GMT`) and asctime
/// (`Sun Nov  6 08:49:37 1994`). Unix seconds; `None` if invalid.
pub fn parse_http_date(s: &[u8]) -> Option<u64> {
    let s = crate::http::trim_ows(s);
    let comma = s.iter().position(|&b| b == b',');
    let (day, month, year, time) = match comma {
        Some(3) => {
            // IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT"
            let rest = s.get(5..)?;
            if rest.len() != 24 || &rest[20..] != b" GMT" || s[4] != b' ' {
                return None;
            }
            (
                digits(&rest[0..2])?,
                month(&rest[3..6])?,
                digits(&rest[7..11])?,
                &rest[12..20],
            )
        }
        Some(_) => {
            // RFC 850: "Sunday, 06-Nov-94 08:49:37 GMT"
            let rest = &s[comma? + 2..];
            if rest.len() != 22 || &rest[18..] != b" GMT" || rest[2] != b'-' || rest[6] != b'-' {
                return None;
            }
            let yy = digits(&rest[7..9])?;
            // Two-digit years: the century that puts it nearest (RFC 9110
            // says a year more than 50 years ahead is the last century's).
            let year = if yy >= 70 { 1900 + yy } else { 2000 + yy };
            (
                digits(&rest[0..2])?,
                month(&rest[3..6])?,
                year,
                &rest[10..18],
            )
        }
        None => {
            // asctime: "Sun Nov  6 08:49:37 1994"
            if s.len() != 24 || s[3] != b' ' || s[7] != b' ' {
                return None;
            }
            let day_text = &s[8..10];
            let day = if day_text[0] == b' ' {
                digits(&day_text[1..])?
            } else {
                digits(day_text)?
            };
            (day, month(&s[4..7])?, digits(&s[20..24])?, &s[11..19])
        }
    };
    if time.len() != 8 || time[2] != b':' || time[5] != b':' {
        return None;
    }
    let (h, m, sec) = (
        digits(&time[0..2])?,
        digits(&time[3..5])?,
        digits(&time[6..8])?,
    );
    if !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 || year < 1970 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(days * 86_400 + h * 3600 + m * 60 + sec)
}

/// Writes `unix` as an IMF-fixdate (29 bytes).
pub fn write_http_date(out: &mut [u8; 29], unix: u64) {
    const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let days = unix / 86_400;
    let secs = unix % 86_400;
    let (year, month, day) = civil_from_days(days);
    out[0..3].copy_from_slice(DAYS[(days % 7) as usize]);
    out[3..5].copy_from_slice(b", ");
    two(&mut out[5..7], day);
    out[7] = b' ';
    out[8..11].copy_from_slice(MONTHS[(month - 1) as usize]);
    out[11] = b' ';
    two(&mut out[12..14], year / 100);
    two(&mut out[14..16], year % 100);
    out[16] = b' ';
    two(&mut out[17..19], secs / 3600);
    out[19] = b':';
    two(&mut out[20..22], secs / 60 % 60);
    out[22] = b':';
    two(&mut out[23..25], secs % 60);
    out[25..29].copy_from_slice(b" GMT");
}

fn two(out: &mut [u8], n: u64) {
    out[0] = b'0' + (n / 10 % 10) as u8;
    out[1] = b'0' + (n % 10) as u8;
}

fn digits(s: &[u8]) -> Option<u64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

fn month(s: &[u8]) -> Option<u64> {
    const NAMES: [&[u8]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    NAMES.iter().position(|m| *m == s).map(|i| i as u64 + 1)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm), for years from 1970.
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).saturating_sub(719_468)
}

/// The (year, month, day) of a day count since 1970-01-01.
pub fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUN_1994: u64 = 784_111_777; // Sun, 06 Nov 1994 08:49:37 GMT

    #[test]
    fn all_three_date_formats_parse_to_the_same_instant() {
        for s in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "  Sun, 06 Nov 1994 08:49:37 GMT ",
        ] {
            assert_eq!(parse_http_date(s.as_bytes()), Some(SUN_1994), "{s}");
        }
        assert_eq!(parse_http_date(b"Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        // A leap second is a valid time.
        assert_eq!(
            parse_http_date(b"Sun, 06 Nov 1994 08:49:60 GMT"),
            Some(SUN_1994 + 23)
        );
        assert_eq!(
            parse_http_date(b"Fri, 04 Dec 2026 09:50:15 GMT"),
            Some(1_796_377_815)
        );
        assert_eq!(
            parse_http_date(b"Thu, 29 Feb 2024 23:59:59 GMT"),
            Some(1_709_251_199)
        );
        // Two-digit years before 70 are this century's.
        assert_eq!(
            parse_http_date(b"Friday, 04-Dec-26 09:50:15 GMT"),
            Some(1_796_377_815)
        );
    }

    #[test]
    fn malformed_dates_are_refused() {
        for s in [
            "",
            "0",
            "-1",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 06 Nov 1994 08:49:37",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 06 Nov 1994 08:60:00 GMT",
            "Sun, 06 Nov 1969 08:49:37 GMT",
            "Sun, 6 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08-49-37 GMT",
            "Sunday, 06 Nov 94 08:49:37 GMT",
            "Sun Nov 06 08:49:37 94",
            "Sun,06 Nov 1994 08:49:37 GMT",
            // One separator wrong at a time, in each format.
            "Sun, 06 Nov 1994 08-49:37 GMT",
            "Sun, 06 Nov 1994 08:49-37 GMT",
            "Sunday, 06 Nov-94 08:49:37 GMT",
            "Sunday, 06-Nov 94 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMX",
            "Sunday, 06-Nov-94 08:49:37GMT",
            "SunxNov  6 08:49:37 1994",
            "Sun Novx 6 08:49:37 1994",
            "Sun Nov  6 08:49:37 19944",
            "Sun, 06 Nov 1994 08:49:61 GMT",
        ] {
            assert_eq!(parse_http_date(s.as_bytes()), None, "{s}");
        }
    }

    #[test]
    fn dates_are_written_as_imf_fixdate_and_read_back() {
        let mut out = [0u8; 29];
        write_http_date(&mut out, SUN_1994);
        assert_eq!(&out, b"Sun, 06 Nov 1994 08:49:37 GMT");
        for t in [0, 951_782_400, 1_709_251_199, 1_796_377_815, 4_102_444_800] {
            write_http_date(&mut out, t);
            assert_eq!(
                parse_http_date(&out),
                Some(t),
                "{}",
                String::from_utf8_lossy(&out)
            );
        }
    }
}
