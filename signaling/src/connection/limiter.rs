//! The rate limit every client frame passes, before `hello` and after.

use std::net::IpAddr;

use crate::rate_limit::TokenBucket;
use crate::state::AppState;

/// Every frame a client sends (text, binary, ping or pong; before `hello`
/// or after) takes a token from the connection's bucket and the address's.
pub(super) struct FrameLimiter {
    bucket: TokenBucket,
    /// Rate-limited frames in a row.
    abuse: u32,
}

pub(super) enum Admit {
    Pass,
    /// Over the rate: answer `rate_limited`, drop the frame.
    Limited,
    /// Over the rate `--abuse-limit` times in a row: close 1008.
    Abuse,
}

impl FrameLimiter {
    pub(super) fn new(state: &AppState) -> Self {
        Self {
            bucket: TokenBucket::new(
                state.config.rate_per_connection,
                state.config.rate_per_connection * 2.0,
            ),
            abuse: 0,
        }
    }

    pub(super) fn admit(&mut self, state: &AppState, ip: IpAddr) -> Admit {
        if self.bucket.try_take() && state.ip_limiter.try_take(ip) {
            self.abuse = 0;
            return Admit::Pass;
        }
        self.abuse += 1;
        if self.abuse >= state.config.abuse_limit {
            Admit::Abuse
        } else {
            Admit::Limited
        }
    }
}
