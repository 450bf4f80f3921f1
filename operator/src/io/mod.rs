//! Everything that talks to the cluster or the pods: the controller and its
//! watch caches, leader election, pod scrapes and drain requests, Node
//! reads, the admin HTTP server. The pure code (deciders, rendering, plan)
//! never imports from here.

pub mod admin;
pub mod cache;
pub mod controller;
pub mod leader;
pub mod nodes;
pub mod pod_admin;
pub mod pods;
