use std::collections::BTreeMap;
use std::fmt;

/// A client platform, as the wire names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceType {
    /// Android phone or tablet.
    Android,
    /// iPhone or iPad.
    Ios,
    /// Browser.
    Web,
    /// macOS desktop.
    Mac,
    /// Windows desktop.
    Win,
    /// Linux desktop.
    Linux,
}

/// The device groups: one connection per user and group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeviceGroup {
    /// Phones and tablets.
    Mobile,
    /// Desktop applications.
    Desktop,
    /// Browsers.
    Web,
}

impl DeviceType {
    /// The normalised lower-case wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceType::Android => "android",
            DeviceType::Ios => "ios",
            DeviceType::Web => "web",
            DeviceType::Mac => "mac",
            DeviceType::Win => "win",
            DeviceType::Linux => "linux",
        }
    }

    /// The group this type belongs to.
    pub fn group(self) -> DeviceGroup {
        match self {
            DeviceType::Android | DeviceType::Ios => DeviceGroup::Mobile,
            DeviceType::Web => DeviceGroup::Web,
            DeviceType::Mac | DeviceType::Win | DeviceType::Linux => DeviceGroup::Desktop,
        }
    }

    /// Reads one of the six wire strings exactly (already trimmed and lower-cased).
    pub fn from_wire(s: &str) -> Option<Self> {
        Some(match s {
            "android" => DeviceType::Android,
            "ios" => DeviceType::Ios,
            "web" => DeviceType::Web,
            "mac" => DeviceType::Mac,
            "win" => DeviceType::Win,
            "linux" => DeviceType::Linux,
            _ => return None,
        })
    }
}

impl DeviceGroup {
    /// The upper-case name written in `metadata.platform` and route records.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceGroup::Mobile => "MOBILE",
            DeviceGroup::Desktop => "DESKTOP",
            DeviceGroup::Web => "WEB",
        }
    }

    /// Reads an upper- or lower-case group name.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_uppercase().as_str() {
            "MOBILE" => Some(DeviceGroup::Mobile),
            "DESKTOP" => Some(DeviceGroup::Desktop),
            "WEB" => Some(DeviceGroup::Web),
            _ => None,
        }
    }
}

impl fmt::Display for DeviceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for DeviceGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Normalises device strings: trims, lower-cases, applies configured aliases, and falls back
/// to `web` for anything unknown, as deployed clients expect.
#[derive(Debug, Clone, Default)]
pub struct DeviceParser {
    aliases: BTreeMap<String, DeviceType>,
}

impl DeviceParser {
    /// A parser with extra names (`desktop` → `win`). Aliases whose target is not a wire
    /// string are skipped; configuration validation reports them.
    pub fn new(aliases: &BTreeMap<String, String>) -> Self {
        let aliases = aliases
            .iter()
            .filter_map(|(from, to)| {
                let to = DeviceType::from_wire(&to.trim().to_ascii_lowercase())?;
                Some((from.trim().to_ascii_lowercase(), to))
            })
            .collect();
        DeviceParser { aliases }
    }

    /// The device type a client string stands for.
    pub fn parse(&self, raw: Option<&str>) -> DeviceType {
        let Some(raw) = raw else {
            return DeviceType::Web;
        };
        let key = raw.trim().to_ascii_lowercase();
        DeviceType::from_wire(&key)
            .or_else(|| self.aliases.get(&key).copied())
            .unwrap_or(DeviceType::Web)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_trims_and_falls_back_to_web() {
        let mut aliases = BTreeMap::new();
        aliases.insert("Desktop".to_string(), "win".to_string());
        let parser = DeviceParser::new(&aliases);
        assert_eq!(parser.parse(Some(" IOS ")), DeviceType::Ios);
        assert_eq!(parser.parse(Some("desktop")), DeviceType::Win);
        assert_eq!(parser.parse(Some("toaster")), DeviceType::Web);
        assert_eq!(parser.parse(None), DeviceType::Web);
        assert_eq!(DeviceType::Linux.group(), DeviceGroup::Desktop);
        assert_eq!(DeviceType::Android.group().as_str(), "MOBILE");
    }
}
