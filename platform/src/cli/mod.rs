//! The binary's command line: the server, the operator's verbs (keys,
//! credits) that work on the database directly, and the demo.

pub mod callee;
pub mod demo;
pub mod operator;
pub mod serve;
