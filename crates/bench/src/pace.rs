//! Load patterns and the token bucket that paces a producer.
//!
//! Everything here is plain arithmetic over nanosecond timestamps passed in
//! by the caller, so it is tested without sleeping. A producer asks
//! [`Pacer::take`] how many messages it may send now, sends them in one
//! write, and when it got none sleeps until [`Pacer::next_token_ns`]: one
//! timer per batch, never one sleep per message.

/// Nanoseconds per second.
pub const NS: u64 = 1_000_000_000;

/// What a producer sends, and when it stops.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pattern {
    /// `messages` as fast as possible (within the in-flight window).
    Burst {
        /// Messages to send.
        messages: u64,
    },
    /// As fast as possible for `duration_ns`.
    Max {
        /// Run time.
        duration_ns: u64,
    },
    /// `rate` msg/s for `duration_ns`.
    Steady {
        /// Messages per second.
        rate: f64,
        /// Run time.
        duration_ns: u64,
    },
    /// From 0 to `to` msg/s, linearly, over `duration_ns`.
    Ramp {
        /// Rate reached at the end.
        to: f64,
        /// Run time.
        duration_ns: u64,
    },
}

impl Pattern {
    /// This pattern's share for one of `n` producers: `index` (0-based)
    /// gets `messages / n` of a burst, plus one of the remainder when
    /// `index < messages % n`; rates are divided evenly.
    pub fn share(self, index: u32, n: u32) -> Pattern {
        let n = n.max(1);
        match self {
            Pattern::Burst { messages } => {
                let base = messages / u64::from(n);
                let extra = u64::from(u64::from(index) < messages % u64::from(n));
                Pattern::Burst {
                    messages: base + extra,
                }
            }
            Pattern::Max { .. } => self,
            Pattern::Steady { rate, duration_ns } => Pattern::Steady {
                rate: rate / f64::from(n),
                duration_ns,
            },
            Pattern::Ramp { to, duration_ns } => Pattern::Ramp {
                to: to / f64::from(n),
                duration_ns,
            },
        }
    }

    /// The target rate at `t_ns` after the start, msg/s; `None` when
    /// unlimited.
    pub fn rate_at(&self, t_ns: u64) -> Option<f64> {
        match *self {
            Pattern::Burst { .. } | Pattern::Max { .. } => None,
            Pattern::Steady { rate, duration_ns } => {
                Some(if t_ns < duration_ns { rate } else { 0.0 })
            }
            Pattern::Ramp { to, duration_ns } => Some(if t_ns >= duration_ns || duration_ns == 0 {
                0.0
            } else {
                to * t_ns as f64 / duration_ns as f64
            }),
        }
    }

    /// Messages the pattern allows by `t_ns` after the start (the integral
    /// of [`rate_at`](Self::rate_at)); infinite when unlimited.
    pub fn allowed_by(&self, t_ns: u64) -> f64 {
        match *self {
            Pattern::Burst { .. } | Pattern::Max { .. } => f64::INFINITY,
            Pattern::Steady { rate, duration_ns } => rate * secs(t_ns.min(duration_ns)),
            Pattern::Ramp { to, duration_ns } => {
                if duration_ns == 0 {
                    return 0.0;
                }
                let t = secs(t_ns.min(duration_ns));
                to * t * t / (2.0 * secs(duration_ns))
            }
        }
    }

    /// Whether a producer that started at 0 and has sent `sent` messages
    /// is finished at `t_ns`.
    pub fn finished(&self, t_ns: u64, sent: u64) -> bool {
        match *self {
            Pattern::Burst { messages } => sent >= messages,
            Pattern::Max { duration_ns }
            | Pattern::Steady { duration_ns, .. }
            | Pattern::Ramp { duration_ns, .. } => t_ns >= duration_ns,
        }
    }

    /// Highest rate the pattern asks for, msg/s; `None` when unlimited.
    pub fn peak_rate(&self) -> Option<f64> {
        match *self {
            Pattern::Burst { .. } | Pattern::Max { .. } => None,
            Pattern::Steady { rate, .. } => Some(rate),
            Pattern::Ramp { to, .. } => Some(to),
        }
    }

    /// Planned run time, if the pattern has one.
    pub fn duration_ns(&self) -> Option<u64> {
        match *self {
            Pattern::Burst { .. } => None,
            Pattern::Max { duration_ns }
            | Pattern::Steady { duration_ns, .. }
            | Pattern::Ramp { duration_ns, .. } => Some(duration_ns),
        }
    }

