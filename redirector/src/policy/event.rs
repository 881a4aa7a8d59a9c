//! What the policy and the regions' health report: `redirectorctl events`
//! and the log.

use std::time::Duration;

pub use redirector_proto::control::EventKind;

use crate::health::Transition;

/// What an event is about, by id; named where it is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subject {
    Region(u8),
    Service(u32),
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
    pub fn region(region: u8, transition: &Transition) -> Event {
        Event {
            at: transition.at,
            kind: EventKind::Region,
            subject: Subject::Region(region),
            from: transition.from.to_string(),
            to: transition.to.to_string(),
            reason: transition.reason.clone(),
        }
    }
}
