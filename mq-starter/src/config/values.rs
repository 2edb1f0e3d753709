//! Values of the `mq:` section that need more than a plain serde type: the instance name of
//! broadcasting listeners and the start time of `consume-from: timestamp`.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// Longest instance name (the longest topic or group name).
const MAX_INSTANCE_LEN: usize = 127;

/// The name a broadcasting listener's progress is kept under (RocketMQ's `instanceName`).
///
/// Letters, digits and `. _ - @ :`, at most 127 characters, so that a host name, a pod name or
/// `host:port` fits as is.
///
/// ```
/// use mq_starter::config::InstanceName;
/// assert_eq!("shop-1".parse::<InstanceName>().unwrap().as_str(), "shop-1");
/// assert!("two words".parse::<InstanceName>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InstanceName(String);

impl InstanceName {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The default of an application that does not set `mq.instance-name`.
    ///
    /// On the embedded broker `DEFAULT` (RocketMQ's default instance name): the data directory
    /// is locked by one process, so the name only has to be stable. On Redis, where processes
    /// of many hosts share the progress, the host name (RocketMQ's client id is
    /// `ip@DEFAULT`); two processes on one host must set distinct names.
    pub fn default_for(backend: &str) -> InstanceName {
        match backend {
            "embedded" => InstanceName("DEFAULT".into()),
            _ => InstanceName(host_name()),
        }
    }
}

impl fmt::Display for InstanceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for InstanceName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err("an instance name must not be empty".into());
        }
        if s.len() > MAX_INSTANCE_LEN {
            return Err(format!(
                "an instance name has at most {MAX_INSTANCE_LEN} characters, this one {}",
                s.len()
            ));
        }
        if let Some(c) = s.chars().find(|c| !allowed(*c)) {
            return Err(format!(
                "{s:?}: {c:?} is not allowed in an instance name (letters, digits and . _ - @ :)"
            ));
        }
        Ok(InstanceName(s.to_owned()))
    }
}

impl<'de> Deserialize<'de> for InstanceName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@' | ':')
}

/// This machine's name, made fit for an instance name; `localhost` if it cannot be read.
fn host_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .unwrap_or_default();
    let name: String = raw
        .trim()
        .chars()
        .map(|c| if allowed(c) { c } else { '-' })
        .take(MAX_INSTANCE_LEN)
        .collect();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

/// Where `consume-from: timestamp` starts (RocketMQ's `consumeTimestamp`): the first message
/// stored at or after this time.
///
/// Written as an RFC 3339 time (`2026-12-01T10:00:00Z`, `2026-12-01T11:00:00+01:00`,
/// `2026-12-01 10:00:00` is UTC), as a duration before start-up (`30m`, RocketMQ's default),
/// or as milliseconds since the Unix epoch.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use mq_starter::config::ConsumeTimestamp;
/// let t: ConsumeTimestamp = "2026-12-01T10:00:00Z".parse().unwrap();
/// assert_eq!(t.resolve(UNIX_EPOCH), UNIX_EPOCH + Duration::from_secs(1_796_119_200));
/// let ago: ConsumeTimestamp = "30m".parse().unwrap();
/// assert_eq!(ago, ConsumeTimestamp::Ago(Duration::from_secs(1800)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumeTimestamp {
    /// This moment.
    At(SystemTime),
    /// This long before the application starts.
    Ago(Duration),
}

impl Default for ConsumeTimestamp {
    /// Half an hour before start-up, as RocketMQ.
    fn default() -> Self {
        ConsumeTimestamp::Ago(Duration::from_secs(30 * 60))
    }
}

impl ConsumeTimestamp {
    /// The moment, for an application starting at `now`.
    pub fn resolve(&self, now: SystemTime) -> SystemTime {
        match *self {
            ConsumeTimestamp::At(t) => t,
            // Not before the epoch (a `SystemTime` could go there; store times cannot).
            ConsumeTimestamp::Ago(d) => now
                .duration_since(UNIX_EPOCH)
                .ok()
                .and_then(|since| since.checked_sub(d))
                .map_or(UNIX_EPOCH, |since| UNIX_EPOCH + since),
        }
    }

    fn from_millis(ms: u64) -> Result<Self, String> {
        // Milliseconds of 14 digits are past the year 2286: surely RocketMQ's yyyyMMddHHmmss,
        // which is in local time; guessing the zone would start at the wrong message.
        if ms >= 10_000_000_000_000 {
            return Err(format!(
                "{ms} is not milliseconds since the epoch (RocketMQ's yyyyMMddHHmmss? write it as an RFC 3339 time such as 2026-12-01T10:00:00+01:00)"
            ));
        }
        Ok(ConsumeTimestamp::At(UNIX_EPOCH + Duration::from_millis(ms)))
    }
}

