//! PID 1: command line, signal handling, spawning the child, reaping, privilege drop. Nothing here
//! speaks HTTP or knows what a secret is; all `unsafe` lives in [`sys`].

pub mod sys;
