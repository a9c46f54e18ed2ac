//! Topic names and topic filters: the syntax rules of the specification
//! (section 4.7), shared by the decoder and the broker.
//!
//! Levels are separated by `/`. A topic name (what PUBLISH carries) must
//! not contain the wildcards `+` or `#`. In a topic filter (what SUBSCRIBE
//! carries) `+` must fill a whole level and `#` must fill the last level.
//! Both must be at least one character long. A shared subscription filter
//! (5.0) is `$share/{ShareName}/{filter}`, where the share name is at least
//! one character without `/`, `+` or `#`.

/// True when `name` may be the topic of a PUBLISH or a will: not empty, no
/// wildcard character.
pub fn valid_topic_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['+', '#'])
}

/// True when `filter` may be the topic filter of a SUBSCRIBE or
/// UNSUBSCRIBE: not empty, `+` alone in its level, `#` alone in the last
/// level.
pub fn valid_topic_filter(filter: &str) -> bool {
    if filter.is_empty() {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return false;
        }
        if level.contains('+') && level != "+" {
            return false;
        }
    }
    true
}

/// The prefix of a shared subscription's topic filter.
pub const SHARED_PREFIX: &str = "$share/";

/// Splits a shared subscription filter `$share/{group}/{filter}` into its
/// share name and topic filter. `None` when `filter` does not start with
/// [`SHARED_PREFIX`] or is not a well-formed shared subscription (empty
/// share name or one holding `+` or `#`, missing or invalid topic filter).
pub fn shared_subscription(filter: &str) -> Option<(&str, &str)> {
    let rest = filter.strip_prefix(SHARED_PREFIX)?;
    let (group, filter) = rest.split_once('/')?;
    if group.is_empty() || group.contains(['+', '#']) || !valid_topic_filter(filter) {
        return None;
    }
    Some((group, filter))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "/", "a/b", "$SYS/x", " ", "a//b", "ü"] {
            assert!(valid_topic_name(ok), "{ok}");
        }
        for bad in ["", "+", "#", "a/+", "a/#", "a+b", "a#"] {
            assert!(!valid_topic_name(bad), "{bad}");
        }
    }

    #[test]
    fn filters() {
        for ok in [
            "#",
            "+",
            "/",
            "a/#",
            "+/+",
            "a/+/b",
            "/+",
            "+/",
            "a//b",
            "sport/tennis/#",
            "$SYS/#",
        ] {
            assert!(valid_topic_filter(ok), "{ok}");
        }
        for bad in [
            "", "a#", "#/a", "a/#/b", "a+", "+a/b", "a/b+", "##", "a/++", "#/",
        ] {
            assert!(!valid_topic_filter(bad), "{bad}");
        }
    }

    #[test]
    fn shared() {
        assert_eq!(shared_subscription("$share/g/a/#"), Some(("g", "a/#")));
        assert_eq!(shared_subscription("$share/g//"), Some(("g", "/")));
        assert_eq!(shared_subscription("a/b"), None);
        for bad in [
            "$share/g",
            "$share//a",
            "$share/g/",
            "$share/+/a",
            "$share/g#/a",
            "$share/g/a#",
        ] {
            assert_eq!(shared_subscription(bad), None, "{bad}");
        }
    }
}
