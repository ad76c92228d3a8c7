//! The data plane: accept HTTP/1.1 connections, assign, forward, stamp.

pub mod body;
pub mod forward;
pub mod h1;
pub mod lean;
pub mod listener;
pub mod upstream;
