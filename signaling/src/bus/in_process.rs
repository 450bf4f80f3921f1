//! The bus of one instance: local routing only.

use std::sync::Mutex;

use async_trait::async_trait;

use super::{Bus, Delivery, Inbox, LocalRoutes};
use crate::error::Result;

#[derive(Default)]
pub struct InProcessBus {
    routes: Mutex<LocalRoutes>,
}

impl InProcessBus {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LocalRoutes> {
        // A panic while holding this lock leaves plain maps behind; keep serving.
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Bus for InProcessBus {
    async fn attach(&self, peer: &str, inbox: Inbox) -> Result<()> {
        self.lock().attach(peer, inbox);
        Ok(())
    }

    async fn detach(&self, peer: &str, connection: u64) -> Result<()> {
        self.lock().detach(peer, connection);
        Ok(())
    }

    async fn forget(&self, peer: &str) -> Result<()> {
        self.lock().forget(peer);
        Ok(())
    }

    async fn subscribe(&self, room: &str, peer: &str) -> Result<()> {
        self.lock().subscribe(room, peer);
        Ok(())
    }

    async fn unsubscribe(&self, room: &str, peer: &str) -> Result<()> {
        self.lock().unsubscribe(room, peer);
        Ok(())
    }

    async fn publish(&self, room: &str, delivery: Delivery, except: Option<&str>) -> Result<()> {
        self.lock().deliver_room(room, &delivery, except);
        Ok(())
    }

    async fn send_to_peer(&self, peer: &str, delivery: Delivery) -> Result<()> {
        // Peers that never attached or whose session ended get nothing.
        self.lock().deliver_peer(peer, delivery);
        Ok(())
    }

    async fn healthy(&self) -> bool {
        true
    }

    fn kind(&self) -> &'static str {
        "in-process"
    }
}
