//! Clocks for the request path that cost next to nothing. A precise clock read is a few per cent
//! of a blocked request here (the VM's clocksource is slow), and neither a keep-alive deadline
//! nor a `Date` header needs better than a scheduler tick (a few milliseconds): the kernel's
//! coarse clocks give exactly that without reading the hardware clock.

use std::cell::RefCell;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn read(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the one passed; the clock ids used here
    // exist on every Linux since 2.6.32, and on failure `ts` stays zero (harmless below).
    unsafe { libc::clock_gettime(clock, &mut ts) };
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Now, to within a scheduler tick, as an `Instant` (so it can meet tokio's timers).
pub fn coarse_now() -> Instant {
    static BASE: OnceLock<(Instant, Duration)> = OnceLock::new();
    let (base, base_coarse) =
        *BASE.get_or_init(|| (Instant::now(), read(libc::CLOCK_MONOTONIC_COARSE)));
    base + read(libc::CLOCK_MONOTONIC_COARSE).saturating_sub(base_coarse)
}

/// Now since the unix epoch, to within a scheduler tick: log timestamps.
pub fn realtime_coarse() -> Duration {
    read(libc::CLOCK_REALTIME_COARSE)
}

/// Now in unix seconds, to within a scheduler tick: what a filing's expiry is compared with.
pub fn unix_seconds() -> i64 {
    read(libc::CLOCK_REALTIME_COARSE).as_secs() as i64
}

thread_local! {
    /// The `Date` value for the second it was made in, per thread.
    static DATE: RefCell<(u64, [u8; HTTP_DATE_LEN])> = const { RefCell::new((u64::MAX, [0; HTTP_DATE_LEN])) };
}

/// The current `Date` header value (RFC 9110 §5.6.7 IMF-fixdate).
pub fn http_date() -> [u8; HTTP_DATE_LEN] {
    let now = read(libc::CLOCK_REALTIME_COARSE).as_secs();
    DATE.with(|cell| {
        let mut date = cell.borrow_mut();
        if date.0 != now {
            *date = (now, imf_fixdate(now));
        }
        date.1
    })
}

/// Every IMF-fixdate has this length (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub const HTTP_DATE_LEN: usize = 29;

/// Appends the current `Date` header value.
pub fn push_http_date(out: &mut Vec<u8>) {
    out.extend_from_slice(&http_date());
}

fn imf_fixdate(unix_seconds: u64) -> [u8; HTTP_DATE_LEN] {
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let t = time::OffsetDateTime::from_unix_timestamp(unix_seconds.min(253_402_300_799) as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let text = format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        DAYS[t.weekday().number_days_from_monday() as usize],
        t.day(),
        MONTHS[u8::from(t.month()) as usize - 1],
        t.year(),
        t.hour(),
        t.minute(),
        t.second()
    );
    let mut out = [b' '; 29];
    out.copy_from_slice(&text.as_bytes()[..29]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_imf_fixdate() {
        assert_eq!(&imf_fixdate(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            &imf_fixdate(1_795_333_820),
            b"Sun, 22 Nov 2026 07:50:20 GMT"
        );
        let mut out = Vec::new();
        push_http_date(&mut out);
        assert_eq!(out.len(), 29);
        assert!(out.ends_with(b" GMT"));
    }

    #[test]
    fn the_coarse_clock_is_the_monotonic_clock_to_within_a_tick() {
        // Bracketed by two precise reads, so a preemption in between only widens the window.
        let _ = coarse_now();
        let before = Instant::now();
        let coarse = coarse_now();
        let after = Instant::now();
        // A tick is at most 10 ms (HZ=100), once for the base and once for this read.
        let tick = Duration::from_millis(20);
        assert!(coarse + tick >= before && coarse <= after + tick);
    }
}
