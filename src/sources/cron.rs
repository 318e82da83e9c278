//! Cron triggers (SPEC section 8.1): every tick becomes a durable task with the id
//! `cron-<trigger>-<unix seconds>`, so a tick is never run twice, across restarts and
//! across nodes sharing a queue (the second submission of a tick is a 409, absorbed).
//! Ticks missed while the node was down are skipped; with `catch_up` the last one missed
//! (within the trigger's `max_event_age_s`) runs at start.

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, SubsecRound, Utc};
use tokio::sync::watch;

use super::Phase;
use crate::Gateway;
use crate::config::CronConfig;
use crate::dispatch::EnqueueOptions;
use crate::error::GatewayError;
use crate::invocation::{Invocation, Source, Target};

/// What the service depends on: a reload that changes none of it keeps the timer.
pub fn fingerprint(c: &CronConfig) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&c.schedule, c.timezone.name(), &c.payload, c.catch_up).hash(&mut h);
    h.finish()
}

/// The task id of the tick due at `at`.
pub fn tick_id(trigger: &str, at: DateTime<Utc>) -> String {
    format!("cron-{trigger}-{}", at.timestamp())
}

/// croner searches in local time and, for a local time that occurs twice (a DST
/// fall-back), answers its first instant only: from inside the repeated hour that is in the
/// past, and the second pass is skipped. So the answer is also searched at the fixed offsets
/// in force around `at` (a local time at a fixed offset is one instant), and a candidate
/// counts only where the zone really has that offset: each candidate is then a true tick.
fn offsets_around(c: &CronConfig, at: DateTime<Utc>, forward: bool) -> Vec<chrono::FixedOffset> {
    use chrono::Offset;
    let mut offsets: Vec<chrono::FixedOffset> = Vec::new();
    // Three hours cover any repeated hour (Antarctica/Troll shifts by two).
    for h in 0..=3 {
        let step = chrono::Duration::hours(if forward { h } else { -h });
        let Some(t) = at.checked_add_signed(step) else {
            continue;
        };
        let o = t.with_timezone(&c.timezone).offset().fix();
        if !offsets.contains(&o) {
            offsets.push(o);
        }
    }
    offsets
}

/// Whether `t` is a tick at offset `o`: the zone has that offset at `t`.
fn in_force(c: &CronConfig, t: DateTime<Utc>, o: chrono::FixedOffset) -> bool {
    use chrono::Offset;
    t.with_timezone(&c.timezone).offset().fix() == o
}

/// The first tick strictly after `after`, in the trigger's time zone. Ticks fall on whole
/// seconds: the schedule's resolution, whatever the fraction of the time it is asked from.
pub fn next_tick(c: &CronConfig, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let after = after.trunc_subsecs(0);
    let zoned = c
        .cron
        .find_next_occurrence(&after.with_timezone(&c.timezone), false)
        .ok()
        .map(|t| t.with_timezone(&Utc))
        .filter(|t| *t > after);
    offsets_around(c, after, true)
        .into_iter()
        .filter_map(|o| {
            let t = c
                .cron
                .find_next_occurrence(&after.with_timezone(&o), false)
                .ok()?
                .with_timezone(&Utc);
            (t > after && in_force(c, t, o)).then_some(t)
        })
        .chain(zoned)
        .min()
}

/// The last tick at or before `now` that is at most `max_age_s` old (what `catch_up` runs).
pub fn missed_tick(c: &CronConfig, now: DateTime<Utc>, max_age_s: u64) -> Option<DateTime<Utc>> {
    let now = now.trunc_subsecs(0);
    let zoned = c
        .cron
        .find_previous_occurrence(&now.with_timezone(&c.timezone), true)
        .ok()
        .map(|t| t.with_timezone(&Utc))
        .filter(|t| *t <= now);
    let prev = offsets_around(c, now, false)
        .into_iter()
        .filter_map(|o| {
            let t = c
                .cron
                .find_previous_occurrence(&now.with_timezone(&o), true)
                .ok()?
                .with_timezone(&Utc);
            (t <= now && in_force(c, t, o)).then_some(t)
        })
        .chain(zoned)
        .max()?;
    let age = (now - prev).num_seconds();
    (age >= 0 && u64::try_from(age).is_ok_and(|a| a <= max_age_s)).then_some(prev)
}

