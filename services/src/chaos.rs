//! Chaos knobs: faults the stub services inject on purpose, so people can watch sagas survive
//! them in the running system, not only in tests.
//!
//! | variable | effect |
//! |---|---|
//! | `CHAOS_FAILURE_RATE` | fraction of commands answered with a failure (a forward step fails for good; a compensation is refused and retried by the orchestrator) |
//! | `CHAOS_REPLY_DELAY_MS` | every reply is held back this long |
//! | `CHAOS_DROP_RATE` | fraction of replies never sent (the command's effect is kept: the orchestrator's re-send gets the stored reply) |
//! | `CHAOS_DUPLICATE_RATE` | fraction of replies sent twice |
//! | `CHAOS_COMMANDS` | comma-separated command types the knobs apply to; empty means all |

/// The knobs; all off by default.
#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
pub struct Chaos {
    /// Fraction (0–1) of commands answered with a failure.
    #[arg(
        long = "chaos-failure-rate",
        env = "CHAOS_FAILURE_RATE",
        default_value_t = 0.0
    )]
    pub failure_rate: f64,
    /// Every reply is held back this many milliseconds.
    #[arg(
        long = "chaos-reply-delay-ms",
        env = "CHAOS_REPLY_DELAY_MS",
        default_value_t = 0
    )]
    pub reply_delay_ms: u64,
    /// Fraction (0–1) of replies never sent.
    #[arg(
        long = "chaos-drop-rate",
        env = "CHAOS_DROP_RATE",
        default_value_t = 0.0
    )]
    pub drop_rate: f64,
    /// Fraction (0–1) of replies sent twice.
    #[arg(
        long = "chaos-duplicate-rate",
        env = "CHAOS_DUPLICATE_RATE",
        default_value_t = 0.0
    )]
    pub duplicate_rate: f64,
    /// Command types the knobs apply to (comma-separated); empty means all.
    #[arg(
        long = "chaos-commands",
        env = "CHAOS_COMMANDS",
        value_delimiter = ',',
        default_value = ""
    )]
    pub commands: Vec<String>,
}

impl Chaos {
    pub fn is_off(&self) -> bool {
        self.failure_rate <= 0.0
            && self.reply_delay_ms == 0
            && self.drop_rate <= 0.0
            && self.duplicate_rate <= 0.0
    }

    fn applies(&self, command_type: &str) -> bool {
        self.commands.iter().all(|c| c.is_empty())
            || self.commands.iter().any(|c| c == command_type)
    }

    fn roll(&self, rate: f64, command_type: &str) -> bool {
        rate > 0.0 && self.applies(command_type) && fastrand::f64() < rate
    }

    pub fn fail(&self, command_type: &str) -> bool {
        self.roll(self.failure_rate, command_type)
    }

    pub fn drop_reply(&self, command_type: &str) -> bool {
        self.roll(self.drop_rate, command_type)
    }

    pub fn duplicate_reply(&self, command_type: &str) -> bool {
        self.roll(self.duplicate_rate, command_type)
    }

    pub fn delay(&self, command_type: &str) -> std::time::Duration {
        if self.applies(command_type) {
            std::time::Duration::from_millis(self.reply_delay_ms)
        } else {
            std::time::Duration::ZERO
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knobs_apply_only_to_the_listed_commands() {
        let c = Chaos {
            failure_rate: 1.0,
            commands: vec!["cancel_order".into()],
            ..Chaos::default()
        };
        assert!(c.fail("cancel_order"));
        assert!(!c.fail("create_order"));
        let all = Chaos {
            failure_rate: 1.0,
            commands: vec![String::new()],
            ..Chaos::default()
        };
        assert!(all.fail("anything"));
        assert!(!Chaos::default().fail("anything"));
        assert!(Chaos::default().is_off());
    }

    #[test]
    fn rates_are_roughly_honoured() {
        let c = Chaos {
            drop_rate: 0.25,
            ..Chaos::default()
        };
        let dropped = (0..10_000).filter(|_| c.drop_reply("x")).count();
        assert!((2_000..3_000).contains(&dropped), "{dropped}");
    }
}