    /// A short human description, e.g. `steady 5000 msg/s for 10 s`.
    pub fn describe(&self) -> String {
        match *self {
            Pattern::Burst { messages } => format!("burst of {messages} messages"),
            Pattern::Max { duration_ns } => format!("max rate for {} s", secs(duration_ns)),
            Pattern::Steady { rate, duration_ns } => {
                format!("steady {rate} msg/s for {} s", secs(duration_ns))
            }
            Pattern::Ramp { to, duration_ns } => {
                format!("ramp 0 to {to} msg/s over {} s", secs(duration_ns))
            }
        }
    }
}

fn secs(ns: u64) -> f64 {
    ns as f64 / NS as f64
}

/// How much catch-up a bucket allows after a stall: this many seconds of
/// the peak rate (and at least one message).
pub const BUCKET_SECONDS: f64 = 0.02;

const EPSILON: f64 = 1e-6;

/// A token bucket whose refill follows a [`Pattern`]'s rate curve.
#[derive(Debug, Clone)]
pub struct Pacer {
    pattern: Pattern,
    tokens: f64,
    capacity: f64,
    /// Time of the last refill, ns since the producer's start.
    last_ns: u64,
}

impl Pacer {
    /// A bucket for `pattern`, empty at time 0.
    pub fn new(pattern: Pattern) -> Self {
        let capacity = pattern
            .peak_rate()
            .map_or(f64::INFINITY, |r| (r * BUCKET_SECONDS).max(1.0));
        Self {
            pattern,
            tokens: 0.0,
            capacity,
            last_ns: 0,
        }
    }

    /// The pattern paced.
    pub fn pattern(&self) -> &Pattern {
        &self.pattern
    }

    fn refill(&mut self, now_ns: u64) {
        if now_ns <= self.last_ns {
            return;
        }
        let added = self.pattern.allowed_by(now_ns) - self.pattern.allowed_by(self.last_ns);
        self.tokens = (self.tokens + added).min(self.capacity);
        self.last_ns = now_ns;
    }

    /// Refills up to `now_ns` and takes up to `want` whole tokens;
    /// returns how many were taken. Unlimited patterns always give `want`.
    pub fn take(&mut self, now_ns: u64, want: u64) -> u64 {
        if self.pattern.peak_rate().is_none() {
            return want;
        }
        self.refill(now_ns);
        // The epsilon absorbs float error in the differences of allowed_by.
        let whole = (self.tokens + EPSILON).floor().max(0.0);
        let n = if whole >= want as f64 {
            want
        } else {
            whole as u64
        };
        self.tokens = (self.tokens - n as f64).max(0.0);
        n
    }

