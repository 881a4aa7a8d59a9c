//! The operator's commands on the policy: `set-active` (and `--auto`) and
//! `weight`. Each takes effect at the next evaluation and returns the events
//! it caused; a command that cannot apply changes nothing.

use std::{fmt, time::Duration};

use super::{Event, EventKind, Override, Policy, Subject, Ctx};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyError {
    UnknownRegion { name: String, known: Vec<String> },
    UnknownService { name: String, known: Vec<String> },
    NotServed { region: String, service: String },
    NoServiceIn { region: String },
    /// Weights mean nothing to a failover service.
    NotBalanced { service: String },
    NoBalancedServiceIn { region: String },
    Weights(String),
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyError::UnknownRegion { name, known } => {
                write!(f, "unknown region {name:?} (known: {})", known.join(", "))
            }
            PolicyError::UnknownService { name, known } => {
                write!(f, "unknown service {name:?} (known: {})", known.join(", "))
            }
            PolicyError::NotServed { region, service } => {
                write!(f, "service {service:?} is not served by region {region:?}")
            }
            PolicyError::NoServiceIn { region } => {
                write!(f, "no service is served by region {region:?}")
            }
            PolicyError::NotBalanced { service } => write!(
                f,
                "service {service:?} uses the failover policy: weights apply to weighted, pps, \
                 flows and cpu services"
            ),
            PolicyError::NoBalancedServiceIn { region } => write!(
                f,
                "region {region:?} serves no weighted, pps, flows or cpu service: weights would \
                 change nothing"
            ),
            PolicyError::Weights(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for PolicyError {}

impl Policy {
    /// `weight REGION N [--service NAME]`: every weighted or load-balanced
    /// service REGION serves when no service is named. All or nothing:
    /// weights that would leave a weighted service no region for new flows
    /// are refused, and nothing changes. Takes effect at the next
    /// evaluation.
    pub fn set_weight(
        &mut self,
        now: Duration,
        region: &str,
        weight: u32,
        service: Option<&str>,
    ) -> Result<Vec<Event>, PolicyError> {
        let id = self.region_id(region)?;
        let targets: Vec<usize> = match service {
            Some(name) => {
                let s = self.served_by(id, region, name)?;
                if !self.services[s].config.policy.is_balanced() {
                    return Err(PolicyError::NotBalanced { service: name.to_string() });
                }
                vec![s]
            }
            None => (0..self.services.len())
                .filter(|&s| {
                    let config = &self.services[s].config;
                    config.policy.is_balanced() && config.regions.contains(&id)
                })
                .collect(),
        };
        if targets.is_empty() {
            return Err(PolicyError::NoBalancedServiceIn { region: region.to_string() });
        }
        let mut updated = Vec::new();
        for &s in &targets {
            let service = &self.services[s];
            let mut weights = service.weights.clone();
            let position = service.config.regions.iter().position(|&r| r == id).expect("served");
            weights[position] = weight;
            service.config.check_weights(&weights).map_err(PolicyError::Weights)?;
            updated.push((s, weights));
        }
        let reason = format!("weight {region} = {weight} (operator)");
        Ok(updated
            .into_iter()
            .map(|(s, weights)| {
                self.services[s].weights = weights;
                self.service_event(now, s, reason.clone())
            })
            .collect())
    }

    /// `set-active REGION [--service NAME]`: every service REGION serves
    /// when no service is named.
    pub fn set_active(
        &mut self,
        now: Duration,
        region: &str,
        service: Option<&str>,
    ) -> Result<Vec<Event>, PolicyError> {
        let id = self.region_id(region)?;
        let targets = match service {
            Some(name) => vec![self.served_by(id, region, name)?],
            None => {
                let served: Vec<usize> = (0..self.services.len())
                    .filter(|&s| self.services[s].config.regions.contains(&id))
                    .collect();
                if served.is_empty() {
                    return Err(PolicyError::NoServiceIn {
                        region: region.to_string(),
                    });
                }
                served
            }
        };
        let reason = format!("set-active {region}: new flows sent there by the operator");
        Ok(targets
            .into_iter()
            .map(|s| {
                self.services[s].set_active = Some(Override {
                    region: id,
                    suspended: false,
                });
                self.service_event(now, s, reason.clone())
            })
            .collect())
    }

    /// `set-active --auto [--service NAME]`: the rules decide again.
    pub fn set_auto(
        &mut self,
        now: Duration,
        service: Option<&str>,
    ) -> Result<Vec<Event>, PolicyError> {
        let targets = match service {
            Some(name) => vec![self.service_index(name)?],
            None => (0..self.services.len()).collect(),
        };
        let released: Vec<usize> = targets
            .into_iter()
            .filter(|&s| self.services[s].set_active.take().is_some())
            .collect();
        Ok(released
            .into_iter()
            .map(|s| {
                self.service_event(now, s, "set-active --auto: the policy decides again".into())
            })
            .collect())
    }

    pub fn region_id(&self, name: &str) -> Result<u8, PolicyError> {
        self.regions
            .iter()
            .position(|r| r.config.name == name)
            .map(|i| i as u8)
            .ok_or_else(|| PolicyError::UnknownRegion {
                name: name.to_string(),
                known: self.regions.iter().map(|r| r.config.name.clone()).collect(),
            })
    }

    fn service_index(&self, name: &str) -> Result<usize, PolicyError> {
        self.services
            .iter()
            .position(|s| s.config.name == name)
            .ok_or_else(|| PolicyError::UnknownService {
                name: name.to_string(),
                known: self.services.iter().map(|s| s.config.name.clone()).collect(),
            })
    }

    /// The service `name`, which must list region `id`.
    fn served_by(&self, id: u8, region: &str, name: &str) -> Result<usize, PolicyError> {
        let s = self.service_index(name)?;
        if !self.services[s].config.regions.contains(&id) {
            return Err(PolicyError::NotServed {
                region: region.to_string(),
                service: name.to_string(),
            });
        }
        Ok(s)
    }

    /// An event about a service that does not move its new flows.
    fn service_event(&self, now: Duration, service: usize, reason: String) -> Event {
        let s = &self.services[service];
        let ctx = Ctx {
            now,
            settings: &self.settings,
            regions: &self.regions,
            conditions: &[],
        };
        let active = ctx.label(&s.active);
        Event {
            at: now,
            kind: EventKind::Service,
            subject: Subject::Service(s.config.id),
            from: active.clone(),
            to: active,
            reason,
        }
    }
}
