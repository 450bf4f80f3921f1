//! What `/readyz` says. Readiness means "can serve": the relay knows the
//! address it announces. Draining is a separate state (new allocations get
//! 508, live ones keep relaying); whether it also turns readiness off is
//! configured, because where a Service routes UDP by readiness, turning
//! NotReady makes kube-proxy flush the endpoint's conntrack entries and live
//! allocations break (docs/turn.md, "Drain").

use std::sync::Arc;

use crate::advertised::AdvertisedAddress;

/// Readiness while draining (`--drain-readiness`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DrainReadiness {
    /// Stay Ready: only new allocations are refused.
    #[default]
    Ready,
    /// Turn NotReady (for discovery by DNS, with no kube-proxy in the path).
    NotReady,
}

/// The relay's answer to a readiness probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// Ready for live allocations; new ones are refused.
    ReadyDraining,
    NotReady(&'static str),
}

/// Readiness inputs other than the drain flag, set once at start.
#[derive(Debug, Default)]
pub(crate) struct ReadinessInputs {
    /// The learned address, when the address comes from a file.
    pub advertised: Option<Arc<AdvertisedAddress>>,
    pub drain_readiness: DrainReadiness,
}

/// Before start sets them: a fixed address, readiness kept while draining.
pub(crate) static DEFAULT_INPUTS: ReadinessInputs = ReadinessInputs {
    advertised: None,
    drain_readiness: DrainReadiness::Ready,
};

impl ReadinessInputs {
    /// The answer to a probe, given whether the relay drains.
    pub(crate) fn judge(&self, draining: bool) -> Readiness {
        if let Some(address) = &self.advertised
            && address.get().is_none()
        {
            return Readiness::NotReady("no relay address yet");
        }
        match (draining, self.drain_readiness) {
            (false, _) => Readiness::Ready,
            (true, DrainReadiness::Ready) => Readiness::ReadyDraining,
            (true, DrainReadiness::NotReady) => Readiness::NotReady("draining"),
        }
    }
}
