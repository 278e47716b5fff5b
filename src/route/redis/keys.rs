//! Key names, as the contract spells them after the configured prefix.

use std::time::{SystemTime, UNIX_EPOCH};

/// Names the keys the route store writes under one prefix.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    prefix: String,
}

impl Keys {
    pub(super) fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    /// `{prefix}IM-USER-{userId}`: the user's route record.
    pub(super) fn user(&self, user_id: &str) -> String {
        format!("{}IM-USER-{user_id}", self.prefix)
    }

    /// `{prefix}IM-ACTIVE-USERS-{yyyy-MM-dd}`: the active users of the UTC day of `now`.
    pub(super) fn active_users(&self, now: SystemTime) -> String {
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        format!("{}IM-ACTIVE-USERS-{}", self.prefix, utc_date(secs))
    }
}

/// `yyyy-MM-dd` of the UTC day holding `secs` seconds after the epoch.
///
/// This is the usual days-to-civil conversion (proleptic Gregorian calendar, counted in
/// 400-year eras of 146,097 days, with years starting in March so the leap day comes last).
pub(super) fn utc_date(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;

    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_calendar_days() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(86_399), "1970-01-01");
        assert_eq!(utc_date(951_782_400), "2000-02-29");
        assert_eq!(utc_date(951_868_800), "2000-03-01");
        assert_eq!(utc_date(1_700_000_000), "2023-11-14");
        assert_eq!(utc_date(1_735_689_599), "2024-12-31");
        assert_eq!(utc_date(4_107_542_400), "2100-03-01");
    }

    #[test]
    fn keys_carry_the_prefix() {
        let keys = Keys::new("t-");
        assert_eq!(keys.user("42"), "t-IM-USER-42");
        let day = UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        assert_eq!(keys.active_users(day), "t-IM-ACTIVE-USERS-2023-11-14");
    }
}