    /// When the next whole token is there, ns since the start; `now_ns`
    /// when one already is (or the pattern is unlimited), `None` when the
    /// rate curve gives no more tokens.
    pub fn next_token_ns(&mut self, now_ns: u64) -> Option<u64> {
        if self.pattern.peak_rate().is_none() {
            return Some(now_ns);
        }
        self.refill(now_ns);
        if self.tokens + EPSILON >= 1.0 {
            return Some(now_ns);
        }
        let need = self.pattern.allowed_by(now_ns) + (1.0 - self.tokens);
        // Smallest t with allowed_by(t) >= need.
        let t_secs = match self.pattern {
            Pattern::Steady { rate, duration_ns } => {
                if rate <= 0.0 {
                    return None;
                }
                let t = need / rate;
                (t <= secs(duration_ns)).then_some(t)?
            }
            Pattern::Ramp { to, duration_ns } => {
                if to <= 0.0 || duration_ns == 0 {
                    return None;
                }
                let d = secs(duration_ns);
                let t = (2.0 * d * need / to).sqrt();
                (t <= d).then_some(t)?
            }
            Pattern::Burst { .. } | Pattern::Max { .. } => return Some(now_ns),
        };
        let at = (t_secs * NS as f64).ceil() as u64;
        Some(at.max(now_ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn steady_bucket_gives_rate_times_time() {
        let mut p = Pacer::new(Pattern::Steady {
            rate: 1000.0,
            duration_ns: 10 * NS,
        });
        assert_eq!(p.take(0, 100), 0);
        // 10 ms at 1000/s = 10 messages.
        assert_eq!(p.take(10 * MS, 100), 10);
        assert_eq!(p.take(10 * MS, 100), 0);
        // Asking for fewer than available keeps the rest.
        assert_eq!(p.take(15 * MS, 2), 2);
        assert_eq!(p.take(15 * MS, 100), 3);
        // Over a whole second in small steps: exactly the rate.
        let mut total = 0;
        for i in 1..=1000u64 {
            total += p.take(15 * MS + i * MS, u64::MAX);
        }
        assert_eq!(total, 1000);
    }

    #[test]
    fn bucket_caps_catch_up_after_a_stall() {
        let mut p = Pacer::new(Pattern::Steady {
            rate: 10_000.0,
            duration_ns: 10 * NS,
        });
        // Five seconds without asking: only BUCKET_SECONDS of tokens.
        assert_eq!(p.take(5 * NS, u64::MAX), 200);
    }

    #[test]
    fn next_token_time_is_exact() {
        let mut p = Pacer::new(Pattern::Steady {
            rate: 100.0,
            duration_ns: NS,
        });
        assert_eq!(p.next_token_ns(0), Some(10 * MS));
        assert_eq!(p.take(10 * MS, 5), 1);
        assert_eq!(p.next_token_ns(10 * MS), Some(20 * MS));
        assert_eq!(p.next_token_ns(20 * MS), Some(20 * MS));
        // Past the end of the run there is no next token.
        let mut q = Pacer::new(Pattern::Steady {
            rate: 1.0,
            duration_ns: NS / 2,
        });
        assert_eq!(q.next_token_ns(0), None);
    }

    #[test]
    fn ramp_rate_function() {
        let r = Pattern::Ramp {
            to: 1000.0,
            duration_ns: 10 * NS,
        };
        assert_eq!(r.rate_at(0), Some(0.0));
        assert_eq!(r.rate_at(5 * NS), Some(500.0));
        assert_eq!(r.rate_at(10 * NS), Some(0.0));
        assert!(
            (r.allowed_by(10 * NS) - 5000.0).abs() < 1e-6,
            "area = R*T/2"
        );
        assert!((r.allowed_by(5 * NS) - 1250.0).abs() < 1e-6);
        assert!(
            r.allowed_by(20 * NS) - 5000.0 < 1e-6,
            "no more after the end"
        );
    }

    #[test]
    fn ramp_bucket_sends_the_area() {
        let mut p = Pacer::new(Pattern::Ramp {
            to: 1000.0,
            duration_ns: 10 * NS,
        });
        let mut total = 0;
        let mut per_sec = [0u64; 10];
        for ms in 1..=10_000u64 {
            let n = p.take(ms * MS, u64::MAX);
            total += n;
            per_sec[((ms - 1) / 1000) as usize] += n;
        }
        assert!((4999..=5000).contains(&total), "{total}");
        // Each second sends more than the one before.
        assert!(per_sec.windows(2).all(|w| w[0] < w[1]), "{per_sec:?}");
        // Second 5..6 averages 550 msg/s.
        assert!((540..=560).contains(&per_sec[5]), "{per_sec:?}");
        // The first token of the ramp: t = sqrt(2 T / R) = sqrt(0.02) s.
        let mut q = Pacer::new(Pattern::Ramp {
            to: 1000.0,
            duration_ns: 10 * NS,
        });
        let t = q.next_token_ns(0).unwrap();
        assert!((t as f64 - 0.02f64.sqrt() * 1e9).abs() < 10.0, "{t}");
    }

    #[test]
    fn unlimited_patterns() {
        let mut p = Pacer::new(Pattern::Burst { messages: 10 });
        assert_eq!(p.take(0, 7), 7);
        assert_eq!(p.next_token_ns(5), Some(5));
        assert!(!p.pattern().finished(0, 9));
        assert!(p.pattern().finished(0, 10));
        let m = Pattern::Max { duration_ns: NS };
        assert!(!m.finished(NS - 1, 1_000_000));
        assert!(m.finished(NS, 0));
    }

    #[test]
    fn shares_split_bursts_and_rates() {
        let b = Pattern::Burst { messages: 10 };
        let parts: Vec<_> = (0..3)
            .map(|i| match b.share(i, 3) {
                Pattern::Burst { messages } => messages,
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(parts, [4, 3, 3]);
        assert_eq!(
            Pattern::Steady {
                rate: 900.0,
                duration_ns: NS
            }
            .share(1, 3),
            Pattern::Steady {
                rate: 300.0,
                duration_ns: NS
            }
        );
    }
}
