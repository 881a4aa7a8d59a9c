//! What the policy and the regions' health report: `redirectorctl events`
//! and the log.

use std::{fmt, time::Duration};

pub use redirector_proto::control::EventKind;

use crate::health::Transition;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    Region(String),
    Service(String),
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Region(name) => write!(f, "region {name}"),
            Subject::Service(name) => write!(f, "service {name}"),
        }
    }
}

/// For a switch, `from` and `to` are the regions taking new flows before
/// and after ("none": nowhere); for another service event, both are the
/// regions taking them now; for a region, its condition or saturation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub at: Duration,
    pub kind: EventKind,
    pub subject: Subject,
    pub from: String,
    pub to: String,
    pub reason: String,
}

impl Event {
    pub fn region(name: &str, transition: &Transition) -> Event {
        Event {
            at: transition.at,
            kind: EventKind::Region,
            subject: Subject::Region(name.to_string()),
            from: transition.from.to_string(),
            to: transition.to.to_string(),
            reason: transition.reason.clone(),
        }
    }
}
