//! redirector-agent as a library: its command line, for the man page and
//! completions the package ships.
pub mod cli;
