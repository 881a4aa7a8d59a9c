//! redirectorctl as a library: its command line, for the man pages and
//! completions the package ships.
pub mod cli;