impl FromStr for ConsumeTimestamp {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            let ms = s.parse::<u64>().map_err(|e| format!("{s:?}: {e}"))?;
            return Self::from_millis(ms);
        }
        if let Ok(d) = humantime::parse_duration(s) {
            return Ok(ConsumeTimestamp::Ago(d));
        }
        let (time, offset) = split_offset(s);
        match humantime::parse_rfc3339_weak(time) {
            Ok(t) => {
                let utc = if offset >= 0 {
                    t.checked_sub(Duration::from_secs(offset.unsigned_abs()))
                } else {
                    t.checked_add(Duration::from_secs(offset.unsigned_abs()))
                };
                utc.map(ConsumeTimestamp::At)
                    .ok_or_else(|| format!("{s:?} is out of range"))
            }
            Err(e) => Err(format!(
                "{s:?} ({e}): expected an RFC 3339 time such as 2026-12-01T10:00:00Z, a duration before start-up such as 30m, or milliseconds since the epoch"
            )),
        }
    }
}

/// Splits a trailing `+hh:mm` / `-hh:mm` zone offset off (humantime reads UTC only); the
/// offset in seconds east of UTC.
fn split_offset(s: &str) -> (&str, i64) {
    let b = s.as_bytes();
    let n = b.len();
    let digit = |i: usize| b[i].is_ascii_digit();
    if n > 6
        && matches!(b[n - 6], b'+' | b'-')
        && digit(n - 5)
        && digit(n - 4)
        && b[n - 3] == b':'
        && digit(n - 2)
        && digit(n - 1)
        // A date alone ends in `-dd`, never `-dd:dd`; the time part holds a `T` or a blank.
        && s[..n - 6].contains(['T', 't', ' '])
    {
        let two = |i: usize| i64::from(b[i] - b'0') * 10 + i64::from(b[i + 1] - b'0');
        let secs = two(n - 5) * 3600 + two(n - 2) * 60;
        let sign = if b[n - 6] == b'-' { -1 } else { 1 };
        (&s[..n - 6], sign * secs)
    } else {
        (s, 0)
    }
}

impl<'de> Deserialize<'de> for ConsumeTimestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ConsumeTimestamp;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 time, a duration before start-up, or epoch milliseconds")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                v.parse().map_err(E::custom)
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                ConsumeTimestamp::from_millis(v).map_err(E::custom)
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                let ms = u64::try_from(v)
                    .map_err(|_| E::custom(format!("{v}: a time before the epoch")))?;
                self.visit_u64(ms)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> ConsumeTimestamp {
        ConsumeTimestamp::At(UNIX_EPOCH + Duration::from_secs(secs))
    }

    #[test]
    fn timestamps_in_every_accepted_form() {
        let z = 1_796_119_200; // 2026-12-01T10:00:00Z
        assert_eq!("2026-12-01T10:00:00Z".parse(), Ok(at(z)));
        assert_eq!("2026-12-01 10:00:00".parse(), Ok(at(z)));
        assert_eq!("2026-12-01T11:00:00+01:00".parse(), Ok(at(z)));
        assert_eq!("2026-12-01T05:30:00-04:30".parse(), Ok(at(z)));
        assert_eq!(
            "2026-12-01T10:00:00.250Z".parse(),
            Ok(ConsumeTimestamp::At(
                UNIX_EPOCH + Duration::from_millis(z * 1000 + 250)
            ))
        );
        assert_eq!(format!("{}", z * 1000).parse(), Ok(at(z)));
        assert_eq!(
            "1h30m".parse(),
            Ok(ConsumeTimestamp::Ago(Duration::from_secs(5400)))
        );
    }

    #[test]
    fn malformed_timestamps_say_what_is_expected() {
        let err = "yesterday".parse::<ConsumeTimestamp>().unwrap_err();
        assert!(err.contains("RFC 3339"), "{err}");
        assert!("2026-13-01T10:00:00Z".parse::<ConsumeTimestamp>().is_err());
        let err = "20261201100000".parse::<ConsumeTimestamp>().unwrap_err();
        assert!(err.contains("yyyyMMddHHmmss"), "{err}");
    }

    #[test]
    fn ago_counts_back_from_start_up() {
        let now = UNIX_EPOCH + Duration::from_secs(10_000);
        assert_eq!(
            ConsumeTimestamp::Ago(Duration::from_secs(100)).resolve(now),
            UNIX_EPOCH + Duration::from_secs(9_900)
        );
        assert_eq!(
            ConsumeTimestamp::Ago(Duration::from_secs(20_000)).resolve(now),
            UNIX_EPOCH
        );
    }

    #[test]
    fn instance_names() {
        assert!("shop-1.eu@host:8080".parse::<InstanceName>().is_ok());
        assert!("".parse::<InstanceName>().is_err());
        assert!("a/b".parse::<InstanceName>().is_err());
        assert!("x".repeat(128).parse::<InstanceName>().is_err());
        assert_eq!(InstanceName::default_for("embedded").as_str(), "DEFAULT");
        let host = InstanceName::default_for("redis");
        assert!(host.as_str().parse::<InstanceName>().is_ok(), "{host}");
    }
}
