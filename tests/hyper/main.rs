//! hyper: HTTP/1 and HTTP/2 connections over real servers, the hyper-util connector, and abuse.

mod abuse;
mod conn;
mod connector;
