//! Sources: where apps come from. Each source says what a filesystem event means to it
//! ([`Source::hint`]) and what its status row is; scanning yields apps one at a time to the core
//! loop, which decides (`decide`) and acts (`act`). A source reads and identifies; it never
//! moves a file, kills a process or runs a package manager's removal.
//!
//! - `folders`: install folders (AppImages, desktop entries, plain files, installer artifacts).
//! - `packages`: package-manager roots, generic over [`package::PackageManager`], with the
//!   managers in one registry table (`package::MANAGERS`): `dpkg`, `rpm`, `flatpak`, `snap`.
//!
//! A new package manager (Android's) is one file implementing `PackageManager` plus one line in
//! `package::MANAGERS`; a new kind of source (an exec gate) implements [`Source`].

pub mod android;
pub mod dirwatch;
pub mod dpkg;
pub mod flatpak;
pub mod folders;
pub mod inventory_map;
pub mod package;
pub mod packages;
pub mod rpm;
pub mod snap;
pub mod walk;

use std::path::PathBuf;

use crate::proto::SourceStatus;

/// What a filesystem event means to a source.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Hint {
    /// Events were lost (queue overflow, watch error): rescan everything.
    RescanAll,
    /// A directory where install roots may appear changed: re-expand the watch patterns.
    RefreshRoots,
    /// Something at this path (a file or a directory tree) appeared or changed.
    Path(PathBuf),
    /// What was at this path is gone.
    Gone(PathBuf),
    /// Package root `n`'s database changed.
    Database(usize),
    /// Activity in a watched directory with an unwatched child directory (a watch bound was
    /// reached): the scan fallback should look soon (`source::dirwatch`).
    Fallback,
}

/// Whether an event says nothing new: opens, reads and non-writing closes — our own reads of a
/// package database or of a file being identified among them, which would otherwise feed back
/// into endless rescans. Checked before any source sees the event.
pub fn says_nothing(ev: &notify::Event) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    matches!(
        ev.kind,
        EventKind::Access(
            AccessKind::Open(_)
                | AccessKind::Read
                | AccessKind::Close(AccessMode::Read | AccessMode::Execute | AccessMode::Any | AccessMode::Other)
        )
    )
}

/// One source of apps.
pub trait Source {
    /// What a filesystem event means to this source (nothing, for most).
    fn hint(&self, ev: &notify::Event) -> Vec<Hint>;
    /// Its rows in `embargoctl status`, and why it is degraded, if it is.
    fn status(&self, out: &mut Vec<SourceStatus>, reasons: &mut Vec<String>);
}
