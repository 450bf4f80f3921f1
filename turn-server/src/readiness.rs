//! What `/readyz` says. Readiness means "can serve": the relay knows the
//! address it announces. Draining is a separate state (new allocations get
//! 508, live ones keep relaying); whether it also turns readiness off is
//! configured, because where a Service routes UDP by readiness, turning
//! NotReady makes kube-proxy flush the endpoint's conntrack entries and live
//! allocations break (docs/turn.md, "Drain").

use std::sync::Arc;

use crate::advertised::AdvertisedAddress;
use crate::state::Shared;

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
static DEFAULT_INPUTS: ReadinessInputs = ReadinessInputs {
    advertised: None,
    drain_readiness: DrainReadiness::Ready,
};

impl Shared {
    pub(crate) fn set_readiness_inputs(&self, inputs: ReadinessInputs) {
        let _ = self.readiness.set(inputs);
    }

    fn readiness_inputs(&self) -> &ReadinessInputs {
        self.readiness.get().unwrap_or(&DEFAULT_INPUTS)
    }

    pub fn readiness(&self) -> Readiness {
        let inputs = self.readiness_inputs();
        if let Some(address) = &inputs.advertised
            && address.get().is_none()
        {
            return Readiness::NotReady("no relay address yet");
        }
        match (self.is_draining(), inputs.drain_readiness) {
            (false, _) => Readiness::Ready,
            (true, DrainReadiness::Ready) => Readiness::ReadyDraining,
            (true, DrainReadiness::NotReady) => Readiness::NotReady("draining"),
        }
    }
}
