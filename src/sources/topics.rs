//! Topic matching for topic routing: MQTT filters (`+` one level, `#` the rest, `$`-topics
//! not matched by a leading wildcard), NATS subjects (`*` one token, `>` the rest), exact,
//! and exact ignoring case.

use crate::config::TopicMatch;

/// Whether `pattern` (a function's `topics` entry) matches the message's `topic`.
pub fn matches(mode: TopicMatch, nats: bool, pattern: &str, topic: &str) -> bool {
    match mode {
        TopicMatch::Exact => pattern == topic,
        TopicMatch::ExactIgnoreCase => pattern.eq_ignore_ascii_case(topic),
        TopicMatch::Wildcard if nats => nats_matches(pattern, topic),
        TopicMatch::Wildcard => mqtt_matches(pattern, topic),
    }
}

/// MQTT 3.1.1 section 4.7.
pub fn mqtt_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// NATS subject matching.
pub fn nats_matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Event types: exact, or a pattern ending in `*` matches every type with that prefix.
pub fn event_matches(pattern: &str, event_type: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => event_type.starts_with(prefix),
        None => pattern == event_type,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_wildcards() {
        assert!(mqtt_matches(
            "sensors/+/temperature",
            "sensors/a/temperature"
        ));
        assert!(!mqtt_matches(
            "sensors/+/temperature",
            "sensors/a/b/temperature"
        ));
        assert!(mqtt_matches("alerts/#", "alerts"));
        assert!(mqtt_matches("alerts/#", "alerts/x/y"));
        assert!(mqtt_matches("#", "anything/at/all"));
        assert!(!mqtt_matches("#", "$SYS/broker/load"));
        assert!(!mqtt_matches("+/broker", "$SYS/broker"));
        assert!(mqtt_matches("$SYS/#", "$SYS/broker"));
        assert!(!mqtt_matches("a/b", "a/b/c"));
        assert!(mqtt_matches("a/+", "a/"));
    }

    #[test]
    fn nats_wildcards() {
        assert!(nats_matches("orders.*", "orders.created"));
        assert!(!nats_matches("orders.*", "orders.created.eu"));
        assert!(nats_matches("orders.>", "orders.created.eu"));
        assert!(!nats_matches("orders.>", "orders"));
        assert!(!nats_matches("orders.created", "orders.deleted"));
    }

    #[test]
    fn modes_and_events() {
        assert!(matches(TopicMatch::ExactIgnoreCase, false, "Pay", "pay"));
        assert!(!matches(TopicMatch::Exact, false, "Pay", "pay"));
        assert!(!matches(TopicMatch::Exact, false, "a/+", "a/b"));
        assert!(event_matches("order.*", "order.created"));
        assert!(event_matches("sent-email", "sent-email"));
        assert!(!event_matches("sent-email", "sent-email-2"));
        assert!(event_matches("*", "anything"));
    }
}