pub async fn run(
    gateway: Arc<Gateway>,
    trigger: String,
    config: CronConfig,
    mut stop: watch::Receiver<bool>,
) {
    let states = gateway.sources.clone();
    let mut after = Utc::now();
    if config.catch_up {
        let max_age = gateway
            .app()
            .dispatcher
            .policy(&trigger)
            .map_or(86_400, |p| p.max_event_age_s);
        if let Some(missed) = missed_tick(&config, after, max_age) {
            // Registered first, so the caught-up tick is counted like any other.
            states.set(
                &trigger,
                "cron",
                Phase::Running,
                format!(
                    "{}: catching up the tick of {}",
                    config.schedule,
                    missed.to_rfc3339()
                ),
            );
            let due = next_tick(&config, after);
            if fire_until(&gateway, &trigger, &config, missed, due, &mut stop).await {
                return;
            }
        }
    }
    loop {
        let Some(next) = next_tick(&config, after) else {
            states.set(
                &trigger,
                "cron",
                Phase::Failed,
                format!("schedule '{}' has no next tick", config.schedule),
            );
            return;
        };
        states.set(
            &trigger,
            "cron",
            Phase::Running,
            format!("{}: next tick {}", config.schedule, next.to_rfc3339()),
        );
        let wait = (next - Utc::now()).to_std().unwrap_or_default();
        if super::pause(&mut stop, wait).await {
            return;
        }
        // The wall clock may lag the timer by a hair: the tick is named by its schedule,
        // not by when the timer fired.
        while Utc::now() < next {
            if super::pause(&mut stop, std::time::Duration::from_millis(5)).await {
                return;
            }
        }
        let due = next_tick(&config, next);
        if fire_until(&gateway, &trigger, &config, next, due, &mut stop).await {
            return;
        }
        after = next;
    }
}

/// Enqueues the tick at `at`, retrying while the queue refuses for capacity (full, or a
/// cluster queue not reachable yet) with a backoff of 200 ms doubling to 5 s, until the next
/// tick `due` takes its place: a tick is late rather than lost while the queue recovers. The
/// tick's id is fixed by its time, so a retry never runs it twice. True when stopped.
async fn fire_until(
    gateway: &Gateway,
    trigger: &str,
    config: &CronConfig,
    at: DateTime<Utc>,
    due: Option<DateTime<Utc>>,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let mut backoff = std::time::Duration::from_millis(200);
    let mut held = false;
    loop {
        let Err(e) = fire(gateway, trigger, config, at).await else {
            if held {
                tracing::info!(
                    trigger,
                    "the held cron tick of {} is enqueued",
                    at.to_rfc3339()
                );
            }
            return false;
        };
        let now = Utc::now();
        if due.is_some_and(|d| now + backoff >= d) {
            tracing::error!(
                trigger,
                "cron tick of {} dropped: the queue refused it until the next tick ({e})",
                at.to_rfc3339()
            );
            gateway.sources.count(trigger, 0, 1);
            return false;
        }
        if !held {
            tracing::warn!(
                trigger,
                "cron tick of {} held, retrying: {e}",
                at.to_rfc3339()
            );
            held = true;
        }
        if super::pause(stop, backoff).await {
            return true;
        }
        backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
    }
}

