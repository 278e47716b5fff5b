//! The readiness report behind `GET /ready` and [`Server::readiness`].
//!
//! [`Server::readiness`]: crate::server::Server::readiness

use serde::Serialize;

use crate::backend::Health;

/// One thing readiness depends on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// `listeners`, `broker`, `routes` or `registry`.
    pub name: &'static str,
    /// Whether it is ready.
    pub ready: bool,
    /// Why not, when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Whether a node can serve clients, and if not, what stands in the way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readiness {
    /// True when every check passes.
    pub ready: bool,
    /// Every check, in a fixed order.
    pub checks: Vec<Check>,
}

impl Readiness {
    /// The report for a node with `listeners` bound ports and these backends.
    pub fn new(listeners: usize, backends: &[(&'static str, Health)]) -> Self {
        let mut checks = vec![Check {
            name: "listeners",
            ready: listeners > 0,
            detail: (listeners == 0).then(|| "no port is bound".to_owned()),
        }];
        checks.extend(backends.iter().map(|(name, health)| Check {
            name,
            ready: health.is_up(),
            detail: match health {
                Health::Up => None,
                Health::Down(why) => Some(why.clone()),
            },
        }));

        Readiness {
            ready: checks.iter().all(|c| c.ready),
            checks,
        }
    }

    /// The names of the checks that fail.
    pub fn not_ready(&self) -> Vec<&'static str> {
        self.checks
            .iter()
            .filter(|c| !c.ready)
            .map(|c| c.name)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_what_is_not_ready() {
        let report = Readiness::new(
            1,
            &[
                ("broker", Health::Down("connection refused".into())),
                ("routes", Health::Up),
            ],
        );
        assert!(!report.ready);
        assert_eq!(report.not_ready(), ["broker"]);
        assert_eq!(
            report.checks[1].detail.as_deref(),
            Some("connection refused")
        );

        let report = Readiness::new(0, &[]);
        assert_eq!(report.not_ready(), ["listeners"]);
        assert!(Readiness::new(2, &[("routes", Health::Up)]).ready);
    }
}
