//! What a service decides about a command, and the reply that makes of it (named by the
//! message contract).

use serde_json::Value;

use platform::Envelope;

/// What a service decided about a command. The reply's name is the command's success or
/// failure reply in the message contract (`messages.toml`), never spelled by the service.
#[derive(Debug)]
pub enum Outcome {
    /// Done: the command's success reply, with this payload. Final: recorded, and a re-sent
    /// command gets the same reply.
    Succeeded(Value),
    /// Not done, for good: the command's failure reply, with this payload (`reason` in it).
    /// Final, like a success.
    Failed(Value),
    /// Not now: the command's failure reply with this reason. Not recorded, so a re-sent
    /// command is handled afresh: how a compensation says "not yet, try again".
    Refused(String),
    /// The command is not one this service handles, or is malformed: dead-letter it.
    Reject(String),
}

impl Outcome {
    /// The reply to `command`, named by the contract; `Err` for a rejection (or a command the
    /// contract does not know, which a service never answers).
    pub fn reply(self, command: &Envelope) -> std::result::Result<Envelope, String> {
        let (succeeded, payload) = match self {
            Outcome::Succeeded(p) => (true, p),
            Outcome::Failed(p) => (false, p),
            Outcome::Refused(reason) => (false, serde_json::json!({ "reason": reason })),
            Outcome::Reject(reason) => return Err(reason),
        };
        let contract = platform::Contract::built_in()
            .command(&command.message_type)
            .ok_or_else(|| format!("{:?} is not in messages.toml", command.message_type))?;
        let name = if succeeded {
            &contract.success
        } else {
            &contract.failure
        };
        Ok(Envelope::reply_to(command, name.as_str(), payload))
    }
}

/// The outcome of each command of a batch, filled in by the statements that decide them.
pub struct Outcomes(Vec<Option<Outcome>>);

impl Outcomes {
    pub fn new(n: usize) -> Self {
        Outcomes((0..n).map(|_| None).collect())
    }

    pub fn set(&mut self, i: usize, outcome: Outcome) {
        self.0[i] = Some(outcome);
    }

    /// In command order. A command nothing decided is rejected rather than answered wrongly.
    pub fn into_vec(self) -> Vec<Outcome> {
        self.0
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Outcome::Reject("no outcome was decided".into())))
            .collect()
    }
}

/// `let x = reject_on_err!(out, i, result);`: the value, or command `i` is rejected with the
/// error's text and the loop over the commands moves on.
macro_rules! reject_on_err {
    ($out:expr, $i:expr, $e:expr) => {
        match $e {
            Ok(v) => v,
            Err(reason) => {
                $out.set($i, Outcome::Reject(reason));
                continue;
            }
        }
    };
}
pub(crate) use reject_on_err;

#[cfg(test)]
mod outcome_tests {
    use super::*;

    fn command(message_type: &str) -> Envelope {
        Envelope {
            message_id: uuid::Uuid::new_v4(),
            message_type: message_type.into(),
            correlation_id: uuid::Uuid::new_v4(),
            causation_id: None,
            timestamp: String::new(),
            payload: Value::Null,
        }
    }

    #[test]
    fn replies_are_named_by_the_contract() {
        let revert = command("revert_payment");
        let ok = Outcome::Succeeded(serde_json::json!({}))
            .reply(&revert)
            .unwrap();
        assert_eq!(ok.message_type, "payment.released");
        assert_eq!(ok.causation_id, Some(revert.message_id));
        let refused = Outcome::Refused("not now".into()).reply(&revert).unwrap();
        assert_eq!(refused.message_type, "payment.release_failed");
        assert_eq!(refused.payload["reason"], "not now");
        let failed = Outcome::Failed(serde_json::json!({"reason": "no"}))
            .reply(&command("create_order"))
            .unwrap();
        assert_eq!(failed.message_type, "order.creation_failed");
        assert!(Outcome::Succeeded(Value::Null)
            .reply(&command("make_tea"))
            .is_err());
        assert_eq!(
            Outcome::Reject("bad".into()).reply(&revert).unwrap_err(),
            "bad"
        );
    }
}
