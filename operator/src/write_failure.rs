//! A write the controller could not make, as the plan's status reports it.

/// What kind of write failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailedWrite {
    /// Server-side apply of a desired object.
    Apply,
    /// Deleting a child the spec no longer asks for.
    Delete,
    /// Asking a pod to drain (or marking it draining) before a scale-down.
    Drain,
    /// Deleting a drained or stuck pod.
    DeletePod,
}

impl FailedWrite {
    /// The condition and Event reason.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Apply | Self::Delete => "ApplyFailed",
            Self::Drain | Self::DeletePod => "DrainFailed",
        }
    }

    pub fn verb(self) -> &'static str {
        match self {
            Self::Apply => "applying",
            Self::Delete => "deleting",
            Self::Drain => "draining",
            Self::DeletePod => "deleting pod",
        }
    }
}

/// One failed write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteFailure {
    pub write: FailedWrite,
    /// `Kind/name` of the object (`Pod/name` for pod actions).
    pub object: String,
    /// The API's or the pod's answer.
    pub message: String,
}

impl WriteFailure {
    pub fn describe(&self) -> String {
        format!("{} {}: {}", self.write.verb(), self.object, self.message)
    }
}
