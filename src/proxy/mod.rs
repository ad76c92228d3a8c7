//! The data plane: accept HTTP/1.1 connections, assign, forward, stamp.
//!
//! Plain requests take the lean path ([`lean`], heads in [`h1`]); any other
//! request hands its connection to hyper ([`listener::serve_hyper`], with
//! the handler in [`forward`]). Routing and assignment are
//! [`forward::route_request`] on both.

pub mod body;
pub mod forward;
pub mod h1;
pub mod lean;
pub mod listener;
pub mod upstream;
