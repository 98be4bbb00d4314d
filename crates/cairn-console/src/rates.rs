//! The dashboard's rates: the head position and the commands done, sampled every
//! [`SAMPLE_EVERY`], the last [`SAMPLES_KEPT`] kept (five minutes).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_server::AppState;

/// How often the rates are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// Samples kept: five minutes of them.
pub const SAMPLES_KEPT: usize = 150;

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    head: u64,
    commands: u64,
}

/// One point of the rates chart.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Seconds before now (negative: in the past).
    pub seconds_ago: f64,
    /// Events appended per second over the interval ending here.
    pub events: f64,
    /// Commands done per second over the interval ending here.
    pub commands: f64,
}

/// The samples, shared by the sampler and the pages.
#[derive(Clone, Default)]
pub struct Rates {
    samples: Arc<Mutex<VecDeque<Sample>>>,
}

impl Rates {
    fn push(&self, sample: Sample) {
        let mut samples = self.samples.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        samples.push_back(sample);
        while samples.len() > SAMPLES_KEPT {
            samples.pop_front();
        }
    }

    /// The rates between consecutive samples, oldest first, and from the last sample to
    /// `current` (the head and commands done now) when a second has passed since it.
    pub fn series(&self, current: Option<(u64, u64)>) -> Vec<Rate> {
        let mut samples: Vec<Sample> = self
            .samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .copied()
            .collect();
        let now = Instant::now();
        if let (Some((head, commands)), Some(last)) = (current, samples.last())
            && now.duration_since(last.at) >= Duration::from_secs(1)
        {
            samples.push(Sample { at: now, head, commands });
        }
        samples
            .iter()
            .zip(samples.iter().skip(1))
            .map(|(a, b)| {
                let dt = b.at.duration_since(a.at).as_secs_f64().max(1e-3);
                Rate {
                    seconds_ago: -now.duration_since(b.at).as_secs_f64(),
                    events: b.head.saturating_sub(a.head) as f64 / dt,
                    commands: b.commands.saturating_sub(a.commands) as f64 / dt,
                }
            })
            .collect()
    }
}

/// Samples until the server shuts down.
pub fn spawn_sampler(rates: Rates, state: AppState) {
    let mut shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        let head = state.store.head();
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            rates.push(Sample {
                at: Instant::now(),
                head: *head.borrow(),
                commands: cairn_server::metrics::commands_done(),
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_deltas_over_time_and_bounded() {
        let rates = Rates::default();
        let start = Instant::now();
        for i in 0..(SAMPLES_KEPT as u64 + 10) {
            rates.push(Sample {
                at: start + Duration::from_secs(2 * i),
                head: 10 * i,
                commands: i,
            });
        }
        let series = rates.series(None);
        assert_eq!(series.len(), SAMPLES_KEPT - 1);
        assert!(series.iter().all(|r| (r.events - 5.0).abs() < 1e-9));
        assert!(series.iter().all(|r| (r.commands - 0.5).abs() < 1e-9));
    }
}
