//! Acting: the only code that moves files, kills processes or runs a package manager.

pub mod quarantine;