/// Enqueues one tick; a tick already enqueued (by a restart or another node) is absorbed.
/// A capacity refusal is returned for the caller to retry; any other failure is final.
async fn fire(
    gateway: &Gateway,
    trigger: &str,
    config: &CronConfig,
    at: DateTime<Utc>,
) -> Result<(), GatewayError> {
    let app = gateway.app();
    let Some(t) = app.config.triggers.iter().find(|t| t.name == trigger) else {
        return Ok(());
    };
    let Some(function) = t.function.clone() else {
        return Ok(());
    };
    let body = Bytes::from(config.payload.clone().unwrap_or_default());
    let content_type = match &config.payload {
        Some(p) if serde_json::from_str::<serde_json::Value>(p).is_ok() => "application/json",
        Some(_) => "text/plain; charset=utf-8",
        None => "application/octet-stream",
    };
    let request = match super::post_root(body, content_type) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(trigger, "cannot build the tick's request: {e}");
            return Ok(());
        }
    };
    let id = tick_id(trigger, at);
    let inv = Invocation {
        target: Target {
            function,
            qualifier: t.qualifier.clone(),
        },
        trigger: trigger.into(),
        source: Source::Cron { scheduled: at },
        request_id: crate::invocation::new_request_id(),
        request,
        trace: None,
        prebuilt: Default::default(),
    };
    let options = EnqueueOptions {
        task_id: Some(id.clone()),
        ..EnqueueOptions::default()
    };
    match app.dispatcher.enqueue(inv, options).await {
        Ok(_) => {
            tracing::info!(trigger, task_id = %id, "cron tick enqueued");
            gateway.sources.count(trigger, 1, 0);
            Ok(())
        }
        Err(GatewayError::Queue(crate::queue::QueueError::Exists(_))) => {
            tracing::debug!(trigger, task_id = %id, "cron tick already enqueued");
            Ok(())
        }
        Err(e) if e.is_capacity() => Err(e),
        Err(e) => {
            tracing::error!(trigger, task_id = %id, "cron tick could not be enqueued: {e}");
            gateway.sources.count(trigger, 0, 1);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn config(expr: &str, tz: &str) -> CronConfig {
        CronConfig {
            schedule: expr.into(),
            cron: crate::config::kinds::parse_schedule(expr).unwrap(),
            timezone: tz.parse().unwrap(),
            payload: None,
            catch_up: false,
        }
    }

    #[test]
    fn ticks_follow_the_time_zone() {
        let c = config("0 9 * * *", "Europe/Paris");
        let now = Utc.with_ymd_and_hms(2026, 1, 15, 12, 0, 0).unwrap();
        // 09:00 in Paris in winter is 08:00 UTC.
        assert_eq!(
            next_tick(&c, now).unwrap(),
            Utc.with_ymd_and_hms(2026, 1, 16, 8, 0, 0).unwrap()
        );
        let c = config("*/10 * * * * *", "UTC");
        let t = next_tick(&c, Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 5).unwrap()).unwrap();
        assert_eq!(t.timestamp() % 10, 0);
        assert_eq!(tick_id("every", t), format!("cron-every-{}", t.timestamp()));
    }

    #[test]
    fn ticks_are_distinct_and_increasing() {
        let c = config("* * * * * *", "UTC");
        let mut at = Utc.with_ymd_and_hms(2026, 3, 29, 0, 59, 58).unwrap();
        let mut ids = std::collections::HashSet::new();
        for _ in 0..5 {
            let next = next_tick(&c, at).unwrap();
            assert!(next > at);
            assert!(ids.insert(tick_id("t", next)));
            at = next;
        }
    }

    #[test]
    fn ticks_fall_on_whole_seconds_from_any_fraction() {
        let c = config("*/20 * * * * *", "UTC");
        let at = Utc.with_ymd_and_hms(2026, 12, 6, 3, 54, 22).unwrap()
            + chrono::Duration::nanoseconds(361_702_918);
        let next = next_tick(&c, at).unwrap();
        assert_eq!(next, Utc.with_ymd_and_hms(2026, 12, 6, 3, 54, 40).unwrap());
        let every = config("* * * * * *", "UTC");
        assert_eq!(
            next_tick(&every, at).unwrap(),
            Utc.with_ymd_and_hms(2026, 12, 6, 3, 54, 23).unwrap()
        );
        assert_eq!(
            missed_tick(&c, at, 60).unwrap(),
            Utc.with_ymd_and_hms(2026, 12, 6, 3, 54, 20).unwrap()
        );
    }

    #[test]
    fn catch_up_takes_the_last_missed_tick_within_the_age() {
        let c = config("@hourly", "UTC");
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 10, 20, 0).unwrap();
        assert_eq!(
            missed_tick(&c, now, 3600).unwrap(),
            Utc.with_ymd_and_hms(2026, 1, 1, 10, 0, 0).unwrap()
        );
        assert_eq!(missed_tick(&c, now, 600), None);
    }
}
