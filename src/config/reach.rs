//! What the config's source triggers reach: the warnings of `check` and start-up for a
//! source that reaches no function, and the table `check` prints.

use super::{Config, Kind};

/// Warnings for `check` and start-up: a source that can reach no function.
pub fn reach_warnings(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for t in &config.triggers {
        match &t.kind {
            Kind::Mqtt(_) | Kind::Nats(_) if t.function.is_none() => {
                let any = config.functions.iter().any(|f| {
                    !f.topics.is_empty()
                        && t.namespace.as_deref().is_none_or(|ns| ns == f.namespace)
                });
                if !any {
                    out.push(format!(
                        "trigger '{}': no function declares `topics`{}, so its messages reach nothing",
                        t.name,
                        t.namespace
                            .as_deref()
                            .map(|ns| format!(" in namespace '{ns}'"))
                            .unwrap_or_default()
                    ));
                }
            }
            Kind::Event if !config.functions.iter().any(|f| !f.events.is_empty()) => {
                out.push(format!(
                    "trigger '{}': no function declares `events`, so every event has no subscriber",
                    t.name
                ));
            }
            _ => {}
        }
    }
    out
}

/// Every source with its schedule or topics and the functions it reaches (for `check`).
pub fn source_table(config: &Config) -> String {
    let mut out = String::new();
    for t in config.triggers.iter().filter(|t| !t.kind.is_routed()) {
        if out.is_empty() {
            out.push_str(&format!(
                "\n{:<20} {:<6} {:<40} {}\n",
                "SOURCE", "KIND", "SCHEDULE / BROKER TOPICS", "FUNCTIONS"
            ));
        }
        let what = match &t.kind {
            Kind::Cron(c) => format!(
                "{} ({}{})",
                c.schedule,
                c.timezone.name(),
                if c.catch_up { ", catch-up" } else { "" }
            ),
            Kind::Mqtt(b) => format!("{} qos {} {}", b.url, b.qos, b.topics.join(" ")),
            Kind::Nats(b) => format!("{} group {} {}", b.url, b.queue_group, b.topics.join(" ")),
            Kind::Http | Kind::Event => continue,
        };
        let reached = match &t.function {
            Some(f) => format!("{f}:{}", t.qualifier),
            None => {
                let names: Vec<String> = config
                    .functions
                    .iter()
                    .filter(|f| {
                        !f.topics.is_empty()
                            && t.namespace.as_deref().is_none_or(|ns| ns == f.namespace)
                    })
                    .map(|f| format!("{} [{}]", f.name, f.topics.join(" ")))
                    .collect();
                if names.is_empty() {
                    "(none: no function declares topics)".to_string()
                } else {
                    format!("by topic: {}", names.join(", "))
                }
            }
        };
        out.push_str(&format!(
            "{:<20} {:<6} {:<40} {}\n",
            t.name,
            t.kind.name(),
            what,
            reached
        ));
    }
    let subscribers: Vec<String> = config
        .functions
        .iter()
        .filter(|f| !f.events.is_empty())
        .map(|f| format!("{} [{}]", f.name, f.events.join(" ")))
        .collect();
    if config
        .triggers
        .iter()
        .any(|t| matches!(t.kind, Kind::Event))
        && !subscribers.is_empty()
    {
        out.push_str(&format!("\nEVENT SUBSCRIBERS {}\n", subscribers.join(", ")));
    }
    out
}
