//! Sources: where apps come from (install folders and package-manager roots).

pub mod dpkg;
pub mod flatpak;
pub mod packages;
pub mod rpm;
pub mod snap;
