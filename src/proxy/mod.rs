//! The data plane: accept HTTP/1.1 connections, check, route, assign,
//! forward, stamp, log.
//!
//! One core, two front ends. [`core`] holds every rule a request's fate
//! depends on (checks, routing and assignment, stamps, the header policy,
//! upstream-failure mapping, error answers, the access record). Plain
//! requests take the lean front end ([`lean`], over the pure-bytes
//! HTTP/1 code in [`h1`]); any other request, or every one when the lean
//! path is off, takes hyper's ([`hyper`]). [`listener`] accepts and picks;
//! [`upstream`] holds the pools to the model backends.
//!
//! Imports run one way: `listener` -> `lean`, `hyper` -> `core` -> `h1`,
//! `upstream`; `h1` imports nothing from the proxy.

pub(crate) mod core;
pub mod h1;
pub(crate) mod hyper;
pub(crate) mod lean;
pub(crate) mod listener;
pub mod tls;
pub(crate) mod upstream;
pub(crate) mod workers;
